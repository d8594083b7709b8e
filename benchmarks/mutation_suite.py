"""The planted-bug suite: run every mutation of :mod:`benchmarks.mutations` through ``parity.harness.check`` (the code
the CLI runs, every stage) and measure how often parity detects the bug, finds the first divergent layer and
names the cause; then run every correct pair over several seeds and both dtypes and count false alarms.

    .venv/bin/python benchmarks/mutation_suite.py                  # the whole catalogue + false alarms
    .venv/bin/python benchmarks/mutation_suite.py --pairs minixception --no-false-alarms
    .venv/bin/python benchmarks/mutation_suite.py --json mutation-suite.json

Run from the repository root (the user-model mutations import ``benchmarks.user_models``). Pairs use their
``fast_config`` (the CI size); targets: detected 100 %, layer correct >= 95 %, cause named >= 85 %, false
alarms 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import parity.core.env  # noqa: E402,F401  (environment before any framework import)


def _flag(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", help="comma list of pairs (default: all in the catalogue)")
    ap.add_argument("--names", help="comma list of mutation names")
    ap.add_argument("--stages", default=None, help="'ci' for each mutation's reduced stage list (default: all)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the false-alarm sweep (default 5)")
    ap.add_argument("--dtypes", default="float64,float32", help="dtypes of the false-alarm sweep")
    ap.add_argument("--no-false-alarms", action="store_true", help="skip the false-alarm sweep")
    ap.add_argument("--no-mutations", action="store_true", help="only the false-alarm sweep")
    ap.add_argument("--json", help="write every outcome to this JSON file")
    ap.add_argument("--no-zoo", action="store_true",
                    help="skip the ports written by other people's styles (benchmarks.user_zoo), reported separately")
    args = ap.parse_args(argv)

    from benchmarks import mutations as M

    pairs = args.pairs.split(",") if args.pairs else None
    names = args.names.split(",") if args.names else None
    t_all = time.perf_counter()
    outcomes, skipped = [], []
    if not args.no_mutations:
        print(f"{'mutation':<28} {'pair':<13} {'detected':>8} {'layer':>6} {'cause':>6} {'secs':>6}  "
              "first divergence (stage, layer) -> cause   [expected if different]", flush=True)
        for m in M.catalogue(pairs, names):
            why = M.unavailable(m)
            if why:
                skipped.append((m.name, why))
                print(f"{m.name:<28} {m.pair:<13} {'skipped':>8}  {why}", flush=True)
                continue
            o = M.run_mutation(m, stages=args.stages)
            outcomes.append(o)
            got = f"({o.stage}, {o.path}) -> {o.cause}" if o.error is None else f"ERROR {o.error}"
            want = "" if (o.layer_ok and o.cause_ok) else f"   [expected ({m.stage}, {m.path}) -> {m.cause}]"
            print(f"{m.name:<28} {m.pair:<13} {_flag(o.detected):>8} {_flag(o.layer_ok):>6} {_flag(o.cause_ok):>6} "
                  f"{o.seconds:6.1f}  {got}{want}", flush=True)
        print(f"\n{'model family':<32} {'mutations':>9} {'detected':>9} {'layer':>9} {'cause':>9}", flush=True)
        for fam, ft in M.by_family(outcomes).items():
            print(f"{fam:<32} {ft['mutations']:>9} {ft['detected']:>9} {ft['layer_ok']:>9} {ft['cause_ok']:>9}",
                  flush=True)
        t = M.totals(outcomes)
        print(f"\nmutations: {t['mutations']} run ({len(skipped)} skipped); detected {t['detected']}/{t['mutations']} "
              f"({t['detected_pct']:.1f} %), first layer correct {t['layer_ok']}/{t['mutations']} "
              f"({t['layer_pct']:.1f} %), cause named {t['cause_ok']}/{t['mutations']} ({t['cause_pct']:.1f} %)",
              flush=True)
    alarms = []
    if not args.no_false_alarms:
        dtypes = [d for d in args.dtypes.split(",") if d]
        print(f"\n{'correct pair':<14} {'dtype':<8} {'seed':>4} {'result':>7} {'secs':>6}  summary", flush=True)
        for pair, user in M.CORRECT_PAIRS:
            if pairs and pair not in pairs:
                continue
            if pair != "user" and user is None:  # a user pair (reference, port builders) needs no registration
                from parity.pairs import registry

                if pair not in registry.names():
                    print(f"{pair:<14} not registered: skipped", flush=True)
                    continue
            for dtype in dtypes:
                for seed in range(args.seeds):
                    ok, line, secs = M.run_correct(pair, user, dtype=dtype, seed=seed)
                    alarms.append({"pair": pair, "dtype": dtype, "seed": seed, "passed": ok, "summary": line,
                                   "seconds": round(secs, 2)})
                    print(f"{pair:<14} {dtype:<8} {seed:>4} {'ok' if ok else 'ALARM':>7} {secs:6.1f}  {line[:150]}",
                          flush=True)
        n_alarm = sum(not a["passed"] for a in alarms)
        print(f"\nfalse alarms: {n_alarm}/{len(alarms)} checks of correct pairs", flush=True)
    zoo = {} if args.no_zoo else _zoo(args, M)
    print(f"total time {time.perf_counter() - t_all:.0f} s", flush=True)
    if outcomes:
        t = M.totals(outcomes)
        n_alarm = sum(not a["passed"] for a in alarms)
        print(f"TOTALS detected {t['detected_pct']:.1f} % | layer {t['layer_pct']:.1f} % | "
              f"cause {t['cause_pct']:.1f} % | false alarms {n_alarm}/{len(alarms)}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"mutations": [o.to_dict() for o in outcomes], "skipped": skipped,
                       "totals": M.totals(outcomes) if outcomes else {},
                       "by_family": M.by_family(outcomes), "false_alarms": alarms, "zoo": zoo}, fh,
                      indent=1)
    return 0


def _zoo(args, M) -> dict:
    """The same scoring on ports written in other people's styles (benchmarks.user_zoo: named children,
    Sequential, ModuleDict, functional, in-place, two inputs, a feature vector), through the user-model mode:
    planted bugs, then every correct zoo port over the seeds and dtypes. Reported on its own."""
    from benchmarks import user_zoo as Z

    names = args.names.split(",") if args.names else None
    outcomes, alarms = [], []
    if not args.no_mutations:
        print(f"\n{'zoo mutation':<28} {'detected':>8} {'layer':>6} {'cause':>6} {'secs':>6}  first divergence -> cause",
              flush=True)
        for name, ref, port, summary, stage, path, cause in Z.ZOO_MUTATIONS:
            if names and name not in names:
                continue
            m = M.Mutation(name, "user", summary, stage, path, cause, port=None,
                           user=(f"benchmarks.user_zoo:{ref}", f"benchmarks.user_zoo:{port}"))
            o = M.run_mutation(m, stages=None)
            outcomes.append(o)
            got = f"({o.stage}, {o.path}) -> {o.cause}" if o.error is None else f"ERROR {o.error}"
            print(f"{name:<28} {_flag(o.detected):>8} {_flag(o.layer_ok):>6} {_flag(o.cause_ok):>6} {o.seconds:6.1f}  "
                  f"{got}", flush=True)
    if not args.no_false_alarms:
        print(f"\n{'correct zoo port':<34} {'dtype':<8} {'seed':>4} {'result':>7} {'secs':>6}  summary", flush=True)
        for ref, port in Z.ZOO:
            user = (f"benchmarks.user_zoo:{ref}", f"benchmarks.user_zoo:{port}")
            for dtype in [d for d in args.dtypes.split(",") if d]:
                for seed in range(args.seeds):
                    ok, line, secs = M.run_correct("user", user, dtype=dtype, seed=seed)
                    alarms.append({"port": port, "dtype": dtype, "seed": seed, "passed": ok, "summary": line})
                    print(f"{port:<34} {dtype:<8} {seed:>4} {'ok' if ok else 'ALARM':>7} {secs:6.1f}  {line[:120]}",
                          flush=True)
    t = M.totals(outcomes) if outcomes else {}
    n_alarm = sum(not a["passed"] for a in alarms)
    if outcomes:
        print(f"ZOO TOTALS detected {t['detected_pct']:.1f} % | layer {t['layer_pct']:.1f} % | cause "
              f"{t['cause_pct']:.1f} % | false alarms {n_alarm}/{len(alarms)}", flush=True)
    return {"mutations": [o.to_dict() for o in outcomes], "totals": t, "false_alarms": alarms}


if __name__ == "__main__":
    sys.exit(main())
