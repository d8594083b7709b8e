"""Memory for a check's large temporary arrays, used again instead of asked for anew.

A check makes temporaries per tap the size of its activation: the copy of the port's output a comparison
job holds (``parity.stages.forward.diff_sink``), ``|ref - port|`` (``parity.core.tensors.tensor_diff``) and the
reference's arrays read back from disk (``parity.core.spill.Spilled.load``; the comparisons give them back, and
the isolated stage on a side lane its inputs) come from here. Fresh memory of that size is mapped by the kernel and faulted in page by page; blocks over 32 MB
always are (glibc's largest mmap threshold, ``parity.core.env.KEPT_MMAP_THRESHOLD``), and on this project's VM
the host reclaims the pages of freed memory within seconds (``parity.core.env.keep_heap``). Measured: ``|r - p|`` of two 44 MB arrays
into fresh memory 17.2 ms, into memory used before 4.7 ms; the subtraction into fresh memory was 2 s of the
comparison thread's ~6 s in each ``--watch`` xception check (py-spy).

:data:`POOL` lends buffers (:meth:`BufferPool.empty`) and takes back only what it lent (:meth:`BufferPool.give`):
an array of any other origin handed to ``give`` is ignored, so only the code that took a buffer can recycle
it, and only once it holds no view of it. A buffer never given back is garbage like any array. The pool keeps
at most :data:`POOL_MAX_BYTES` of free buffers; arrays under :data:`POOL_MIN_BYTES` come from malloc's heap.
Values are untouched: a lent buffer holds whatever was there before, as ``np.empty`` does.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

#: arrays smaller than this are not pooled (malloc's heap reuses them already)
POOL_MIN_BYTES = 1 << 20
#: free buffers the pool keeps, in bytes (those above are dropped): the comparison queue holds at most
#: ``parity.core.background.PENDING_BYTES`` (256 MB) of copies, plus the arrays being compared
POOL_MAX_BYTES = 512 << 20
#: a free buffer serves a request of at least this fraction of its size (a 44 MB buffer is not spent on 2 MB)
FIT_FRACTION = 0.5


class BufferPool:
    """Free flat byte buffers, lent as arrays of any shape and dtype (see the module docstring). Thread-safe."""

    def __init__(self, max_bytes: int = POOL_MAX_BYTES, min_bytes: int = POOL_MIN_BYTES):
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self._free: list[np.ndarray] = []
        self._free_bytes = 0
        self._lent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> buffer lent out
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def empty(self, shape, dtype=np.float64) -> np.ndarray:
        """An uninitialised C-contiguous array, in a buffer used before when one fits."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes or dtype.hasobject:
            return np.empty(shape, dtype)
        buf = None
        with self._lock:
            best = -1
            for i, b in enumerate(self._free):
                if nbytes <= b.nbytes and nbytes >= FIT_FRACTION * b.nbytes and (
                        best < 0 or b.nbytes < self._free[best].nbytes):
                    best = i
            if best >= 0:
                buf = self._free.pop(best)
                self._free_bytes -= buf.nbytes
                self.hits += 1
            else:
                self.misses += 1
        if buf is None:
            buf = np.empty(nbytes, np.uint8)
        with self._lock:
            self._lent[id(buf)] = buf
        return buf[:nbytes].view(dtype).reshape(shape)

    def lent(self, a) -> bool:
        """Whether ``a`` is (a view of) a buffer :meth:`empty` lent and nobody gave back: memory its holder owns
        as if it were an array of its own (``np.ndarray.flags.owndata`` is False for it)."""
        root = _root(a)
        with self._lock:
            return root is not None and self._lent.get(id(root)) is root

    def give(self, a) -> bool:
        """Take back an array :meth:`empty` lent (or a view of one); the caller holds no other reference or view
        of it. Anything else is ignored. Returns whether the buffer is kept for reuse."""
        root = _root(a)
        with self._lock:
            if root is None or self._lent.get(id(root)) is not root:
                return False
            del self._lent[id(root)]
            if self._free_bytes + root.nbytes > self.max_bytes:
                return False
            self._free.append(root)
            self._free_bytes += root.nbytes
        return True

    def clear(self) -> None:
        """Drop the free buffers (their memory goes back to the allocator)."""
        with self._lock:
            self._free.clear()
            self._free_bytes = 0

    @property
    def free_bytes(self) -> int:
        return self._free_bytes


def _root(a) -> np.ndarray | None:
    """The array whose memory ``a`` views (``a`` itself if it owns it); None for anything not an array."""
    if not isinstance(a, np.ndarray):
        return None
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


#: the process's pool
POOL = BufferPool()
