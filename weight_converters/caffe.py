"""Caffe weights -> the GOTURN Keras reference (and torch port) layouts. Pure numpy.

Two file formats, told apart by content (:func:`read_caffe_weights`), neither able to run code:

- a binary Caffe ``.caffemodel`` (davheld/GOTURN's ``tracker.caffemodel``, BVLC's CaffeNet), current or V1
  format, decoded by :mod:`weight_converters.caffemodel` (a protobuf reader of its own, no Caffe);
- a NumPy ``.npy`` dict, read with :func:`read_caffe_npy` (below).

The ``.npy`` format (nrupatunga/goturn-pytorch and most Caffe -> numpy dumps): one ``np.save`` of a dict
``{"conv1": [W, b], ..., "conv5": [W, b]}``, ``W`` in Caffe's blob layout (OIHW for Convolution, (out, in) for
InnerProduct, in C, H, W order after a flatten), ``b`` (out,). Such a file is a *pickle* inside a ``.npy``:
``np.load`` with pickles allowed would run any code the pickle names. :func:`read_caffe_npy` never does:
it reads the ``.npy`` header with NumPy's format reader and unpickles with :class:`RestrictedUnpickler`,
which resolves only what arrays and plain containers need and refuses every other global before anything
runs.

GOTURN names (``parity.pairs.goturn``): the target stream's convs are ``conv1..conv5``, the image stream's
``conv1_p..conv5_p``; GOTURN initialises *both* streams from one set of CaffeNet convs, so a file with only
``conv1..conv5`` fills both. The fully connected layers are ``fc6-new``, ``fc7-new``, ``fc7-newb``, ``fc8-shapes``;
when absent (the usual CaffeNet-only file) they keep the reference's initialisation (an assumption in the
report, not an error). CaffeNet's own ImageNet classifier (``fc6``, ``fc7``, ``fc8``) is ignored, as GOTURN does.
Legacy (V1) files store InnerProduct weights as (1, 1, out, in) and biases as (1, 1, 1, out); the mapping drops
those leading 1s (:data:`LEGACY_BLOB_SQUEEZE`, an assumption in the report), as Caffe's ``Blob::ShapeEquals``
reads legacy shapes right-aligned.

Layouts (Caffe's blobs are torch's layouts, so the torch side is a copy):

=================  =================================  ==============================================
Caffe blob         Keras reference                    torch port
=================  =================================  ==============================================
Convolution W      kernel HWIO: transpose(2, 3, 1, 0)  weight OIHW as is (grouped: (out, in/g, kh, kw))
InnerProduct W     kernel (in, out), rows HWC: W.T     weight (out, in) as is (CHW, nn.Flatten)
                   with rows reordered CHW -> HWC
bias               bias                               bias
=================  =================================  ==============================================
"""
from __future__ import annotations

import importlib.util
import io
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from weight_converters.keras import (conv_kernel_to_keras, conv_kernel_to_torch, dense_kernel_to_keras,
                                     dense_kernel_to_torch)
from weight_converters.report import ConversionError, ConversionReport

EXPECTED_FORMAT = ("expected a .npy holding a dict of numpy arrays ({'conv1': [W (OIHW), b], ...}, saved with "
                   "np.save(path, weights_dict))")

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

CONV_OIHW_TO_HWIO = "Caffe Convolution weight OIHW -> Keras kernel HWIO (transpose 2,3,1,0)"
IP_TO_DENSE = "Caffe InnerProduct weight (out,in) -> Keras Dense kernel (in,out) (transpose)"
IP_FLATTEN = "InnerProduct input order: Caffe CHW flatten -> Keras HWC Flatten (rows reordered)"
CAFFE_IS_TORCH = "Caffe blobs are torch's layouts (OIHW, (out,in) over a CHW flatten): copied as is"
BOTH_STREAMS = ("image stream (conv1_p..conv5_p) not in file: initialised from conv1..conv5, as GOTURN "
                "initialises both streams from CaffeNet")

LEGACY_BLOB_SQUEEZE = ("legacy 4-D blobs squeezed to their layer's rank (leading 1s dropped, as Caffe's "
                       "Blob::ShapeEquals reads legacy shapes): InnerProduct (1,1,out,in) -> (out,in), "
                       "bias (1,1,1,out) -> (out,)")
