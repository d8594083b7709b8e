"""The ``isolated`` stage: each port module fed the reference's input to that layer, so a divergence is
located at one layer even when an earlier one already differs.

On a machine with a second core it runs with the eval forward on a side lane, over a copy of the port, while the
training stages run (``parity.stages.lane.SideLane``: the same numbers).
"""
from __future__ import annotations

import functools
import gc
import time

from parity.core.background import Background
from parity.core.buffers import POOL
from parity.core.env import trim_heap
from parity.core.results import StageResult
from parity.core.tensors import tensor_diff
from parity.stages.context import CheckContext
from parity.stages.forward import layout_reader, port_input_layout


def run(ctx: CheckContext) -> None:
    """The isolated stage (on a side lane: its comparisons on the lane's own thread); then, in line, the
    reference's per-layer inputs are released (no later stage reads them: ``SideLane.finish`` releases them
    after a lane)."""
    if "isolated" in ctx.stages:
        ctx.say("port: isolated layers")
        ctx.result.stages.append(isolated_stage(ctx, in_line=ctx.on_lane))
    if not ctx.on_lane:
        release(ctx)


def release(ctx: CheckContext) -> None:
    """The reference's per-layer inputs dropped (a check's own), and what the port phase made collected."""
    if ctx.frees_reference:
        ctx.ref.eval_inputs = {}
    gc.collect(1)  # young generations: what the port phase made (a full pass costs ~0.25 s)
    trim_heap()


def isolated_stage(ctx: CheckContext, *, in_line: bool = False) -> StageResult:
    """The stage over the context's port. ``in_line``: each comparison on this thread (a side lane is already
    the second core)."""
    t = time.perf_counter()
    ref, tol, ts = ctx.ref, ctx.tol["isolated"], ctx.ts
    st = StageResult("isolated", info={"what": "each port module fed the reference's input to that layer"})
    read_inputs = layout_reader(ref, "eval_inputs", lambda tap, ins: [port_input_layout(tap, a) for a in ins])
    read_output = layout_reader(ref, "eval_acts")
    diffs = {}

    def compare(tap, out):
        ref = read_output(tap)
        diffs[tap.path] = tensor_diff(tap.path, ref, out, tol)
        POOL.give(ref)  # a spilled array read into recycled memory (parity.core.spill.Spilled.load)

    with Background() as background:  # each comparison on a second core while the next module runs
        for tap in ctx.taps:
            if tap.path not in ref.eval_inputs or tap.path not in ref.eval_acts:
                continue
            ins = read_inputs(tap)
            out = ts.isolated(tap, ins, port_layout=True)  # a fresh array: nothing writes to it
            if out is None:
                if ts.error:
                    st.errors.append(f"{tap.path}: port module raised {ts.error}")
                    ts.error = None
                continue
            if in_line:
                compare(tap, out)
                for a in ins:  # the module's inputs, once its output (which may view them) is compared
                    POOL.give(a)
            else:
                background.submit(functools.partial(compare, tap, out), out.nbytes)
    st.tensors += [diffs[t.path] for t in ctx.taps if t.path in diffs]  # tap order, as computed
    st.seconds = time.perf_counter() - t
    return st
