"""The ``isolated`` stage: each port module fed the reference's input to that layer, so a divergence is
located at one layer even when an earlier one already differs."""
from __future__ import annotations

import gc
import time

from parity.core.env import trim_heap
from parity.core.results import StageResult
from parity.core.tensors import tensor_diff
from parity.stages.context import CheckContext
from parity.stages.forward import ref_to_port_layout


def run(ctx: CheckContext) -> None:
    """The isolated stage; then the reference's per-layer inputs are released (no later stage reads them)."""
    if "isolated" in ctx.stages:
        ctx.say("port: isolated layers")
        ctx.result.stages.append(isolated_stage(ctx))
    if ctx.frees_reference:
        ctx.ref.eval_inputs = {}
    gc.collect(1)  # young generations: what the port phase made (a full pass costs ~0.25 s)
    trim_heap()


def isolated_stage(ctx: CheckContext) -> StageResult:
    t = time.perf_counter()
    ref, ts, tol = ctx.ref, ctx.ts, ctx.tol["isolated"]
    st = StageResult("isolated", info={"what": "each port module fed the reference's input to that layer"})
    for tap in ctx.taps:
        ins = ref.eval_inputs.get(tap.path)
        if ins is None or tap.path not in ref.eval_acts:
            continue
        out = ts.isolated(tap, ins)
        if out is None:
            if ts.error:
                st.errors.append(f"{tap.path}: port module raised {ts.error}")
                ts.error = None
            continue
        st.tensors.append(tensor_diff(tap.path, ref_to_port_layout(tap, ref.eval_acts[tap.path]), out, tol))
    st.seconds = time.perf_counter() - t
    return st