"""Assumption recorded when :func:`squeeze_legacy_blobs` reshapes a blob (V1 files, old Caffe -> numpy dumps)."""
NUMPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every ``.npy`` file (``np.lib.format.MAGIC_PREFIX``): such a file goes to
:func:`read_caffe_npy`, any other to the ``.caffemodel`` reader."""

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
STREAM_SUFFIX = {"target": "", "image": "_p"}
"""Caffe name suffix of each stream's layers (tracker.prototxt: ``conv1`` / ``conv1_p``)."""
FC_CAFFE_NAMES = {"fc6": "fc6-new", "fc7": "fc7-new", "fc7b": "fc7-newb", "fc8": "fc8-shapes"}
"""Reference layer -> Caffe layer name (tracker.prototxt), mirrored from ``parity.pairs.goturn.CAFFE_FC_NAMES``."""
CAFFENET_CLASSIFIER = ("fc6", "fc7", "fc8")
"""CaffeNet's ImageNet classifier layers: present in full CaffeNet dumps, replaced in GOTURN."""

#: Reshape-vs-transpose guard: a layer whose per-output-unit norms are this many times more spread out when
#: the matrix is read back as a reshaped (in, out) kernel than as given is flagged.
RESHAPE_GUARD_RATIO = 4.0
#: Smallest side of a matrix the guard judges (per-unit statistics over fewer units are noise).
RESHAPE_GUARD_MIN_UNITS = 16


# --- Safe reading -----------------------------------------------------------------------------------------
_NUMPY_PRIVATE_CORE = importlib.util.find_spec("numpy._core") is not None
"""numpy >= 2 keeps ``multiarray`` under ``numpy._core`` (``numpy.core`` is a deprecated shim); numpy 1.x only
under ``numpy.core``. Pickles name whichever wrote them; both are resolved to the installed one."""


class UnsafePickle(ValueError):
    """The pickle names a global outside :data:`SAFE_GLOBALS`; ``.global_name`` is ``module.name``."""

    def __init__(self, global_name: str, where: str = ""):
        super().__init__(f"{where + ': ' if where else ''}expected a .npy holding a dict of numpy arrays. Received: a pickle that "
                         f"references {global_name}. Re-save the weights with numpy arrays only.")
        self.global_name = global_name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`SAFE_GLOBALS`: a pickle naming anything else (``os.system``,
    which pickles as ``posix.system``; ``builtins.eval``; ``subprocess.Popen``...) is refused at
    ``find_class``, before it can be called (:class:`UnsafePickle`)."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise UnsafePickle(f"{module}.{name}")
        if _NUMPY_PRIVATE_CORE and module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        elif not _NUMPY_PRIVATE_CORE and module.startswith("numpy._core."):
            module = "numpy.core." + module[len("numpy._core."):]
        return super().find_class(module, name)


SAVE_HINT = "Save the weights with np.save(path, {'conv1': [W, b], ...})."


def _where(path, label: str) -> str:
    """Message prefix, as the Keras h5 reader writes it: ``--weights path`` (``label`` empty: the path alone)."""
    return f"{label} {path}" if label else str(path)


