"""The ``forward_eval`` stage: every tap's output in inference mode, compared as the port computes it.

Also the comparison helpers the other stages share: :func:`ref_to_port_layout` (a reference activation in
the port's layout), :func:`layout_reader` (the same through a ``--watch`` session's :class:`PortLayoutMemo`),
:func:`diff_sink` (compare each tap's value when the port computes it, holding no copy of the port's
activations) and :func:`compare_acts` (one diff per tap, in tap order).
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

import numpy as np

from parity.core.background import Background
from parity.core.buffers import POOL
from parity.core.errors import UsageError
from parity.core.results import StageResult
from parity.core.spill import SpillDict, SpillStore
from parity.core.spec import Tap
from parity.core.tensors import hwc_flat_to_chw_flat, nhwc_to_nchw, tensor_diff
from parity.stages.context import CheckContext


def ref_to_port_layout(tap: Tap, a: np.ndarray) -> np.ndarray:
    """A reference activation (NHWC, Keras flatten order) in the port's layout."""
    a = np.asarray(a)
    if tap.kind == "flatten" and tap.flatten_chw is not None and a.ndim == 2:
        return hwc_flat_to_chw_flat(a, tap.flatten_chw)
    return nhwc_to_nchw(a)


def port_input_layout(tap: Tap, a: np.ndarray) -> np.ndarray:
    """A reference layer's input (NHWC, Keras flatten order) in the layout the port module takes (the
    ``isolated`` stage feeds it; ``TorchSide.isolated(..., port_layout=True)``), in memory of its own."""
    a = np.asarray(a)
    if tap.kind == "dense" and tap.flatten_chw is not None and a.ndim == 2:
        return hwc_flat_to_chw_flat(a, tap.flatten_chw)
    b = nhwc_to_nchw(a)
    return b if b is not a and b.flags.owndata else np.array(b)  # the caller's own: the port may write to it


class PortLayoutMemo:
    """Reference arrays already moved to the port's layout, kept for the checks of one ``--watch`` session: its
    reference never changes, and moving Xception's activations (NHWC -> NCHW) costs about 1.2 s of every check
    (``benchmarks/bench_edit_loop.py``). Large arrays wait on disk in a store of their own
    (:mod:`parity.core.spill`); a full disk ends the memo, not the session. Values are bit for bit what
    :func:`ref_to_port_layout` / :func:`port_input_layout` return (a copy moves values, it computes nothing). A
    value read back from disk is in recycled memory (``SpillDict.pooled``): its reader holds it while it compares
    it, then may give it back to :data:`parity.core.buffers.POOL` (the comparisons do)."""

    def __init__(self, root: str | None = None):
        self.store = SpillStore(root=root)
        self.data = SpillDict(self.store)
        self.enabled = True
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # the comparison thread reads it too (parity.core.background)

    def get(self, key: tuple, compute: Callable[[], Any]):
        with self._lock:
            held = key in self.data
            self.hits += held
            self.misses += not held
        if held:  # in recycled memory: the comparisons give it back (parity.core.buffers)
            return self.data.pooled(key)
        value = compute()
        with self._lock:
            if self.enabled and key not in self.data:
                try:
                    self.data[key] = value
                except UsageError:  # the disk is full: later checks move the arrays again
                    self.enabled = False
        return value

    def close(self) -> None:
        self.data = SpillDict(None)
        self.store.close()


def layout_reader(ref, which: str, convert: Callable[[Tap, Any], Any] = ref_to_port_layout):
    """``tap -> convert(tap, ref.<which>[tap.path])``: the reference's array in the port's layout, through
    ``ref.port_layout`` (a :class:`PortLayoutMemo`) when the run has one."""
    values = getattr(ref, which)
    memo = getattr(ref, "port_layout", None)

    def read(tap: Tap):
        if memo is None:
            return convert(tap, values[tap.path])
        return memo.get((which, tap.path, tap.kind, tap.flatten_chw), lambda: convert(tap, values[tap.path]))

    return read


def diff_sink(ref_acts, tol, suffix: str = "", read: Callable[[Tap], np.ndarray] | None = None,
              background: Background | None = None):
    """A port-side sink comparing each tap's value with the reference's as soon as the port computes it (see
    ``TorchSide.tapping``); returns the sink and the dict it fills, ``{path: TensorDiff}``. ``read(tap)``: the
    reference's value in the port's layout (default: :func:`ref_to_port_layout` of ``ref_acts[tap.path]``).
    With ``background`` the comparison runs on its worker thread, on a copy of the value (the port may modify
    its tensor in place after the hook): ``diffs`` is complete once ``background.wait()`` returned."""
    diffs: dict[str, Any] = {}
    taken: set[str] = set()
    read = read or (lambda tap: ref_to_port_layout(tap, ref_acts[tap.path]))

    def compare(tap, value):
        ref = read(tap)
        diffs[tap.path] = tensor_diff(tap.path + suffix, ref, value, tol)
        POOL.give(ref)  # a spilled array read into recycled memory (parity.core.spill.Spilled.load)

    def compare_own(tap, own):
        compare(tap, own)
        POOL.give(own)  # (the diff holds numbers, not the array)

    def sink(tap, value):
        if tap.path not in ref_acts or tap.path in taken:
            return
        taken.add(tap.path)
        if background is None or not background.threaded:
            compare(tap, value)
            return
        value = np.asarray(value)
        own = POOL.empty(value.shape, value.dtype)  # memory used before (parity.core.buffers)
        np.copyto(own, value)
        background.submit(functools.partial(compare_own, tap, own), own.nbytes,
                          skipped=functools.partial(POOL.give, own))

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
    # the comparisons on a second core while the port computes (on a side lane: in its hooks, without a copy)
    with Background() as background:
        sink, diffs = diff_sink(ref.eval_acts if compared else {}, tol, read=layout_reader(ref, "eval_acts"),
                                background=None if ctx.on_lane else background)
        ctx.eval_shapes, ctx.final, ctx.calls = ts.forward_eval(ref.inputs[0], sink=sink)
    if not compared:
        return
    st = StageResult("forward_eval")
    compare_acts(st, ctx, ref.eval_acts, ctx.eval_shapes, tol, diffs=diffs)
    if ts.error:
        st.errors.insert(0, ts.error)
    st.seconds = time.perf_counter() - t + ref.seconds.get("forward_eval", 0.0)
    ctx.result.stages.append(st)
