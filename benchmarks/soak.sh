#!/usr/bin/env bash
# Soak: N consecutive `parity check minixception --fast` in one shell loop (default 100). Not part of CI.
# Every run must PASS (exit 0) and leave no spill directory behind; the temporary directory's size is sampled
# before and after each run, so growth shows. Prints one line per run and a summary:
#   bash benchmarks/soak.sh [N]        (from the repository root, after `make install`)
set -uo pipefail
N=${1:-100}
PARITY=${PARITY:-.venv/bin/parity}
TMPROOT=$(mktemp -d "${TMPDIR:-/tmp}/parity-soak.XXXXXX")
export TMPDIR="$TMPROOT" PARITY_SPILL_DIR="$TMPROOT" PARITY_CACHE_DIR="$TMPROOT/cache"
OUT="$TMPROOT/out"; LOG="$TMPROOT.log"
du_kb() { du -sk --exclude=cache --exclude=out "$TMPROOT" 2>/dev/null | cut -f1; }
start_kb=$(du_kb); fails=0; max_kb=$start_kb; t0=$(date +%s.%N)
for i in $(seq 1 "$N"); do
  s=$(date +%s.%N)
  "$PARITY" check minixception --fast --out "$OUT" >"$LOG" 2>&1
  rc=$?
  e=$(date +%s.%N)
  kb=$(du_kb); (( kb > max_kb )) && max_kb=$kb
  left=$(find "$TMPROOT" -maxdepth 1 -name 'parity-spill-*' | wc -l)
  [[ $rc -ne 0 || $left -ne 0 ]] && fails=$((fails + 1))
  printf 'run %3d rc %d %.1f s  tmp %d KB  spill dirs left %d  %s\n' "$i" "$rc" "$(awk "BEGIN{print $e - $s}")" "$kb" "$left" \
    "$(tail -n 1 "$LOG" | cut -c1-60)"
done
end_kb=$(du_kb)
printf 'soak: %d runs, %d failed or left files; tmp %d KB before, %d KB after, %d KB max; %.0f s total\n' \
  "$N" "$fails" "$start_kb" "$end_kb" "$max_kb" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
rm -rf "$TMPROOT" "$LOG"
[[ $fails -eq 0 ]]
