"""Computed-but-not-yet-compared arrays kept in a temporary directory instead of memory.

A check runs the reference (Keras) first and the port (PyTorch) second, so everything the reference
produces waits for the port: eval activations, train activations, activation gradients, parameter
gradients, updated parameters and optimizer slots. For a large model these are several full copies of the
activations (Xception at 299x299, batch 2, float64: ~1.7 GB per copy) or of the parameters (GOTURN: 113.7 M
parameters, 0.91 GB per float64 copy). Held in memory they add up to 8-12 GB; spilled, a check holds one
array at a time while comparing (the page cache, which the kernel can evict, holds the rest).

Arrays below :data:`SPILL_MIN_BYTES` stay in memory. Files are ``.npy`` read back with
``allow_pickle=False``. A store made with ``background=True`` (a check's, a recording's) writes on a thread
of its own while the frameworks compute (measured: writing Xception's 3.9 GB took 8.3 s of that thread, the
check waited 0.27 s for it): :meth:`SpillStore.put` hands over a copy and returns, and reading a handle waits
for its write; at most :data:`WRITE_PENDING_BYTES` of copies wait, and a full disk is the same
:class:`parity.core.errors.UsageError`, raised at the next put, flush or read.

The directory never outlives its process: it is removed when the store is closed or garbage-collected, at
interpreter exit, on Ctrl-C (``KeyboardInterrupt`` unwinds through the closes) and on ``SIGTERM`` (what CI
runners, ``timeout`` and container stops send: while a store is open, the handler removes the open directories
and raises ``SystemExit(128 + 15)`` so the same closes run, in parity's own code: see :class:`_Sigterm`; a
handler the program installed itself is kept and called). A process killed outright
(``SIGKILL``, power loss) cannot clean up: each directory is named ``parity-spill-<pid>-…`` and holds a marker
(:data:`MARKER`, host and pid), and every new store removes the directories of processes on this host that no
longer exist. A full disk is a :class:`parity.core.errors.UsageError` naming the directory and what it needed.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, MutableMapping
from typing import Any, Iterator

import numpy as np

from parity.core.background import Background
from parity.core.buffers import POOL
from parity.core.errors import UsageError

#: arrays at least this large go to disk (1 MiB: a conv kernel of a small model stays in memory)
SPILL_MIN_BYTES = 1 << 20
#: bytes of copies a store's writer thread may hold before :meth:`SpillStore.put` waits for the disk
WRITE_PENDING_BYTES = 256 << 20
#: environment variable naming the parent directory of spill directories (default: the system temp dir)
SPILL_DIR_ENV = "PARITY_SPILL_DIR"
#: prefix of every spill directory; the creating process's pid follows (``parity-spill-<pid>-<random>``)
SPILL_PREFIX = "parity-spill-"
#: file inside each spill directory saying who made it (JSON: host, pid); only such directories are removed
MARKER = ".parity-spill.json"
#: exit status of a process ended by SIGTERM while a store was open (the shell's 128 + signal number)
SIGTERM_EXIT = 128 + signal.SIGTERM
_DIR_NAME = re.compile(re.escape(SPILL_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")
#: errno values meaning "the disk (or the user's quota) is full"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _spill_root(root: str | None) -> str:
    return root or os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_stale(root: str | None = None) -> list[str]:
    """Remove the spill directories under ``root`` (default: the spill root) left by processes of this host
    that no longer exist. Only directories named ``parity-spill-<pid>-…``, owned by this user, holding a
    :data:`MARKER` that names this host and that pid are touched. Returns the removed paths."""
    root = _spill_root(root)
    host = socket.gethostname()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _DIR_NAME.fullmatch(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, MARKER), encoding="utf-8") as f:
                owner = json.loads(f.read(4096))
        except (OSError, ValueError):
            continue
        pid = int(m.group(1))
        if not isinstance(owner, dict) or owner.get("host") != host or owner.get("pid") != pid:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _remove_dir(path: str, pid: int) -> None:
    """Finalizer: remove a store's directory, only in the process that made it (a forked child inherits the
    finalizer but not the directory), and stop holding SIGTERM for it."""
    _Sigterm.dirs.discard(path)
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)
    _Sigterm.release()


#: the directory holding this package: a frame whose code lives under it is parity's own
_PARITY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: top-level packages whose code may run under C functions that replace a pending exception (TensorFlow's
#: ``tf.nest`` helpers import modules from C: a ``SystemExit`` raised there came out as a ``SystemError``)
FRAMEWORK_PACKAGES = frozenset({"tensorflow", "keras", "tf_keras", "torch", "jax", "jaxlib"})


def _is_parity_frame(frame) -> bool:
    return frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PARITY_DIR)


def _is_framework_frame(frame) -> bool:
    return str(frame.f_globals.get("__name__", "")).split(".", 1)[0] in FRAMEWORK_PACKAGES


def _raise_here(frame) -> bool:
    """True unless framework code runs between ``frame`` and the nearest frame of parity's own code."""
    while frame is not None:
        if _is_parity_frame(frame):
            return True
        if _is_framework_frame(frame):
            return False
        frame = frame.f_back
    return True


