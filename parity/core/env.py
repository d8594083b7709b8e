"""The one environment module: every entry point (CLI, tests, pytest plugin, benchmarks) imports it
before TensorFlow or PyTorch is imported.

Why each variable (measured on this project's 2-core CI machine):

- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's AVX-512 kernels corrupt the heap in the backward pass of a 1x1
  stride-2 convolution, in both TensorFlow and PyTorch (intermittent segfault / double free), on a CPU with
  AVX-512. Capping the ISA at AVX2 made 5/5 runs clean. It must be set before either framework loads oneDNN.
  A value the user exported is kept when it is AVX2 or lower (:data:`ISA_AT_MOST_AVX2`); a higher one (or
  ``ALL``) is replaced by AVX2, and :func:`isa_report` says which ISA was in force and why (the check's
  environment report carries it). ``tests/parity/test_env.py`` holds the crash probe (a 1x1 stride-2 conv
  backward in both frameworks, in a subprocess).
- ``TF_ENABLE_ONEDNN_OPTS=0``: TF's oneDNN graph rewrites off; also makes TF CPU numerics deterministic.
- ``TF_CPP_MIN_LOG_LEVEL=2``: TF's C++ info/warning chatter off (errors still print).
- ``OMP_NUM_THREADS=1``: PyTorch's CPU kernels on one OpenMP thread. Measured on this 2-core machine: one
  train fwd+bwd of mini_XCEPTION (float64, batch 8) took 0.07 s with 1 thread and 13.6 s with the default 2
  while one other process was busy (OpenMP barriers spin against a descheduled thread); on an idle machine
  a full check took 8.6 s with 1 thread vs 10.2 s with 2. TensorFlow's own thread pools are not affected.
  Export another value to override.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import threading
import warnings

from parity.core.errors import UsageError

#: Environment every process of the project runs with. ``setdefault`` semantics (a user who exports a
#: different value on purpose keeps it), except ``ONEDNN_MAX_CPU_ISA`` (:func:`_cap_isa`).
ENVIRONMENT = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "KERAS_BACKEND": "tensorflow",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
}

_FRAMEWORKS = ("tensorflow", "torch", "keras")

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
#: The ISA the workaround caps oneDNN at (no AVX-512 kernels).
WORKAROUND_ISA = "AVX2"
#: ``ONEDNN_MAX_CPU_ISA`` values at or below AVX2, in oneDNN's order (oneDNN ``dnnl_cpu_isa_t``:
#: sse41 0x1, avx 0x3, avx2 0x7; everything above, from avx2_vnni 0xf to the AVX-512 and AMX sets, is higher;
#: oneDNN's "CPU Dispatcher Control" page lists the variable's values). A user's value among these is kept.
ISA_AT_MOST_AVX2 = ("SSE41", "AVX", "AVX2")

#: How ``ONEDNN_MAX_CPU_ISA`` was decided in this process (filled by :func:`configure`).
ISA_DECISION: dict[str, str] = {}


def _cap_isa() -> dict[str, str]:
    """Set ``ONEDNN_MAX_CPU_ISA``: AVX2 unless the user exported AVX2 or lower. Returns the decision."""
    user = os.environ.get(ISA_VAR)
    if user is None:
        os.environ[ISA_VAR] = WORKAROUND_ISA
        why = ("parity's default: oneDNN's AVX-512 kernels corrupt the heap in a 1x1 stride-2 convolution's "
               "backward pass")
    elif user.strip().upper() in ISA_AT_MOST_AVX2:
        why = f"the user's value {user!r} kept (AVX2 or lower)"
    else:
        os.environ[ISA_VAR] = WORKAROUND_ISA
        why = (f"the user's value {user!r} replaced by {WORKAROUND_ISA}: above AVX2, oneDNN's AVX-512 kernels "
               "corrupt the heap in a 1x1 stride-2 convolution's backward pass")
    return {"value": os.environ[ISA_VAR], "why": why}


def configure() -> list[str]:
    """Set the environment; return the frameworks that were already imported (too late for them)."""
    for key, value in ENVIRONMENT.items():
        if key != ISA_VAR:
            os.environ.setdefault(key, value)
    if not ISA_DECISION:  # once per process: a second call would read back our own value as the user's
        ISA_DECISION.update(_cap_isa())
    warnings.filterwarnings("ignore", message=r".*np\.object.*")
    late = [name for name in _FRAMEWORKS if name in sys.modules]
    return late


LATE_IMPORTS = configure()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def isa_report() -> dict[str, str]:
    """For the environment report: which oneDNN ISA cap was in force in this process and why, and whether it
    matters here (the CPU's AVX-512) or came too late (a framework imported before this module)."""
    value = os.environ.get(ISA_VAR)
    why = ISA_DECISION.get("why", "not set by parity")
    if value != ISA_DECISION.get("value"):
        why = f"changed after parity set it (now {value!r})"
    if LATE_IMPORTS:
        why += f"; {', '.join(LATE_IMPORTS)} imported before parity set it, so oneDNN may not honour it"
    flags = cpu_flags()
    avx512 = "unknown" if not flags else ("yes" if any(f.startswith("avx512") for f in flags) else "no")
    return {ISA_VAR: str(value), f"{ISA_VAR} why": why, "cpu AVX-512": avx512}


@contextlib.contextmanager
def framework_import():
    """A framework's first import, with the garbage collector off and what it made frozen out of its sight
    afterwards (``gc.freeze``), in the command line's processes (:func:`freeze_after_imports`); elsewhere an
    ordinary import.

    Why: importing torch makes some 10^5 container objects that all stay alive. Measured on the 2-core VM in a
    cached minixception check (gc callbacks): the collector's default thresholds ran 391 collections through
    them during the import (0.27 s), the later ones over everything imported so far. Turned off for the import
    alone, the cost moves, not goes: the first young collection afterwards scanned the whole import (0.12 s) and the
    first full one traversed it again (0.26-0.29 s). Frozen, neither happens: the check's collections took 0.008 s
    instead of 0.29 s. A frozen object is never collected, which suits a process that ends with its command and
    not a library caller (a test session, a notebook), whose garbage from before a check would stay."""
    if not _FREEZE_AFTER_IMPORTS:
        yield
        return
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


#: non-empty once :func:`freeze_after_imports` was called (the command line's processes only)
_FREEZE_AFTER_IMPORTS: list[bool] = []


def freeze_after_imports() -> None:
    """Make :func:`framework_import` freeze what the frameworks' imports made (for the command line: a process
    that ends when its command does)."""
    if not _FREEZE_AFTER_IMPORTS:
        _FREEZE_AFTER_IMPORTS.append(True)


def import_tensorflow():
    """Import TF/Keras quietly (after :func:`configure`). Raises ``MissingFramework`` with the fix."""
    try:
        import logging

        with framework_import():
            import tensorflow as tf  # noqa: F401
            import keras

        logging.getLogger("absl").setLevel(logging.ERROR)
        tf.get_logger().setLevel(logging.ERROR)
        return keras
    except ImportError as exc:  # pragma: no cover - exercised on TF-less machines
        raise MissingFramework(
            "the Keras reference side needs TensorFlow and Keras 3. Received: "
            f"{exc}. Install them with `pip install -e .[cpu]` (or `.[gpu]`), or replay a recorded trace "
            "with `parity replay`, which needs only PyTorch."
        ) from None


def import_torch():
    """``torch``, with :func:`optimizers_without_dynamo_import` applied once: every check, replay and
    conversion builds its optimizers through this import."""
    try:
        with framework_import():
            import torch
    except ImportError as exc:  # pragma: no cover
        raise MissingFramework(
            f"the port side needs PyTorch. Received: {exc}. Install it with `pip install torch`."
        ) from None
    if not _OPTIMIZERS_PATCHED:
        _OPTIMIZERS_PATCHED.append(optimizers_without_dynamo_import())
    return torch


#: holds the count of :func:`optimizers_without_dynamo_import` once :func:`import_torch` has applied it
_OPTIMIZERS_PATCHED: list[int] = []


def optimizers_without_dynamo_import() -> int:
    """Let ``torch.optim`` optimizers run without importing ``torch._dynamo`` while nothing else has imported it.

    Why: ``Optimizer.add_param_group`` / ``zero_grad`` / ``state_dict`` carry ``torch._disable_dynamo``, which
    imports ``torch._dynamo`` on its first call, and every ``step`` runs ``import torch._dynamo`` for a
    ``graph_break()`` (``torch/optim/optimizer.py``, ``torch/_compile.py``). That import (with sympy and
    torch.fx) cost 1.5 s of a 2-core machine's time in a cached minixception check whose port side computes
    for 0.4 s, measured with cProfile. Both exist for code that dynamo compiles; nothing compiles in a process
    that has not imported dynamo. Each such method is replaced by one that calls the undecorated method (for
    ``step``: under the same grad mode) while ``torch._dynamo`` is not in ``sys.modules``, and the original one
    once it is (a port that uses ``torch.compile`` gets torch's behaviour). Returns how many methods were
    replaced (0 when dynamo is already loaded, or on a second call)."""
    if "torch._dynamo" in sys.modules:
        return 0
    import torch
    import torch._compile
    import torch.optim.optimizer as optimizer_module

    lazy_code = torch._compile._disable_dynamo(lambda: None).__code__
    grad_code = optimizer_module._use_grad_for_differentiable(lambda: None).__code__

    def plain(original, raw):
        @functools.wraps(raw)
        def call(*args, **kwargs):
            if "torch._dynamo" in sys.modules:
                return original(*args, **kwargs)
            return raw(*args, **kwargs)

        call.__parity_plain__ = True
        return call

    def plain_step(original, raw):
        @functools.wraps(raw)
        def step(self, *args, **kwargs):
            if "torch._dynamo" in sys.modules:
                return original(self, *args, **kwargs)
            prev = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(self.defaults["differentiable"])
                return raw(self, *args, **kwargs)
            finally:
                torch.set_grad_enabled(prev)

        step.__parity_plain__ = True
        return step

    classes, todo = [], [torch.optim.Optimizer]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    n = 0
    for cls in classes:
        for name, f in list(vars(cls).items()):
            code, raw = getattr(f, "__code__", None), getattr(f, "__wrapped__", None)
            if raw is None or getattr(f, "__parity_plain__", False):
                continue
            if code is lazy_code:
                setattr(cls, name, plain(f, raw))
                n += 1
            elif code is grad_code:
                setattr(cls, name, plain_step(f, raw))
                n += 1
    return n


def _libc():
    """glibc through ctypes, or False where there is none (macOS, musl without ``malloc_trim``)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - AttributeError where the C library has no malloc_trim
            _LIBC.mallopt  # noqa: B018
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere, and while the heap
    is kept: :func:`keep_heap`). TensorFlow and PyTorch free tensors of 1-30 MB into the malloc heap, where
    glibc keeps them: after the reference side of a check has freed its activations, the process would
    otherwise stay at its peak while the port runs."""
    if _KEEP[0]:
        return
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's defaults for the two (``mallopt(3)``), set back by :func:`release_heap`
MMAP_THRESHOLD_DEFAULT, TRIM_THRESHOLD_DEFAULT = 128 * 1024, 128 * 1024
#: blocks up to this size come from the kept heap (glibc's largest allowed mmap threshold on 64-bit,
#: ``DEFAULT_MMAP_THRESHOLD_MAX``); larger ones are mapped and unmapped each time, so that a model with
#: parameter-sized blocks (GOTURN's fc6: 0.6 GB) does not grow a heap it cannot reuse
KEPT_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_heap() -> bool:
    """Keep freed memory in this process for the rest of the work instead of giving it back to the OS: glibc
    takes blocks up to :data:`KEPT_MMAP_THRESHOLD` from the heap (no ``mmap`` and ``munmap`` each), never trims it,
    and :func:`trim_heap` does nothing, until the matching :func:`release_heap` (calls nest: a check inside a
    ``--watch`` session). Memory given back is faulted in again page by page on its next use, and on a virtual
    machine whose host reclaims freed guest memory that costs far more: measured on this project's 2-core VM,
    touching 1 GB again took 0.07 s right after it was freed, 1.3 s five seconds later, 3.3 s twenty seconds
    later. A full xception check (``parity.harness.check("xception")``, imports excluded, run alternately) took
    19.5 and 18.5 s with the heap kept, 24.4 and 22.4 s without, peak RSS 3.06-3.16 GB either way; GOTURN's
    peak stayed 6.2 GB. Returns False where glibc is not there (nothing changes)."""
    libc = _libc()
    if not libc:
        return False
    with _KEEP_LOCK:
        if _KEEP[0] == 0:
            libc.mallopt(M_MMAP_THRESHOLD, KEPT_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, 1 << 62)
        _KEEP[0] += 1
    return True


def release_heap() -> None:
    """End one :func:`keep_heap`; the last one sets glibc's default limits back (its dynamic mmap threshold
    stays off) and trims the heap."""
    libc = _libc()
    if not libc:
        return
    with _KEEP_LOCK:
        if _KEEP[0] == 0:
            return
        _KEEP[0] -= 1
        if _KEEP[0]:
            return
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_DEFAULT)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_DEFAULT)
    trim_heap()


def heap_is_kept() -> bool:
    """Whether freed memory is being kept (:func:`keep_heap` in force: a check running, a ``--watch`` session)."""
    return _KEEP[0] > 0


@contextlib.contextmanager
def heap_kept():
    """:func:`keep_heap` for the block."""
    kept = keep_heap()
    try:
        yield
    finally:
        if kept:
            release_heap()


_LIBC = None
_KEEP = [0]  # nesting depth of keep_heap()
_KEEP_LOCK = threading.Lock()


class MissingFramework(UsageError, RuntimeError):
    """A framework the requested stage needs is not installed."""