def _bad(where: str, received: str, todo: str = SAVE_HINT, *, expected: str = EXPECTED_FORMAT) -> ValueError:
    return ValueError(f"{where}: {expected}. Received: {received}. {todo}")


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
    where = _where(path, label)
    if not path.is_file():
        raise _bad(where, "no such file", "Check the path.")
    with path.open("rb") as f:
        shape, _, dtype = _read_header(f, where)
        if not dtype.hasobject:
            raise _bad(where, f"a {dtype} array of shape {tuple(shape)}, not a dict")
        try:
            obj = RestrictedUnpickler(f).load()
        except UnsafePickle as exc:
            raise UnsafePickle(exc.global_name, where) from None
        except Exception as exc:  # truncated / corrupt stream: pickle raises many kinds
            raise _bad(where, f"a truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
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


def read_caffe_weights(path, *, label: str = "--weights") -> dict[str, list[np.ndarray]]:
    """Read Caffe weights from ``path`` by content: a file that starts with :data:`NUMPY_MAGIC` is a pickled
    ``.npy`` dict (:func:`read_caffe_npy`), any other a binary ``.caffemodel``
    (:func:`weight_converters.caffemodel.read_caffemodel`). Neither runs anything from the file. Returns
    ``{layer: [blobs]}``; bad files raise a one-line ``ValueError`` prefixed ``"{label} {path}: "``."""
    from weight_converters.caffemodel import read_caffemodel  # it imports this module's message helpers

    path = Path(path)
    if not path.is_file():
        raise _bad(_where(path, label), "no such file", "Check the path.",
                   expected="expected a Caffe .caffemodel or .npy weight dict")
    with path.open("rb") as f:
        head = f.read(len(NUMPY_MAGIC))
    if head == NUMPY_MAGIC:
        return read_caffe_npy(path, label=label)
    return read_caffemodel(path, label=label)


# --- Reshape-instead-of-transpose guard -------------------------------------------------------------------
def _unit_norm_spread(m: np.ndarray) -> float:
    """Coefficient of variation of the row norms of ``m`` (out, in): how different the output units are."""
    norms = np.sqrt(np.square(m.astype(np.float64)).sum(axis=1))
    mean = norms.mean()
    return float(norms.std() / mean) if mean > 0 else 0.0


def looks_reshaped(w: np.ndarray) -> str | None:
    """Whether an (out, in) InnerProduct weight looks like an (in, out) kernel passed through
    ``np.reshape(k, (out, in))`` instead of ``k.T``. Returns the evidence, or None.

    Trained (and deliberately structured) layers differ from unit to unit, so the norms of the true output
    units spread out; a reshape scatters every unit over all rows, and the row norms become alike. The guard
    compares the spread of row norms as given with the spread after undoing a reshape
    (``w.reshape(in, out).T``): flagged when the latter is :data:`RESHAPE_GUARD_RATIO` times larger and well
    above the noise of i.i.d. weights (``1/sqrt(2 in)``). It cannot judge square matrices (a reshape is then
    the identity, the mistake is a missing transpose) nor fewer than :data:`RESHAPE_GUARD_MIN_UNITS` units."""
    if w.ndim != 2:
        return None
    out, n_in = w.shape
    if out == n_in or min(out, n_in) < RESHAPE_GUARD_MIN_UNITS:
        return None
    given = _unit_norm_spread(w)
    undone = _unit_norm_spread(np.ascontiguousarray(w).reshape(n_in, out).T)
    noise = 1.0 / math.sqrt(2 * n_in)
    if undone > RESHAPE_GUARD_RATIO * max(given, noise):
        return (f"per-unit weight norms spread {undone:.3g} when read as a reshaped (in,out) kernel vs {given:.3g} "
                "as given")
    return None


@dataclass
class CaffeConversionReport(ConversionReport):
    """A :class:`ConversionReport` with ``suspicious``: layers whose values (not keys or shapes) look wrong,
    e.g. an InnerProduct weight that was reshaped instead of transposed. Any entry makes the report fail."""

    suspicious: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return super().ok and not self.suspicious

    def problems(self) -> list[str]:
        return self.suspicious + super().problems()

    def merge(self, other):
        super().merge(other)
        self.suspicious += list(getattr(other, "suspicious", []))
        return self


# --- GOTURN mapping ---------------------------------------------------------------------------------------
def _infer_flatten_chw(expected, fc6_in: int) -> tuple[int, int, int]:
    channels = sum(int(expected[f"{s}_conv5"]["kernel"][3]) for s in STREAM_SUFFIX if f"{s}_conv5" in expected)
    hw = fc6_in // channels if channels else 0
    side = math.isqrt(hw)
    if not channels or channels * hw != fc6_in or side * side != hw:
        raise ValueError(f"fc6: expected its {fc6_in} inputs to be {channels or '2 x conv5'} channels x a square "
                         f"pool5. Received: no such square. Pass flatten_chw=(C, H, W).")
    return channels, side, side


def _caffe_shape(kind: str, var: str, keras_shape):
    """The Caffe blob shape a reference variable of ``keras_shape`` needs (for checks in the file's terms)."""
    if keras_shape is None or var == "bias":
        return keras_shape
    if kind == "conv":
        kh, kw, cin, cout = keras_shape
        return (cout, cin, kh, kw)
    n_in, n_out = keras_shape
    return (n_out, n_in)


def _check(report, key, arr, want):
    if want is not None and tuple(arr.shape) != tuple(want):
        report.shape_mismatches.append((key, tuple(want), tuple(arr.shape)))
        return False
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        report.nonfinite.append(key)
    return True


def squeeze_legacy_blobs(caffe: Mapping[str, list[np.ndarray]]) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Drop the leading 1s of legacy 4-D blobs of GOTURN's layers: fc weights (1, 1, out, in) -> (out, in), conv
    and fc biases (1, 1, 1, out) -> (out,). Blobs with other leading dims are left for the shape check to report.
    Returns the dict (arrays not copied) and ``"layer/blob (old shape)"`` for each squeezed blob."""
    fc = set(FC_CAFFE_NAMES.values())
    convs = {c + s for c in CONV_NAMES for s in STREAM_SUFFIX.values()}
    out, squeezed = dict(caffe), []
    for name, blobs in caffe.items():
        if name not in fc and name not in convs:
            continue
        new = list(blobs)
        for i, blob in enumerate(blobs[:2]):
            rank = 1 if i == 1 else 2 if name in fc else 4
            lead = blob.shape[:max(blob.ndim - rank, 0)]
            if lead and all(d == 1 for d in lead):
                new[i] = blob.reshape(blob.shape[len(lead):])
                squeezed.append(f"{name}/{'bias' if i else 'weight'} {tuple(blob.shape)}")
        out[name] = new
    return out, squeezed


def _squeeze_into(caffe, report):
    caffe, squeezed = squeeze_legacy_blobs(caffe)
    if squeezed:
        report.assume(f"{LEGACY_BLOB_SQUEEZE}: {', '.join(squeezed)}")
    return caffe


def goturn_from_caffe(caffe: Mapping[str, list[np.ndarray]], expected: Mapping[str, Mapping[str, tuple]], *,
                      flatten_chw: tuple[int, int, int] | None = None,
                      ) -> tuple[dict[str, dict[str, np.ndarray]], CaffeConversionReport]:
    """Map a Caffe weight dict to the Keras reference's ``{layer: {var: array}}``. ``expected`` is the
    reference's ``{layer: {var: shape}}``; ``flatten_chw`` the (C, H, W) fc6 flattens (default: inferred from
    ``expected``, 2 x conv5 channels and a square pool5). Problems go to the report; raises only when fc6 is in
    the file and its flatten geometry can be neither inferred nor was given."""
    report = CaffeConversionReport(direction="caffe->keras")
    caffe = _squeeze_into(caffe, report)
    out: dict[str, dict[str, np.ndarray]] = {}
    used = set()

    def put(layer, caffe_name, blobs, kind):
        want = expected.get(layer)
        if want is None:
            report.unexpected.append(f"{caffe_name} (-> {layer}: not in the reference)")
            return
        if len(blobs) != len(want):
            report.shape_mismatches.append((f"{caffe_name} blobs (-> {layer})", (len(want),), (len(blobs),)))
            return
        conv = {}
        for var, blob in zip(("kernel", "bias"), blobs):
            caffe_var = "weight" if var == "kernel" else "bias"
            key = f"{caffe_name}/{caffe_var} (-> {layer}/{var})"
            if not _check(report, key, blob, _caffe_shape(kind, var, want.get(var))):
                continue
            if var == "bias":
                arr = np.array(blob, copy=True)
            elif kind == "conv":
                arr = conv_kernel_to_keras(blob)
                report.convention(CONV_OIHW_TO_HWIO)
            else:
                chw = None
                if layer == "fc6":
                    chw = flatten_chw or _infer_flatten_chw(expected, blob.shape[1])
                    report.convention(f"{IP_FLATTEN} (C,H,W)={tuple(chw)}")
                evidence = looks_reshaped(blob)
                if evidence:
                    report.suspicious.append(f"{layer} weight looks reshaped, not transposed ({caffe_name}: "
                                             f"{evidence}); convert an (in,out) kernel with .T, not np.reshape")
                arr = dense_kernel_to_keras(blob, chw)
                report.convention(IP_TO_DENSE)
            conv[var] = arr
            report.mapped.append((f"{caffe_name}/{caffe_var}", f"{layer}/{var}", ""))
        if conv:
            out[layer] = conv

    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            layer = f"{stream}_{conv}"
            name = conv + suffix
            if name in caffe:
                put(layer, name, caffe[name], "conv")
                used.add(name)
            elif suffix and conv in caffe:
                put(layer, conv, caffe[conv], "conv")
                report.assume(BOTH_STREAMS)
            elif layer in expected:
                report.missing += [f"{layer}/{v} (<- {name})" for v in expected[layer]]
    used.update(CONV_NAMES)
    absent = []
    for layer, caffe_name in FC_CAFFE_NAMES.items():
        if caffe_name in caffe:
            put(layer, caffe_name, caffe[caffe_name], "fc")
            used.add(caffe_name)
        elif layer in expected:
            absent.append(layer)
    if absent:
        report.assume(f"{', '.join(absent)} ({', '.join(FC_CAFFE_NAMES[a] for a in absent)}) not in file: kept from "
                      "the reference's initialisation")
    ignored = [n for n in CAFFENET_CLASSIFIER if n in caffe and n not in used]
    if ignored:
        report.assume(f"ignored CaffeNet classifier layer(s) {', '.join(ignored)}: GOTURN replaces them with "
                      "fc6-new .. fc8-shapes")
        used.update(ignored)
    report.unexpected += [f"{n} (no GOTURN layer of that name)" for n in caffe if n not in used]
    return out, report


def goturn_caffe_to_torch(caffe: Mapping[str, list[np.ndarray]], expected: Mapping[str, tuple],
                          ) -> tuple[dict[str, np.ndarray], CaffeConversionReport]:
    """Map a Caffe weight dict to the torch port's state_dict keys (``target.conv1.weight``, ``fc6.weight``...):
    the layouts are Caffe's, so arrays are copied. ``expected``: the port's ``{key: shape}``."""
    report = CaffeConversionReport(direction="caffe->torch")
    report.convention(CAFFE_IS_TORCH)
    caffe = _squeeze_into(caffe, report)
    out: dict[str, np.ndarray] = {}
    sources = {}
    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            name = conv + suffix
            if name not in caffe and suffix and conv in caffe:
                report.assume(BOTH_STREAMS)
                name = conv
            sources[f"{stream}.{conv}"] = name
    sources.update({layer: caffe_name for layer, caffe_name in FC_CAFFE_NAMES.items()})
    used = set()
    absent = []
    for module, name in sources.items():
        if name not in caffe:
            if f"{module}.weight" in expected:
                (absent if module in FC_CAFFE_NAMES else report.missing).append(module)
            continue
        used.add(name)
        for suffix, blob in zip(("weight", "bias"), caffe[name]):
            key = f"{module}.{suffix}"
            if suffix == "weight" and module in FC_CAFFE_NAMES and (evidence := looks_reshaped(blob)):
                report.suspicious.append(f"{module} weight looks reshaped, not transposed ({name}: {evidence})")
            if _check(report, key, blob, expected.get(key)):
                out[key] = np.array(blob, copy=True)
                report.mapped.append((f"{name}/{suffix}", key, ""))
    if absent:
        report.assume(f"{', '.join(absent)} not in file: kept from the port's initialisation")
    report.unexpected += [n for n in caffe if n not in used and n not in CAFFENET_CLASSIFIER]
    return out, report


# --- PairSpec.weights_loader --------------------------------------------------------------------------------
def load_goturn_weights(path, expected: Mapping[str, Mapping[str, tuple]], *, strict: bool = True,
                        flatten_chw: tuple[int, int, int] | None = None, label: str = "--weights",
                        ) -> tuple[dict[str, dict[str, np.ndarray]], CaffeConversionReport]:
    """``PairSpec.weights_loader`` of the GOTURN pair: read ``path`` safely (:func:`read_caffe_weights`: a
    ``.caffemodel`` or a ``.npy`` dict), map it to the Keras reference (``expected`` = its
    ``{layer: {var: shape}}``). Strict (default) raises :class:`ConversionError` (a ``ValueError``, with
    ``.report``) on missing convs, unknown layers, shape mismatches, non-finite values or a suspicious layer;
    fc layers absent from the file are allowed."""
    weights, report = goturn_from_caffe(read_caffe_weights(path, label=label), expected, flatten_chw=flatten_chw)
    if strict and not report.ok:
        probs = report.problems()
        more = f" (+{len(probs) - 3} more)" if len(probs) > 3 else ""
        raise ConversionError(f"{_where(path, label)}: {report.summary()}: {'; '.join(probs[:3])}{more}", report)
    return weights, report


def goturn_to_caffe(weights: Mapping[str, Mapping[str, np.ndarray]], flatten_chw: tuple[int, int, int],
                    ) -> dict[str, list[np.ndarray]]:
    """Inverse of :func:`goturn_from_caffe`: reference ``{layer: {var: array}}`` -> Caffe ``{name: [W, b]}`` with
    both streams (``conv1`` / ``conv1_p``) and the fc layers under their tracker.prototxt names."""
    out = {}
    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            layer = weights.get(f"{stream}_{conv}")
            if layer is not None:
                out[conv + suffix] = [conv_kernel_to_torch(layer["kernel"]), np.array(layer["bias"], copy=True)]
    for layer_name, caffe_name in FC_CAFFE_NAMES.items():
        layer = weights.get(layer_name)
        if layer is not None:
            chw = flatten_chw if layer_name == "fc6" else None
            out[caffe_name] = [dense_kernel_to_torch(layer["kernel"], chw), np.array(layer["bias"], copy=True)]
    return out


def save_caffe_npy(path, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Write ``{layer: [W, b]}`` the way Caffe dumps are written (``np.save`` of the dict), for round trips."""
    arr = np.empty((), dtype=object)
    arr[()] = {k: [np.asarray(b) for b in v] for k, v in weights.items()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    Path(path).write_bytes(buf.getvalue())
