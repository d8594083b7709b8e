"""The ``isolated`` stage: each port module fed the reference's input to that layer, so a divergence is
located at one layer even when an earlier one already differs."""
from __future__ import annotations

import functools
import gc
import time

from parity.core.background import Background
from parity.core.env import trim_heap
from parity.core.results import StageResult
from parity.core.tensors import tensor_diff
from parity.stages.context import CheckContext
from parity.stages.forward import layout_reader, port_input_layout


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
    read_inputs = layout_reader(ref, "eval_inputs", lambda tap, ins: [port_input_layout(tap, a) for a in ins])
    read_output = layout_reader(ref, "eval_acts")
    diffs = {}

    def compare(tap, out):
        diffs[tap.path] = tensor_diff(tap.path, read_output(tap), out, tol)

    with Background() as background:  # each comparison on a second core while the next module runs
        for tap in ctx.taps:
            if tap.path not in ref.eval_inputs or tap.path not in ref.eval_acts:
                continue
            out = ts.isolated(tap, read_inputs(tap), port_layout=True)  # a fresh array: nothing writes to it
            if out is None:
                if ts.error:
                    st.errors.append(f"{tap.path}: port module raised {ts.error}")
                    ts.error = None
                continue
            background.submit(functools.partial(compare, tap, out), out.nbytes)
    st.tensors += [diffs[t.path] for t in ctx.taps if t.path in diffs]  # tap order, as computed
    st.seconds = time.perf_counter() - t
    return st