def sigterm_received() -> bool:
    """True once SIGTERM arrived while a store was open: whatever exception then reaches the command line
    (a framework may wrap or replace the ``SystemExit``) means "stopped", exit :data:`SIGTERM_EXIT`."""
    return _Sigterm.received


class _Sigterm:
    """SIGTERM -> ``SystemExit(SIGTERM_EXIT)`` while at least one store is open, so ``finally`` blocks and
    ``close()`` run as they do for Ctrl-C; the previous handler comes back when the last store closes.

    The open directories are removed in the handler itself, before anything is raised. The ``SystemExit`` is
    raised in parity's own code only: a signal handled inside TensorFlow, Keras or torch code (an import in a
    C function, a layer call that wraps exceptions) would turn it into a ``SystemError`` or an
    ``AttributeError`` and the process would end as an internal error (measured: exit 3 after a SIGTERM in
    ``tf.nest``). There, a trace function raises it at the next line parity's own code runs.
    """

    lock = threading.Lock()
    open_stores = 0
    previous: Any = None
    installed = False
    received = False
    dirs: set[str] = set()

    @classmethod
    def acquire(cls) -> None:
        with cls.lock:
            cls.open_stores += 1
            if cls.installed or threading.current_thread() is not threading.main_thread():
                return
            try:
                current = signal.getsignal(signal.SIGTERM)
                if current == signal.SIG_IGN:
                    return
                signal.signal(signal.SIGTERM, cls.handle)
            except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
                return
            cls.previous, cls.installed = current, True

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.open_stores = max(cls.open_stores - 1, 0)
            if cls.open_stores or not cls.installed:
                return
            if threading.current_thread() is threading.main_thread():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    if signal.getsignal(signal.SIGTERM) == cls.handle:
                        signal.signal(signal.SIGTERM, cls.previous if cls.previous is not None else signal.SIG_DFL)
                    cls.installed = False

    @staticmethod
    def handle(signum, frame):
        prev = _Sigterm.previous
        if callable(prev) and prev not in (signal.SIG_DFL, signal.SIG_IGN):
            prev(signum, frame)
        if not _Sigterm.open_stores:  # every store closed from another thread: the default action
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
            _Sigterm.installed = False
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _Sigterm.received = True
        for path in list(_Sigterm.dirs):
            shutil.rmtree(path, ignore_errors=True)
        if _raise_here(frame):
            raise SystemExit(SIGTERM_EXIT)
        _Sigterm.exit_outside_frameworks(frame)

    @staticmethod
    def exit_outside_frameworks(frame) -> None:
        """Raise ``SystemExit`` at the next line run by a frame of parity's code (or by one below every
        framework frame, e.g. the user's script): those on the stack now get a local trace function, the
        global one gives it to parity's frames called later. Python removes a trace function that raised,
        so the tracing ends with the exit."""

        def local(frame, event, arg):
            if event == "line":
                raise SystemExit(SIGTERM_EXIT)
            return local

        def calls(frame, event, arg):
            return local if _is_parity_frame(frame) else None

        stack = []
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        outermost = max((i for i, f in enumerate(stack) if _is_framework_frame(f)), default=-1)
        for i, f in enumerate(stack):
            if _is_parity_frame(f) or (i > outermost and not _is_framework_frame(f)):
                f.f_trace = local
                f.f_trace_lines = True
        sys.settrace(calls)


