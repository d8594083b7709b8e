"""Benchmark: what a parity check costs compared with the bare work it must do, measured in one run.

For each pair, in separate fresh processes (so imports and peak memory are counted honestly):

- ``check``: a full ``parity check NAME`` (all stages, float64), wall time including imports, and the
  check's own compute time (excluding imports and model builds; TensorFlow and torch are imported before the
  check's clock starts, their import time is printed apart);
- ``bare``: both frameworks, same batch, same dtype: one train-mode forward + backward in Keras
  (GradientTape) and one in torch, after building the models; wall time including imports too.

Ratios: check compute / bare fwd+bwd (target <= 2: a check needs about 1.7 such units: train fwd+bwd, an
eval forward, an isolated forward), and end-to-end wall / bare end-to-end wall. Peak RSS per process.

Usage: python benchmarks/bench_check.py [--pairs minixception,keypoints,xception,goturn] [--fast] [--batch N]
[--repeat N] (N runs of each, alternately; the table shows the median run of each, peak RSS the largest)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child_check(name: str, fast: bool, batch: int | None) -> dict:
    t0 = time.perf_counter()
    import parity  # noqa: F401
    from parity.core.env import freeze_after_imports, import_tensorflow, import_torch
    from parity.pairs import registry
    from parity.harness import check

    freeze_after_imports()  # as the `parity` command does (parity.cli.console_main)

    spec = registry.get(name)
    t_import = time.perf_counter()
    # the frameworks' imports, which the check makes on first use: timed apart (as ``bare`` imports them
    # before its clock), so that ``check cmp`` excludes every import, as defined in the module docstring
    import_tensorflow()
    import_torch()
    t_frameworks = time.perf_counter()
    result = check(name, config=spec.fast_config if fast else None, batch=batch)
    t1 = time.perf_counter()
    rs = result.environment.get("reference_seconds", {})
    return {"passed": bool(result), "summary": result.summary_line(), "wall": t1 - t0,
            "check_seconds": result.seconds, "reference_build": rs.get("build", 0.0),
            "import": t_frameworks - t0, "framework_import": t_frameworks - t_import}


def child_bare(name: str, fast: bool, batch: int | None) -> dict:
    t0 = time.perf_counter()
    import parity  # noqa: F401
    from parity.core.env import import_tensorflow

    keras = import_tensorflow()
    import numpy as np
    import tensorflow as tf
    import torch
    import torch.nn.functional as F

    from parity.pairs import registry
    from parity.core.data import make_batch
    from parity.backends.torch_side import TorchSide, torch_loss
    from parity.backends.keras_side import keras_loss
    from parity.core.families.embedding import token_range
    from parity.core.spec import resolve

    spec = registry.get(name)
    cfg = spec.config(**(spec.fast_config if fast else {}))
    batch = batch or spec.default_batch
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    kmodel = resolve(spec.reference)(**cfg)
    tmodel = resolve(spec.port)(**cfg).double()
    integer = "int" in str(kmodel.inputs[0].dtype)  # token ids for an Embedding, as a check draws them
    in_range = token_range(kmodel.layers, spec.input_range) if integer else spec.input_range
    x, y = make_batch(0, 0, batch, spec.input_shape(cfg), spec.target(cfg), in_range, "float64", integer=integer)
    t_built = time.perf_counter()
    xt, yt = tf.constant(x), tf.constant(y)
    src = [v.value for v in kmodel.trainable_weights]
    t = time.perf_counter()
    with tf.GradientTape() as tape:
        loss = keras_loss(keras.ops, keras, spec.loss, yt, kmodel(xt, training=True))
    tape.gradient(loss, src)
    t_keras = time.perf_counter() - t
    xp = TorchSide(tmodel, spec.taps(cfg), dtype="float64").to_input(x)  # the port's layout, as a check feeds it
    tmodel.train()
    t = time.perf_counter()
    torch_loss(F, spec.loss, tmodel(xp), torch.from_numpy(y)).backward()
    t_torch = time.perf_counter() - t
    return {"wall": time.perf_counter() - t0, "keras_fwd_bwd": t_keras, "torch_fwd_bwd": t_torch,
            "fwd_bwd": t_keras + t_torch, "build": t_built - t0}


def _child(mode: str, name: str, fast: bool, batch: int | None) -> dict:
    import resource

    out = (child_check if mode == "check" else child_bare)(name, fast, batch)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(mode: str, name: str, fast: bool, batch: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--pairs", name] + (["--fast"] if fast else []) + (
        ["--batch", str(batch)] if batch else [])
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{mode} {name} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_wall"] = time.perf_counter() - t
    return res


#: the issues' targets for a full-size float64 check (default batch, all stages) on the 2-core, 24 GiB
#: machine: wall seconds incl. imports and peak RSS in GB (minixception < 15 s; Xception
#: < 60 s and < 4 GB at batch 2; GOTURN < 8 GB); and check compute / bare fwd+bwd <= 2
TARGETS = {"minixception": {"wall_s": 15.0}, "xception": {"wall_s": 60.0, "rss_gb": 4.0}, "goturn": {"rss_gb": 8.0},
           # the layer-family pairs: a full check, imports included, under 15 s each
           "textclf": {"wall_s": 15.0}, "textgru": {"wall_s": 15.0}, "transformer": {"wall_s": 15.0},
           "encdec": {"wall_s": 15.0}, "seqconv": {"wall_s": 15.0}}
RATIO_TARGET = 2.0


def target_lines(rows) -> list[str]:
    """One line per target: the measured figure, the target, met or NOT met."""
    out = []
    for name, _, c, b, compute in rows:
        t = TARGETS.get(name, {})
        if "wall_s" in t:
            ok = c["process_wall"] < t["wall_s"]
            out.append(f"{name}: check wall {c['process_wall']:.1f} s < {t['wall_s']:.0f} s: {'met' if ok else 'NOT met'}")
        if "rss_gb" in t:
            gb = c["peak_rss_mb"] / 1024
            out.append(f"{name}: peak RSS {gb:.2f} GB < {t['rss_gb']:.0f} GB: {'met' if gb < t['rss_gb'] else 'NOT met'}")
        ratio = compute / b["fwd_bwd"]
        out.append(f"{name}: check compute / bare fwd+bwd {ratio:.2f} <= {RATIO_TARGET:g}: "
                   f"{'met' if ratio <= RATIO_TARGET else 'NOT met'}")
    return out


def _compute(run: dict) -> float:
    """A check run's compute: its time minus the reference build (imports are outside its clock)."""
    return run["check_seconds"] - run["reference_build"]


