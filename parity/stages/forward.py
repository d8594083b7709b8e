"""The ``forward_eval`` stage: every tap's output in inference mode, compared as the port computes it.

Also the comparison helpers the other stages share: :func:`ref_to_port_layout` (a reference activation in
the port's layout), :func:`diff_sink` (compare each tap's value when the port computes it, holding no copy of
the port's activations) and :func:`compare_acts` (one diff per tap, in tap order).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from parity.core.results import StageResult
from parity.core.spec import Tap
from parity.core.tensors import hwc_flat_to_chw_flat, nhwc_to_nchw, tensor_diff
from parity.stages.context import CheckContext


def ref_to_port_layout(tap: Tap, a: np.ndarray) -> np.ndarray:
    """A reference activation (NHWC, Keras flatten order) in the port's layout."""
    a = np.asarray(a)
    if tap.kind == "flatten" and tap.flatten_chw is not None and a.ndim == 2:
        return hwc_flat_to_chw_flat(a, tap.flatten_chw)
    return nhwc_to_nchw(a)


def diff_sink(ref_acts, tol, suffix: str = ""):
    """A port-side sink comparing each tap's value with the reference's as soon as the port computes it (see
    ``TorchSide.tapping``); returns the sink and the dict it fills, ``{path: TensorDiff}``."""
    diffs: dict[str, Any] = {}

    def sink(tap, value):
        if tap.path in ref_acts and tap.path not in diffs:
            diffs[tap.path] = tensor_diff(tap.path + suffix, ref_to_port_layout(tap, ref_acts[tap.path]), value, tol)

    return sink, diffs


def compare_acts(st: StageResult, ctx: CheckContext, ref_acts, port_acts, tol, diffs=None) -> None:
    """One diff per tap, in tap order (``diffs``: already computed by a sink; ``port_acts`` then only tells
    which taps the port's forward reached)."""
    ts = ctx.ts
    for tap in ctx.taps:
        if tap.path not in ref_acts:
            continue
        if tap.path not in port_acts:
            st.errors.append(f"{tap.path}: port module {tap.port!r} "
                             + ("not found" if tap.port not in ts.modules else "never called in forward"))
            continue
        if diffs is not None:
            if tap.path in diffs:
                st.tensors.append(diffs[tap.path])
            continue
        st.tensors.append(tensor_diff(tap.path, ref_to_port_layout(tap, ref_acts[tap.path]), port_acts[tap.path], tol))


def run(ctx: CheckContext) -> None:
    """The port's eval-mode forward on the reference's first batch. It also runs for ``structure`` alone
    (which compares output shapes): then nothing is compared."""
    if not ctx.wants("forward_eval", "structure"):
        return
    ref, ts, tol = ctx.ref, ctx.ts, ctx.tol["forward_eval"]
    compared = "forward_eval" in ctx.stages
    t = time.perf_counter()
    ctx.say("port: forward (eval)")
    sink, diffs = diff_sink(ref.eval_acts if compared else {}, tol)
    ctx.eval_shapes, ctx.final, ctx.calls = ts.forward_eval(ref.inputs[0], sink=sink)
    if not compared:
        return
    st = StageResult("forward_eval")
    compare_acts(st, ctx, ref.eval_acts, ctx.eval_shapes, tol, diffs=diffs)
    if ts.error:
        st.errors.insert(0, ts.error)
    st.seconds = time.perf_counter() - t + ref.seconds.get("forward_eval", 0.0)
    ctx.result.stages.append(st)