class _Write:
    """A write the store's writer thread has not finished: :meth:`Spilled.load` waits for it."""

    __slots__ = ("done", "error")

    def __init__(self):
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class Spilled:
    """A handle to one array on disk."""

    __slots__ = ("path", "shape", "dtype", "nbytes", "digest", "pending")

    def __init__(self, path: str, a: np.ndarray, digest: bytes | None = None):
        self.path, self.shape, self.dtype, self.nbytes = path, a.shape, a.dtype, a.nbytes
        #: blake2b of the bytes, when the store computes digests (a trace stores equal arrays once)
        self.digest = digest
        #: the write in progress on the store's writer thread (None: on disk)
        self.pending: _Write | None = None

    def load(self, pooled: bool = False) -> np.ndarray:
        """The array, in memory of its own. ``pooled``: in a buffer of :data:`parity.core.buffers.POOL` (memory
        used before, not faulted in again), for a reader that holds it only while it compares it and then gives
        it back (``PortLayoutMemo``'s readers).

        (Read, not a copy-on-write map of the file: faulting a --watch session's ~4 GB of the reference in the
        port's layout page by page made its xception check 2.7 s slower, median of 5, side by side.)"""
        if self.pending is not None:
            self.pending.wait()
        if not pooled:
            return np.load(self.path, allow_pickle=False)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:  # (never written by a store: np.save of C-ordered numbers)
                f.seek(0)
                return np.load(f, allow_pickle=False)
            out = POOL.empty(shape, dtype)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < out.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{self.path}: expected {out.nbytes} bytes of data. Received: {got}.")
                got += n
        return out

    def __repr__(self) -> str:
        return f"Spilled({self.dtype}{list(self.shape)}, {os.path.basename(self.path)})"