def _median_run(runs: list[dict], key) -> dict:
    """The run whose ``key`` is the median (the lower middle of an even count); a copy."""
    return dict(sorted(runs, key=key)[(len(runs) - 1) // 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="minixception")
    ap.add_argument("--fast", action="store_true", help="use each pair's reduced CI configuration")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run check and bare this many times each, alternately; report the median run of each "
                         "(this VM's speed drifts between minutes: one run of each can disagree by 30%%)")
    ap.add_argument("--child", choices=["check", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.pairs, args.fast, args.batch)))
        return
    from parity.pairs import registry

    names = registry.names() if args.pairs == "all" else args.pairs.split(",")
    rows = []
    for name in names:
        checks, bares = [], []
        for _ in range(max(args.repeat, 1)):
            checks.append(run_child("check", name, args.fast, args.batch))
            bares.append(run_child("bare", name, args.fast, args.batch))
        c = _median_run(checks, _compute)
        b = _median_run(bares, lambda r: r["fwd_bwd"])
        c["peak_rss_mb"] = max(r["peak_rss_mb"] for r in checks)
        b["peak_rss_mb"] = max(r["peak_rss_mb"] for r in bares)
        compute = _compute(c)
        if len(checks) > 1:
            cmp_s = ", ".join(f"{_compute(r):.1f}" for r in checks)
            bare_s = ", ".join(f"{r['fwd_bwd']:.2f}" for r in bares)
            print(f"{name}: check cmp {cmp_s} s; bare f+b {bare_s} s (in run order)", flush=True)
        rows.append((name, registry.get(name).published_params.get("total", 0), c, b, compute))
        print(f"{name}: {c['summary']} (TensorFlow + torch import {c['framework_import']:.1f} s, not in check cmp)",
              flush=True)
    print()
    print(f"{'pair':<13} {'params':>12} {'check wall':>10} {'check cmp':>9} {'bare f+b':>8} {'ratio':>6} "
          f"{'bare wall':>9} {'e2e ratio':>9} {'check RSS':>10} {'bare RSS':>9}")
    for name, n, c, b, compute in rows:
        print(f"{name:<13} {n:>12,} {c['process_wall']:>9.1f}s {compute:>8.1f}s {b['fwd_bwd']:>7.2f}s "
              f"{compute / b['fwd_bwd']:>6.2f} {b['process_wall']:>8.1f}s {c['process_wall'] / b['process_wall']:>9.2f} "
              f"{c['peak_rss_mb']:>8.0f}MB {b['peak_rss_mb']:>7.0f}MB")
    print("\ncheck wall: `parity check` in a fresh process incl. imports; check cmp: check time minus imports and "
          "the reference build; bare f+b: one train fwd+bwd in Keras + one in torch (same batch, float64); "
          "ratio = check cmp / bare f+b (target <= 2); e2e ratio = check wall / bare process wall.")
    print("\ntargets:")
    for line in target_lines(rows):
        print("  " + line)


if __name__ == "__main__":
    main()
