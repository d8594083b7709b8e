"""The ``isolated`` stage: each port module fed the reference's input to that layer, so a divergence is
located at one layer even when an earlier one already differs.

On a machine with a second core the stage runs on a thread of its own (a :class:`SideLane`), over a copy of the
port (``TorchSide.twin``), while the training stages run on the first thread: torch and numpy release the GIL in
their kernels, so the two compute at once. Its numbers are the ones the stage computes in line: the same
modules, weights and inputs, each operation on one thread. It stays in line where that would not hold or not
help: on a GPU (its work is queued on one stream anyway), with ``--onnx`` (the exporter changes global state
while it traces), a port whose eval forward draws random numbers (the training stages' draws would depend on
the threads' timing), a port too large to copy (:data:`SIDE_LANE_MAX_BYTES`) or one ``copy.deepcopy`` cannot
copy, one core, or ``PARITY_BACKGROUND=0``.
"""
from __future__ import annotations

import functools
import gc
import os
import threading
import time

from parity.core import background as _background
from parity.core.background import Background
from parity.core.env import trim_heap
from parity.core.results import StageResult
from parity.core.tensors import tensor_diff
from parity.stages.context import TRAIN_STAGES, CheckContext
from parity.stages.forward import layout_reader, port_input_layout

#: the port's parameters and buffers, in bytes, up to which the isolated stage gets a copy of the port and a
#: thread of its own: the copy is that much more memory for the check (Xception's float64 weights: 183 MB);
#: GOTURN's (0.9 GB in float64) run in line
SIDE_LANE_MAX_BYTES = 512 << 20


def run(ctx: CheckContext) -> None:
    """The isolated stage, on a side lane when one helps (see the module docstring); then the reference's
    per-layer inputs are released (no later stage reads them)."""
    if "isolated" in ctx.stages:
        lane = SideLane.start(ctx)
        if lane is not None:
            ctx.say("port: isolated layers (on a second core, alongside training)")
            ctx.side_lanes.append(lane)
            return
        ctx.say("port: isolated layers")
        ctx.result.stages.append(isolated_stage(ctx))
    _release(ctx)


def _release(ctx: CheckContext) -> None:
    if ctx.frees_reference:
        ctx.ref.eval_inputs = {}
    gc.collect(1)  # young generations: what the port phase made (a full pass costs ~0.25 s)
    trim_heap()


def isolated_stage(ctx: CheckContext, ts=None, *, in_line: bool = False,
                   stop: threading.Event | None = None) -> StageResult:
    """The stage over ``ts`` (default: the check's port). ``in_line``: each comparison on this thread (a side
    lane is already the second core); ``stop``: set, the remaining layers are skipped."""
    t = time.perf_counter()
    ref, tol = ctx.ref, ctx.tol["isolated"]
    ts = ts if ts is not None else ctx.ts
    st = StageResult("isolated", info={"what": "each port module fed the reference's input to that layer"})
    read_inputs = layout_reader(ref, "eval_inputs", lambda tap, ins: [port_input_layout(tap, a) for a in ins])
    read_output = layout_reader(ref, "eval_acts")
    diffs = {}

    def compare(tap, out):
        diffs[tap.path] = tensor_diff(tap.path, read_output(tap), out, tol)

    with Background() as background:  # each comparison on a second core while the next module runs
        for tap in ctx.taps:
            if stop is not None and stop.is_set():
                break
            if tap.path not in ref.eval_inputs or tap.path not in ref.eval_acts:
                continue
            out = ts.isolated(tap, read_inputs(tap), port_layout=True)  # a fresh array: nothing writes to it
            if out is None:
                if ts.error:
                    st.errors.append(f"{tap.path}: port module raised {ts.error}")
                    ts.error = None
                continue
            if in_line:
                compare(tap, out)
            else:
                background.submit(functools.partial(compare, tap, out), out.nbytes)
    st.tensors += [diffs[t.path] for t in ctx.taps if t.path in diffs]  # tap order, as computed
    st.seconds = time.perf_counter() - t
    return st


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def lane_refusal(ctx: CheckContext) -> str | None:
    """Why the isolated stage runs in line for this check (None: it may run on a side lane)."""
    ts = ctx.ts
    if not _background.enabled():
        return f"{_background.BACKGROUND_ENV}=0"
    if _cpus() < 2:
        return "one CPU"
    if ts.device.type != "cpu":
        return f"the port runs on {ts.device}"
    if ctx.onnx:
        return "--onnx"
    if not ctx.wants(*TRAIN_STAGES):
        return "no training stage to run alongside"
    if ctx.eval_draws_random is None:
        return "no eval forward ran before it"
    if ctx.eval_draws_random:
        return "the port's eval forward draws random numbers"
    nbytes = sum(t.numel() * t.element_size() for t in ts.module.state_dict(keep_vars=True).values())
    if nbytes > SIDE_LANE_MAX_BYTES:
        return f"the port's weights take {nbytes / 1e6:.0f} MB"
    return None


class SideLane:
    """The isolated stage on a thread of its own over a copy of the port (see the module docstring):
    :meth:`finish` waits for it, raises what it raised and adds its stage to the result."""

    def __init__(self, ctx: CheckContext, ts):
        self.stage: StageResult | None = None
        self._stop = threading.Event()
        self._thread = Background(pending_bytes=0, name="parity-isolated")
        self._thread.submit(functools.partial(self._run, ctx, ts))

    def _run(self, ctx: CheckContext, ts) -> None:
        self.stage = isolated_stage(ctx, ts, in_line=True, stop=self._stop)

    @classmethod
    def start(cls, ctx: CheckContext) -> "SideLane | None":
        """A running lane, or None where the stage should run in line (:func:`lane_refusal`, or a port that
        cannot be copied)."""
        if lane_refusal(ctx) is not None:
            return None
        try:
            twin = ctx.ts.twin()
        except Exception:  # noqa: BLE001 - any module deepcopy refuses: the stage runs in line, as it did
            return None
        return cls(ctx, twin)

    def finish(self, ctx: CheckContext) -> None:
        self._thread.wait()
        if self.stage is not None:
            ctx.result.stages.append(self.stage)
        _release(ctx)

    def cancel(self) -> None:
        self._stop.set()
        self._thread.cancel()