class SpillStore:
    """A temporary directory of arrays; :meth:`hold` turns an array (or a list / dict of them) into what a
    :class:`SpillDict` keeps."""

    def __init__(self, min_bytes: int | None = None, root: str | None = None, digests: bool = False,
                 background: bool = False):
        self.min_bytes = SPILL_MIN_BYTES if min_bytes is None else min_bytes
        self.digests = digests
        #: writes on a thread of their own (``parity.core.background``): :meth:`put` copies the array and returns
        #: (one larger than :data:`WRITE_PENDING_BYTES` is written before put returns)
        self._writer = Background(WRITE_PENDING_BYTES) if background else None
        parent = _spill_root(root)
        remove_stale(parent)
        pid = os.getpid()
        try:
            self.dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{pid}-", dir=parent)
        except OSError as exc:
            raise UsageError(f"spill directory: expected a writable directory {parent} (set {SPILL_DIR_ENV} to "
                             f"choose another). Received: {exc.strerror or exc}.") from None
        _Sigterm.acquire()
        _Sigterm.dirs.add(self.dir)
        self._finalizer = weakref.finalize(self, _remove_dir, self.dir, pid)
        self._n = 0
        self.bytes_written = 0
        self.files = 0
        try:
            with open(os.path.join(self.dir, MARKER), "w", encoding="utf-8") as f:
                json.dump({"host": socket.gethostname(), "pid": pid}, f)
        except OSError as exc:
            self._finalizer()
            self._disk_full(exc, 0)

    def _disk_full(self, exc: OSError, needed: int):
        if exc.errno in DISK_FULL:
            free = ""
            with contextlib.suppress(OSError):
                free = f", {shutil.disk_usage(os.path.dirname(self.dir)).free / 1e6:.1f} MB free"
            raise UsageError(f"spill directory {self.dir}: expected room for {needed / 1e6:.1f} MB more "
                             f"({self.bytes_written / 1e6:.1f} MB written so far{free}). Received: "
                             f"{os.strerror(exc.errno)}. Free disk space or set {SPILL_DIR_ENV} to a directory on "
                             "a larger disk.") from None
        raise exc

    def put(self, a, owned: bool = False) -> Spilled | np.ndarray:
        """Hold ``a``: a handle to it on disk, or (below ``min_bytes``) a copy in memory. ``owned``: the caller
        hands the array over, nothing will change its memory (a TensorFlow tensor's buffer, immutable and kept
        alive by the array; a copy the caller made and drops), so the writer thread writes it without a copy of
        its own. That copy was a second pass over fresh memory for every spilled byte, ~3 ms/MB on this VM,
        whose host reclaims freed pages (:func:`parity.core.env.keep_heap`)."""
        a = np.asarray(a)
        if a.nbytes < self.min_bytes or a.dtype == object:
            return np.array(a)  # a copy: the caller's buffer (a TF/torch tensor's memory) may be reused
        self._n += 1
        path = os.path.join(self.dir, f"{self._n:06d}.npy")
        digest = None
        if self.digests:
            digest = hashlib.blake2b(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).digest()
        if self._writer is not None and self._writer.threaded and a.nbytes <= WRITE_PENDING_BYTES:
            # (a larger one is written here: a copy of GOTURN's fc6 kernel would add 0.6 GB to the peak)
            own = a if owned else np.array(a)  # else the caller's buffer may change once put returns
            handle = Spilled(path, own, digest)
            handle.pending = pending = _Write()
            self._writer.submit(functools.partial(self._write, path, own, pending), own.nbytes,
                                skipped=functools.partial(self._skipped, pending))
        else:
            self._write(path, a)
            handle = Spilled(path, a, digest)
        self.bytes_written += a.nbytes
        self.files += 1
        return handle

    def _write(self, path: str, a: np.ndarray, pending: _Write | None = None) -> None:
        try:
            np.save(path, a, allow_pickle=False)  # (not ascontiguousarray: it makes a 0-d array 1-d)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            try:
                self._disk_full(exc, a.nbytes)
            except BaseException as err:
                if pending is not None:
                    pending.error = err
                raise
        finally:
            if pending is not None:
                pending.done.set()

    def _skipped(self, pending: _Write) -> None:
        """A queued write not made (the store closed, or an earlier write failed): a load of it says so."""
        pending.error = UsageError(f"spill directory {self.dir}: an array was not written (the store was closed "
                                   "or an earlier write failed)")
        pending.done.set()

    def flush(self) -> None:
        """Return once every queued write is on disk; raise the first write's error."""
        if self._writer is not None:
            self._writer.wait()

    def hold(self, v):
        """What a :class:`SpillDict` keeps for ``v``: arrays (and array-likes such as tensors) via :meth:`put`,
        lists element-wise, mappings as nested SpillDicts, anything else as is."""
        if isinstance(v, (Spilled, SpillDict)):
            return v
        if isinstance(v, np.ndarray) or (hasattr(v, "__array__") and not isinstance(v, (list, tuple, Mapping))):
            return self.put(v)
        if isinstance(v, (list, tuple)):
            return [self.hold(x) for x in v]
        if isinstance(v, Mapping):
            return SpillDict(self, v)
        return v

    def close(self, wait: bool = True) -> None:
        """Drop the queued writes and remove the directory. ``wait=False``: removed by a thread of its own
        (not a daemon: the interpreter, and :func:`parity.cli.exit_quickly`, wait for it; :func:`wait_removed`
        does too). Unlinking Xception's 560 files (3.9 GB of page cache to free) took 0.74 s of a check's
        main thread (cProfile); a check that succeeded does not make its caller wait for that."""
        if self._writer is not None:
            self._writer.cancel()  # the queued writes are dropped: the directory goes now
        if wait or not self._finalizer.alive:
            self._finalizer()
            return
        _, _, (path, pid), _ = self._finalizer.detach()
        _Sigterm.release()  # (on this thread: only the main thread may restore a signal handler)
        if os.getpid() != pid:
            _Sigterm.dirs.discard(path)
            return

        def remove() -> None:
            shutil.rmtree(path, ignore_errors=True)
            _Sigterm.dirs.discard(path)  # (until here, a SIGTERM handler still removes it too)

        thread = threading.Thread(target=remove, name="parity-spill-remove")
        thread.start()
        _REMOVALS[:] = [t for t in _REMOVALS if t.is_alive()] + [thread]  # (a --watch session makes many)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


