"""Benchmark: what the automatic alignment of your own models costs on an Xception-sized pair at 299x299.

In one process (both frameworks imported before any clock starts, the reference cache off): the registered
``xception`` pair, whose taps are written by hand, and the same two builders as your own models
(``--reference reference_keras.xception:xception --port ported_torch.xception:xception``: the Keras model traced,
the port traced, matched by structure), each checked with the stages that alignment feeds (``structure`` and
``forward_eval``: weight transfer, taps, shapes), alternating twice; the best of each. Prints the user pair's
extra time, the ``align()`` call's own time (timed around :func:`parity.user.align.align`) and the target of the
issue on user ports: alignment adds < 5 s to the check.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_align.py [--stages structure,forward_eval] [--batch 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

#: the issue's target: alignment of an Xception-sized user pair at 299x299 adds less than this to the check
TARGET_SECONDS = 5.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="structure,forward_eval")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ["PARITY_NO_CACHE"] = "1"
    import parity.core.env  # noqa: F401  (environment before the frameworks)
    from parity.core.env import import_tensorflow, import_torch

    import_tensorflow()
    import_torch()
    from parity.harness import check
    from parity.pairs import registry
    import parity.user.pair as user_pair

    spent = []
    real_align = user_pair.align

    def timed_align(*a, **kw):
        t = time.perf_counter()
        try:
            return real_align(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    user_pair.align = timed_align
    times: dict[str, list[float]] = {"registered": [], "user": []}
    verdicts = {}
    for _ in range(args.rounds):
        for kind in ("registered", "user"):
            spec = (registry.get("xception") if kind == "registered" else user_pair.spec_from_user_models(
                "reference_keras.xception:xception", "ported_torch.xception:xception"))
            t = time.perf_counter()
            result = check(spec, stages=args.stages, batch=args.batch)
            times[kind].append(time.perf_counter() - t)
            verdicts[kind] = result.summary_line() if hasattr(result, "summary_line") else str(bool(result))
            print(f"{kind:>10}: {times[kind][-1]:6.2f} s  passed={bool(result)}", flush=True)
    reg, usr = min(times["registered"]), min(times["user"])
    extra = usr - reg
    align_s = min(spent) if spent else float("nan")
    print(f"xception 299x299, stages {args.stages}, batch {args.batch}: registered {reg:.2f} s, user pair "
          f"{usr:.2f} s, extra {extra:.2f} s; align() {align_s:.2f} s")
    met = extra < TARGET_SECONDS and align_s < TARGET_SECONDS
    print(f"alignment adds < {TARGET_SECONDS:g} s: {'met' if met else 'NOT met'} "
          f"(extra {extra:.2f} s, align() {align_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
