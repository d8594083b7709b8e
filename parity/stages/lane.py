"""The stages that read the loaded port (``forward_eval``, ``structure``, ``isolated``) on a second core, over a
copy of the port, while the training stages run on the first.

Those stages compare the port as loaded; the training stages change its weights, so in line they run first and
the training waits for them (Xception at 299, float64: an eval forward of ~1.5 s and the isolated layers' ~1.6 s
of every check). On a machine with a second core a :class:`SideLane` runs them on a thread of their own over
``TorchSide.twin()`` (a deep copy of the loaded port, its weights, buffers and mode) while the first thread
trains: torch and numpy release the GIL in their kernels, so the two compute at once. The numbers are the ones
the stages compute in line: the same modules, weights and inputs, each operation on one thread, and the same
draws from torch's generator (below). :meth:`SideLane.finish` adds the lane's stages and findings to the result
and the eval forward's facts to the check (its final output and calls per tap; the attention calls it recorded,
which the diagnosis' probes replay on the check's port).

**torch's generator.** In line, the eval-mode stages start from the generator's state after the build, and so
do the training stages (``parity.harness._run_stages`` sets it back: a port whose eval forward draws random
numbers does not shift the training's dropout masks). On the lane a :class:`GeneratorGate` (a dispatch mode,
thread-local: it sees the lane's operations only) holds the first operation that draws from the default
generator until the training stages are done, then lets the lane draw from the state they started from, and
:meth:`SideLane.finish` gives the training's end state back: the same draws as in line, whatever the timing.
Operations given a generator of their own (``torch.rand(..., generator=g)``) pass.

**A copy that is not one.** ``copy.deepcopy`` copies a function as it is: a ``forward`` assigned as a closure over
the module (``m.forward = lambda x: m.body(x)``) or a hook capturing a dict would make the copy call the
original's modules, which the training stages are changing, or share the captured object with them. Such a
port runs in line (:func:`closures_sharing_state`); and while the lane runs, its first call of a module of the
check's port, or operation on a tensor of the port's parameters or buffers, stops it before it runs
(:class:`LaneLeak`), and the stages run in line after the training, on the restored port.

It stays in line where it would not hold or not help (:func:`lane_refusal`): on a GPU (the work is queued on one
stream anyway), with ``--onnx`` (the exporter changes global state while it traces), a port too large to copy
(:data:`SIDE_LANE_MAX_BYTES`), one ``copy.deepcopy`` cannot copy or would not copy (above), no training stage to
run alongside, one core, or ``PARITY_BACKGROUND=0``. The report's environment says where they ran
(``loaded_port_stages``).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
import types
from typing import Callable

from parity.core import background as _background
from parity.core.background import Background
from parity.stages.context import TRAIN_STAGES, CheckContext

#: the port's parameters and buffers, in bytes, up to which the loaded-port stages get a copy of the port and a
#: thread of their own: the copy is that much more memory for the check (Xception's float64 weights: 183 MB);
#: GOTURN's (0.9 GB in float64) run in line
SIDE_LANE_MAX_BYTES = 512 << 20

#: the stages a side lane runs (``parity.harness.LOADED_STAGES`` names the functions)
LANE_STAGES = ("forward_eval", "structure", "isolated")

#: the name of the lane's thread (tests and ``py-spy`` see it)
LANE_THREAD = "parity-lane"


class LaneLeak(BaseException):
    """Raised on the lane's thread, before the operation runs, when the copy reaches into the check's port: a
    module of the port called, or a tensor of its parameters or buffers read (a ``forward`` assigned as a
    closure over the original module, ``m.forward = lambda x: m.conv(x)``, is not copied by ``copy.deepcopy``).
    The lane stops and the check runs its stages in line (:meth:`SideLane.finish` returns False)."""


class LaneCancelled(BaseException):
    """Raised on the lane's thread by its next torch operation once the check stopped it (a stage failed, or
    Ctrl-C): a ``BaseException``, so a port's ``except Exception`` (or the stages' own) does not take it for the
    port's error."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def lane_refusal(ctx: CheckContext) -> str | None:
    """Why the loaded-port stages run in line for this check (None: they may run on a side lane)."""
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
    if not ctx.wants(*LANE_STAGES):
        return "no loaded-port stage to run"
    nbytes = sum(t.numel() * t.element_size() for t in ts.module.state_dict(keep_vars=True).values())
    if nbytes > SIDE_LANE_MAX_BYTES:
        return f"the port's weights take {nbytes / 1e6:.0f} MB"
    shared = closures_sharing_state(ts.module)
    if shared:
        more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
        return f"{shared[0]}{more} captured objects a copy of the port would share"
    return None


