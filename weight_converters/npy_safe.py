"""Reading a NumPy ``.npy`` that holds a pickled dict of arrays (``np.save(path, {"conv1": [W, b], ...})``, the
form of most Caffe -> numpy dumps) without running anything the pickle names, and without allocating more than
the file could hold.

``np.load`` with pickles allowed would run any code the pickle names. :func:`read_caffe_npy` never does: it reads
the ``.npy`` header with NumPy's format reader and unpickles with :class:`RestrictedUnpickler`, which resolves
only what arrays and plain containers need and refuses every other global before anything runs. The globals it
does resolve are the ones that allocate (``numpy.core.multiarray._reconstruct``, ``builtins.bytearray``): each is
wrapped so that it is refused when asked for more bytes than the file holds (a pickle of ``bytearray(2**30)`` is
20 bytes), and the pickle stream is read from memory, so an opcode declaring a 1 GiB string reads what is there
instead of allocating what it declares: every counted length is first checked against the bytes that follow
(``pickletools.genops`` over the stream), because CPython's unpickler allocates a ``BINBYTES8`` or
``BYTEARRAY8`` buffer of the declared size before it reads it.
"""
from __future__ import annotations

import importlib.util
import io
import pickle
import pickletools
from pathlib import Path
from typing import Mapping

import numpy as np

from weight_converters.files import input_error, input_where, regular_file_size

EXPECTED_FORMAT = ("expected a .npy holding a dict of numpy arrays ({'conv1': [W (OIHW), b], ...}, saved with "
                   "np.save(path, weights_dict))")
