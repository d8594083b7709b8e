"""Computed-but-not-yet-compared arrays kept in a temporary directory instead of memory.

A check runs the reference (Keras) first and the port (PyTorch) second, so everything the reference
produces waits for the port: eval activations, train activations, activation gradients, parameter
gradients, updated parameters and optimizer slots. For a large model these are several full copies of the
activations (Xception at 299x299, batch 2, float64: ~1.7 GB per copy) or of the parameters (GOTURN: 113.7 M
parameters, 0.91 GB per float64 copy). Held in memory they add up to 8-12 GB; spilled, a check holds one
array at a time while comparing (the page cache, which the kernel can evict, holds the rest).

Arrays below :data:`SPILL_MIN_BYTES` stay in memory. Files are ``.npy`` read back with
``allow_pickle=False``; the directory is removed when the store is closed or garbage-collected.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, MutableMapping
from typing import Any, Iterator

import numpy as np

#: arrays at least this large go to disk (1 MiB: a conv kernel of a small model stays in memory)
SPILL_MIN_BYTES = 1 << 20
#: environment variable naming the parent directory of spill directories (default: the system temp dir)
SPILL_DIR_ENV = "PARITY_SPILL_DIR"


class Spilled:
    """A handle to one array on disk."""

    __slots__ = ("path", "shape", "dtype", "nbytes", "digest")

    def __init__(self, path: str, a: np.ndarray, digest: bytes | None = None):
        self.path, self.shape, self.dtype, self.nbytes = path, a.shape, a.dtype, a.nbytes
        #: blake2b of the bytes, when the store computes digests (a trace stores equal arrays once)
        self.digest = digest

    def load(self) -> np.ndarray:
        return np.load(self.path, allow_pickle=False)

    def __repr__(self) -> str:
        return f"Spilled({self.dtype}{list(self.shape)}, {os.path.basename(self.path)})"


class SpillStore:
    """A temporary directory of arrays; :meth:`hold` turns an array (or a list / dict of them) into what a
    :class:`SpillDict` keeps."""

    def __init__(self, min_bytes: int | None = None, root: str | None = None, digests: bool = False):
        self.min_bytes = SPILL_MIN_BYTES if min_bytes is None else min_bytes
        self.digests = digests
        self.dir = tempfile.mkdtemp(prefix="parity-spill-", dir=root or os.environ.get(SPILL_DIR_ENV) or None)
        self._n = 0
        self.bytes_written = 0
        self.files = 0
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def put(self, a) -> Spilled | np.ndarray:
        a = np.asarray(a)
        if a.nbytes < self.min_bytes or a.dtype == object:
            return np.array(a)  # a copy: the caller's buffer (a TF/torch tensor's memory) may be reused
        self._n += 1
        path = os.path.join(self.dir, f"{self._n:06d}.npy")
        np.save(path, a, allow_pickle=False)  # (not ascontiguousarray: it makes a 0-d array 1-d)
        self.bytes_written += a.nbytes
        self.files += 1
        digest = None
        if self.digests:
            import hashlib

            digest = hashlib.blake2b(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).digest()
        return Spilled(path, a, digest)

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

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


def _load(v):
    if isinstance(v, Spilled):
        return v.load()
    if isinstance(v, np.ndarray):  # small arrays live in memory: a copy, so that callers may write to it
        return v.copy()
    if isinstance(v, list):
        return [_load(x) for x in v]
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

    def set_handle(self, key, handle) -> None:
        """Store an already-held value (a :class:`Spilled` shared by several keys is written once)."""
        self._d[key] = handle

    def handle(self, key):
        return self._d[key]

    def __getitem__(self, key):
        return _load(self._d[key])

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