#: values a captured variable may hold without a copy of the port sharing anything that changes
_PLAIN = (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType, types.BuiltinFunctionType)


def _plain(value, depth: int = 0) -> bool:
    """Whether a captured value is one nothing changes: a number, a string, a class, a module, a tuple of such,
    or a function whose own captures are (a dtype or device too)."""
    if isinstance(value, _PLAIN) or type(value).__name__ in ("dtype", "device"):
        return True
    if depth >= 3:
        return False
    if isinstance(value, (tuple, frozenset)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, types.FunctionType):
        return all(_plain(v, depth + 1) for v in _captured(value))
    return False


def _captured(fn: types.FunctionType) -> list:
    out = []
    for cell in fn.__closure__ or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    return out


def closures_sharing_state(module) -> list[str]:
    """Where the module tree holds a function that captured something changeable (a module, a tensor, a dict):
    ``model.forward = lambda x: model.body(x)``, a hook ``lambda m, i, o: feats.append(o)``. ``copy.deepcopy``
    copies a function as it is, so a copy of the port would call the original's modules or share the captured
    object with it; ``"<module path>.<attribute>"`` for each (bound methods and ``functools.partial`` are copied
    with their object: not listed)."""
    found = []
    for path, m in module.named_modules():
        for name, value in vars(m).items():
            held = value.values() if isinstance(value, dict) and name.endswith("hooks") else (value,)
            for fn in held:
                fn = fn.func if isinstance(fn, functools.partial) else fn
                if isinstance(fn, types.FunctionType) and not all(_plain(v) for v in _captured(fn)):
                    found.append(f"{path or type(module).__name__}.{name}")
                    break
    return found


class _Gate:
    """What :func:`_gate_class` adds to torch's ``TorchDispatchMode`` (kept apart so that this module imports without
    torch). Entered on the lane's thread, on that thread's mode stack only: every torch operation of the lane
    passes :meth:`__torch_dispatch__`. The first one that draws from torch's default CPU generator waits until
    :meth:`open` (the training stages are done), then the generator is set to ``start_state`` (the state those
    stages started from; :attr:`main_state` keeps the state they left). An operation on a tensor of the check's
    port (``guarded``: the data pointers of its storages) raises :class:`LaneLeak` before it runs; once ``stop``
    is set, the next operation raises :class:`LaneCancelled`."""

    def __init__(self, start_state, stop: threading.Event, guarded: frozenset = frozenset()):
        import torch

        super().__init__()
        self._torch = torch
        self._seeded = torch.Tag.nondeterministic_seeded
        self.start_state = start_state
        self.stop = stop
        self.guarded = guarded
        self.main_state = None  # set: the lane drew (SideLane gives it back to the generator)
        self._open = threading.Event()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No: torch would wrap ``__torch_dispatch__`` in ``torch._disable_dynamo``, whose first call imports
        ``torch._dynamo`` (1.2 s); nothing compiles on the lane."""
        return False

    def __enter__(self):
        # (TorchDispatchMode.__enter__ also sets process-wide flags that torch.compile reads: the training's
        # thread would see them)
        self._torch._C._push_on_torch_dispatch_stack(self)
        return self

    def __exit__(self, *exc) -> None:
        self._torch._C._pop_torch_dispatch_stack(None)

    def open(self) -> None:
        self._open.set()

    def _tensors(self, args, kwargs):
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if isinstance(t, self._torch.Tensor):
                    yield t

    def _reaches_port(self, args, kwargs) -> bool:
        for t in self._tensors(args, kwargs):
            try:
                if t.untyped_storage().data_ptr() in self.guarded:
                    return True
            except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, meta)
                pass
        return False

    def _draws_from_default_generator(self, func, args, kwargs) -> bool:
        """A seeded operation not given a generator of its own (``torch.rand(..., generator=g)``)."""
        return self._seeded in func.tags and not any(isinstance(a, self._torch.Generator)
                                                     for a in (*args, *kwargs.values()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stop.is_set():
            raise LaneCancelled()
        if self.guarded and self._reaches_port(args, kwargs):
            raise LaneLeak(f"{func} read a tensor of the check's port")
        if self.main_state is None and self._draws_from_default_generator(func, args, kwargs):
            self._open.wait()
            if self.stop.is_set():
                raise LaneCancelled()
            random = self._torch.random
            self.main_state = random.get_rng_state()
            random.set_rng_state(self.start_state)
        return func(*args, **kwargs)


@functools.cache
def _gate_class():
    """The gate's class, :class:`_Gate` on torch's ``TorchDispatchMode`` (made on first use: torch is imported by
    then)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return type("GeneratorGate", (_Gate, TorchDispatchMode), {"__doc__": _Gate.__doc__})