#: directory removals running on threads of their own (:meth:`SpillStore.close` with ``wait=False``)
_REMOVALS: list[threading.Thread] = []


def wait_removed() -> None:
    """Return once every directory that :meth:`SpillStore.close` (``wait=False``) handed to a thread is gone."""
    while _REMOVALS:
        _REMOVALS.pop().join()


def _load(v, pooled: bool = False):
    if isinstance(v, Spilled):
        return v.load(pooled=True) if pooled else v.load()  # (a trace's handles read one way only)
    if isinstance(v, np.ndarray):  # small arrays live in memory: a copy, so that callers may write to it
        return v.copy()
    if isinstance(v, list):
        return [_load(x, pooled) for x in v]
    return v


class SpillDict(MutableMapping):
    """A dict whose large array values live in a :class:`SpillStore`; reading a key loads its array (a fresh
    copy each time: callers hold it only while they compare it)."""

    def __init__(self, store: SpillStore | None, data: Mapping | None = None):
        self.store = store
        self._d: dict[str, Any] = {}
        if data:
            for k, v in data.items():
                self[k] = v

    def __setitem__(self, key, value) -> None:
        self._d[key] = self.store.hold(value) if self.store is not None else value

    @classmethod
    def from_handles(cls, store: SpillStore | None, handles: Mapping) -> "SpillDict":
        """A SpillDict over values already held (spilled handles, small arrays, nested SpillDicts)."""
        d = cls(store)
        d._d.update(handles)
        return d

    def adopt(self, key, array) -> None:
        """``self[key] = array`` for an array handed over (:meth:`SpillStore.put` with ``owned``): no copy."""
        self._d[key] = self.store.put(array, owned=True) if self.store is not None else array

    def set_handle(self, key, handle) -> None:
        """Store an already-held value (a :class:`Spilled` shared by several keys is written once)."""
        self._d[key] = handle

    def handle(self, key):
        return self._d[key]

    def __getitem__(self, key):
        return _load(self._d[key])

    def pooled(self, key):
        """``self[key]``, its large arrays in recycled memory (:meth:`Spilled.load` ``pooled``): for a reader that
        gives them back to ``parity.core.buffers.POOL`` once compared, and keeps nothing of them."""
        return _load(self._d[key], pooled=True)

    def __delitem__(self, key) -> None:
        del self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    def __repr__(self) -> str:
        return f"SpillDict({len(self)} keys in {self.store.dir if self.store is not None else 'a trace'})"


def materialize(obj):
    """Plain dicts / lists / arrays (for a trace file, a test)."""
    if isinstance(obj, Mapping):
        return {k: materialize(obj[k]) for k in obj}
    if isinstance(obj, list):
        return [materialize(x) for x in obj]
    return _load(obj)
