"""Benchmark: a full ``parity check`` vs ``parity record`` + ``parity replay`` of the same pair, one run each.

Each command runs in a fresh process, as a user runs it, and its wall time is taken from outside (interpreter
start, imports, model builds, reports included). ``replay`` runs with TensorFlow and Keras made unimportable
(``sys.modules[name] = None``), as on a machine without them: it pays for PyTorch alone.

Printed: the three wall times, the trace size, ``replay / check`` (what a CI job or GPU box pays per port
check once a trace exists) and ``(record + replay) / check`` (the cost of splitting one check in two).

Usage: python benchmarks/replay_vs_check.py [--pair minixception] [--fast] [--batch N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NO_TF = ("import sys\n"
         "for name in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras'):\n"
         "    sys.modules[name] = None\n"
         "from parity.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-6:])}: exit {proc.returncode}: {last}")
    return wall, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="minixception")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    opts = (["--fast"] if args.fast else []) + (["--batch", str(args.batch)] if args.batch else [])
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as tmp:
        trace = os.path.join(tmp, f"{args.pair}.safetensors")
        check_s, check_line = timed([py, "-m", "parity", "check", args.pair, "-q", "--out", os.path.join(tmp, "c"),
                                     *opts])
        record_s, record_line = timed([py, "-m", "parity", "record", args.pair, "-q", "-o", trace, *opts])
        replay_s, replay_line = timed([py, "-c", NO_TF, "replay", trace, "-q", "--out", os.path.join(tmp, "r")])
        size = os.path.getsize(trace)
    print(f"pair {args.pair}{' (fast config)' if args.fast else ''}, {os.cpu_count()} CPUs, one run each, "
          "fresh process per command")
    print(f"  check            {check_s:7.2f} s   {check_line}")
    print(f"  record           {record_s:7.2f} s   {record_line}")
    print(f"  replay (no TF)   {replay_s:7.2f} s   {replay_line}")
    print(f"  trace            {size / 1e6:7.1f} MB")
    print(f"  replay / check            {replay_s / check_s:5.2f}")
    print(f"  (record + replay) / check {(record_s + replay_s) / check_s:5.2f}")


if __name__ == "__main__":
    main()