class SideLane:
    """The loaded-port stages on a thread of their own over a copy of the port (see the module docstring):
    :meth:`training_done` after the training stages, then :meth:`finish` (waits, raises what the lane raised,
    merges its results), or :meth:`cancel`."""

    def __init__(self, ctx: CheckContext, twin, stages: tuple[Callable[[CheckContext], None], ...], start_state):
        import torch

        self._stop = threading.Event()
        port = ctx.ts.module
        tensors = [*port.parameters(), *port.buffers()]
        guarded = frozenset(p for p in (t.untyped_storage().data_ptr() for t in tensors) if p)
        self.gate = _gate_class()(start_state, self._stop, guarded)
        #: why the lane stopped and its stages must run in line (a :class:`LaneLeak`), or None
        self.leak: str | None = None
        self._lane_ident: int | None = None
        originals = frozenset(id(m) for m in port.modules())

        def guard_modules(module, args):  # every module call of the process passes here while the lane runs
            if id(module) in originals and threading.get_ident() == self._lane_ident:
                raise LaneLeak(f"the copy called the port's module {type(module).__name__}")

        # the lane's own result (its stages and findings, merged by finish()) and port; the rest is shared, read
        self.ctx = dataclasses.replace(ctx, ts=twin, result=dataclasses.replace(ctx.result, stages=[], findings=[]),
                                       on_lane=True, say=lambda msg: None)
        self._module_hook = torch.nn.modules.module.register_module_forward_pre_hook(guard_modules)
        self._thread = Background(pending_bytes=0, name=LANE_THREAD)
        self._thread.submit(functools.partial(self._run, stages))

    def _run(self, stages) -> None:
        self._lane_ident = threading.get_ident()
        try:
            with self.gate:
                for stage in stages:
                    stage(self.ctx)
        except LaneLeak as exc:
            self.leak = str(exc)

    @classmethod
    def start(cls, ctx: CheckContext, stages, start_state) -> "tuple[SideLane | None, str]":
        """``(a running lane, "on a second core, alongside training")``, or ``(None, "in line: <why>")`` where the
        stages run in line (:func:`lane_refusal`, or a port that cannot be copied)."""
        why = lane_refusal(ctx)
        if why is not None:
            return None, f"in line: {why}"
        try:
            twin = ctx.ts.twin()
        except Exception as exc:  # noqa: BLE001 - any module deepcopy refuses: the stages run in line
            return None, f"in line: the port cannot be copied ({type(exc).__name__})"
        return cls(ctx, twin, stages, start_state), "on a second core, alongside training"

    def training_done(self) -> None:
        """The training stages are done: the lane may draw from torch's generator."""
        self.gate.open()

    def finish(self, ctx: CheckContext) -> bool:
        """Wait for the lane; raise what it raised; its stages and findings into the check's result, and the eval
        forward's facts to the check (``ctx``; the recorded attention calls to ``ctx.ts``). False: the copy reached into the port (:attr:`leak`),
        nothing of the lane's is kept and the stages must run in line."""
        self.training_done()
        try:
            self._thread.wait()
        finally:
            self._done()
        if self.leak is not None:
            return False
        lane = self.ctx
        ctx.result.stages += lane.result.stages
        ctx.result.findings += lane.result.findings
        ctx.eval_shapes, ctx.final, ctx.calls = lane.eval_shapes, lane.final, lane.calls
        if "_attention_calls" in lane.ts.__dict__:  # what the diagnosis' probes replay (recorded in eval mode)
            ctx.ts._attention_calls = dict(lane.ts._attention_calls)
        return True

    def cancel(self) -> None:
        """Stop the lane (its next torch operation raises :class:`LaneCancelled`) and wait for its thread."""
        self._stop.set()
        self.gate.open()
        try:
            self._thread.cancel()
        finally:
            self._done()

    def _done(self) -> None:
        """The lane's thread has ended: the process's module hook removed, and torch's generator back where the
        training stages left it if the lane drew."""
        self._module_hook.remove()
        if self.gate.main_state is not None:
            self.ctx.ts.torch.random.set_rng_state(self.gate.main_state)
            self.gate.main_state = None