SAVE_HINT = "Save the weights with np.save(path, {'conv1': [W, b], ...})."
NUMPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every ``.npy`` file (``np.lib.format.MAGIC_PREFIX``)."""

#: Globals a pickled dict of numpy arrays needs, and nothing else: ndarray reconstruction (numpy 1.x and 2.x
#: module paths), dtypes, scalars, the protocol-2 bytes helper and plain containers.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("collections", "OrderedDict"),
}
#: Bytes the arrays of a pickle may allocate beyond the file's own size (headers, small scalars).
ALLOCATION_SLACK = 1 << 16

_NUMPY_PRIVATE_CORE = importlib.util.find_spec("numpy._core") is not None
"""numpy >= 2 keeps ``multiarray`` under ``numpy._core`` (``numpy.core`` is a deprecated shim); numpy 1.x only
under ``numpy.core``. Pickles name whichever wrote them; both are resolved to the installed one."""


class UnsafePickle(ValueError):
    """The pickle names a global outside :data:`SAFE_GLOBALS`; ``.global_name`` is ``module.name``."""

    def __init__(self, global_name: str, where: str = ""):
        super().__init__(f"{where + ': ' if where else ''}expected a .npy holding a dict of numpy arrays. Received: a pickle that "
                         f"references {global_name}. Re-save the weights with numpy arrays only.")
        self.global_name = global_name


class PickleTooLarge(ValueError):
    """The pickle asks for more memory than its file could fill."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`SAFE_GLOBALS`: a pickle naming anything else (``os.system``,
    which pickles as ``posix.system``; ``builtins.eval``; ``subprocess.Popen``...) is refused at
    ``find_class``, before it can be called (:class:`UnsafePickle`). ``max_bytes``: what the arrays and byte
    arrays it builds may allocate in all (the file's size); a request beyond it is refused before it is made
    (:class:`PickleTooLarge`)."""

    def __init__(self, file, *, max_bytes: int | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = max_bytes

    def _spend(self, nbytes: int, what: str) -> None:
        if self.budget is None:
            return
        if nbytes > self.budget:
            raise PickleTooLarge(f"{what} of {nbytes} bytes, more than the file holds")
        self.budget -= nbytes

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise UnsafePickle(f"{module}.{name}")
        if _NUMPY_PRIVATE_CORE and module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        elif not _NUMPY_PRIVATE_CORE and module.startswith("numpy._core."):
            module = "numpy.core." + module[len("numpy._core."):]
        obj = super().find_class(module, name)
        if name == "_reconstruct":
            return self._reconstruct(obj)
        if (module, name) == ("builtins", "bytearray"):
            return self._bytearray
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayClass
        return obj

    def _reconstruct(self, real):
        def reconstruct(subtype, shape, dtype):
            if subtype is not _NdarrayClass:
                raise UnsafePickle(f"numpy reconstruction of {getattr(subtype, '__name__', type(subtype).__name__)}")
            try:
                n = int(np.prod(np.asarray(shape, dtype=np.int64), dtype=object)) if np.ndim(shape) else int(shape)
                nbytes = n * np.dtype(dtype).itemsize
            except (TypeError, ValueError, OverflowError):
                raise PickleTooLarge(f"an array of shape {shape!r}") from None
            self._spend(nbytes, f"an array of shape {tuple(int(d) for d in np.atleast_1d(shape))}")
            return real(np.ndarray, shape, dtype)

        return reconstruct

    def _bytearray(self, *args):
        if args and not isinstance(args[0], (bytes, bytearray, str)):
            raise PickleTooLarge(f"a bytearray built from {type(args[0]).__name__}")
        arr = bytearray(*args)
        self._spend(len(arr), "a bytearray")
        return arr


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` while a pickle is read: it may be passed to ``_reconstruct`` (which swaps
    the real class back), never called to allocate an array of a shape the pickle chose."""

    def __new__(cls, *args, **kwargs):
        raise UnsafePickle("numpy.ndarray called directly")


def _bad(where: str, received: str, todo: str = SAVE_HINT, *, expected: str = EXPECTED_FORMAT) -> ValueError:
    return input_error(where, received, todo, expected=expected)


def _read_header(f, where):
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        f.seek(0)
        head = f.read(4)
        kind = "a .npz (zip) archive" if head.startswith(b"PK") else "a file without the NumPy .npy signature"
        raise _bad(where, kind) from None
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    reader = getattr(np.lib.format, "_read_array_header", None)
    if reader is None:
        raise _bad(where, f".npy format version {version}", "Re-save it with a current NumPy.")
    return reader(f, version)


def read_caffe_npy(path, *, label: str = "--weights") -> dict[str, list[np.ndarray]]:
    """Read a Caffe weight dict from ``path`` without executing pickled code. Returns ``{layer: [W, b]}``
    (arrays only; a layer with one blob gets ``[W]``). Bad files raise ``ValueError`` (one line, prefixed
    ``"{label} {path}: "`` like the Keras h5 reader's)."""
    path = Path(path)
    where = input_where(path, label)
    size = regular_file_size(path, lambda received, todo: _bad(where, received, todo))
    with path.open("rb") as f:
        shape, _, dtype = _read_header(f, where)
        if not dtype.hasobject:
            raise _bad(where, f"a {dtype} array of shape {tuple(shape)}, not a dict")
        data = f.read(size)  # what is there, whatever lengths the pickle's opcodes declare
    try:
        for _ in pickletools.genops(io.BytesIO(data)):  # each counted length within the data, before any alloc
            pass
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise _bad(where, f"a truncated or corrupt pickle ({type(exc).__name__}: {text})") from None
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), max_bytes=size + ALLOCATION_SLACK).load()
    except UnsafePickle as exc:
        raise UnsafePickle(exc.global_name, where) from None
    except PickleTooLarge as exc:
        raise _bad(where, f"a pickle asking for {exc}", "Re-save the weights with np.save.") from None
    except (MemoryError, RecursionError) as exc:
        raise _bad(where, f"a pickle that cannot be read safely ({type(exc).__name__})",
                   "Re-save the weights with np.save.") from None
    except Exception as exc:  # truncated / corrupt stream: pickle raises many kinds
        text = " ".join(str(exc).split())[:160]
        raise _bad(where, f"a truncated or corrupt pickle ({type(exc).__name__}: {text})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise _bad(where, f"a pickled {type(obj).__name__}, not a dict")
    out = {}
    for name, blobs in obj.items():
        if isinstance(blobs, np.ndarray) and not blobs.dtype.hasobject:
            blobs = [blobs]
        if not isinstance(blobs, (list, tuple)) or not blobs or not all(
                isinstance(b, np.ndarray) and np.issubdtype(b.dtype, np.number) for b in blobs):
            raise _bad(where, f"{name!r} holds {type(blobs).__name__} "
                       f"{[type(b).__name__ for b in blobs] if isinstance(blobs, (list, tuple)) else ''}".rstrip(),
                       "Each layer must be [weights, bias] as numpy arrays.")
        out[str(name)] = [np.asarray(b) for b in blobs]
    return out


def save_caffe_npy(path, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Write ``{layer: [W, b]}`` the way Caffe dumps are written (``np.save`` of the dict), for round trips."""
    arr = np.empty((), dtype=object)
    arr[()] = {k: [np.asarray(b) for b in v] for k, v in weights.items()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    Path(path).write_bytes(buf.getvalue())
