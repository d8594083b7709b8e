"""Caffe weights, pure numpy: reading a file by its content, and what any Caffe -> Keras / torch mapping needs.

Two file formats, told apart by content (:func:`read_caffe_weights`), neither able to run code:

- a binary Caffe ``.caffemodel`` (davheld/GOTURN's ``tracker.caffemodel``, BVLC's CaffeNet), current or V1
  format, decoded by :mod:`weight_converters.caffemodel` (a protobuf reader of its own, no Caffe);
- a NumPy ``.npy`` dict ``{"conv1": [W, b], ...}`` (nrupatunga/goturn-pytorch and most Caffe -> numpy dumps),
  read by :mod:`weight_converters.npy_safe` without unpickling anything but arrays and plain containers.

Layouts (Caffe's blobs are torch's layouts, so the torch side is a copy):

=================  =================================  ==============================================
Caffe blob         Keras reference                    torch port
=================  =================================  ==============================================
Convolution W      kernel HWIO: transpose(2, 3, 1, 0)  weight OIHW as is (grouped: (out, in/g, kh, kw))
InnerProduct W     kernel (in, out), rows HWC: W.T     weight (out, in) as is (CHW, nn.Flatten)
                   with rows reordered CHW -> HWC
bias               bias                               bias
=================  =================================  ==============================================

A network's own names and streams (GOTURN's ``conv1`` / ``conv1_p``, ``fc6-new``...) live with its mapping, in
:mod:`weight_converters.goturn`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weight_converters.caffemodel import read_caffemodel
from weight_converters.files import input_error, input_where, regular_file_size
from weight_converters.npy_safe import NUMPY_MAGIC, read_caffe_npy
from weight_converters.report import ConversionReport, check_values

CONV_OIHW_TO_HWIO = "Caffe Convolution weight OIHW -> Keras kernel HWIO (transpose 2,3,1,0)"
IP_TO_DENSE = "Caffe InnerProduct weight (out,in) -> Keras Dense kernel (in,out) (transpose)"
IP_FLATTEN = "InnerProduct input order: Caffe CHW flatten -> Keras HWC Flatten (rows reordered)"
CAFFE_IS_TORCH = "Caffe blobs are torch's layouts (OIHW, (out,in) over a CHW flatten): copied as is"
CAFFE_WEIGHTS_FORMAT = "expected a Caffe .caffemodel or .npy weight dict"

#: Reshape-vs-transpose guard: a layer whose per-output-unit norms are this many times more spread out when
#: the matrix is read back as a reshaped (in, out) kernel than as given is flagged.
RESHAPE_GUARD_RATIO = 4.0
#: Smallest side of a matrix the guard judges (per-unit statistics over fewer units are noise).
RESHAPE_GUARD_MIN_UNITS = 16


def read_caffe_weights(path, *, label: str = "--weights") -> dict[str, list[np.ndarray]]:
    """Read Caffe weights from ``path`` by content: a file that starts with :data:`NUMPY_MAGIC` is a pickled
    ``.npy`` dict (:func:`weight_converters.npy_safe.read_caffe_npy`), any other a binary ``.caffemodel``
    (:func:`weight_converters.caffemodel.read_caffemodel`). Neither runs anything from the file. Returns
    ``{layer: [blobs]}``; bad files (a directory or a named pipe too) raise a one-line ``ValueError`` prefixed
    ``"{label} {path}: "``."""
    path = Path(path)
    where = input_where(path, label)
    regular_file_size(path, lambda received, todo: input_error(where, received, todo,
                                                               expected=CAFFE_WEIGHTS_FORMAT))
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


def caffe_shape(kind: str, var: str, keras_shape):
    """The Caffe blob shape a reference variable of ``keras_shape`` needs (for checks in the file's terms)."""
    if keras_shape is None or var == "bias":
        return keras_shape
    if kind == "conv":
        kh, kw, cin, cout = keras_shape
        return (cout, cin, kh, kw)
    n_in, n_out = keras_shape
    return (n_out, n_in)


def check_blob(report: ConversionReport, key: str, arr: np.ndarray, want) -> bool:
    """Shape against ``want`` (a mismatch is recorded, False), then values (NaN / inf recorded)."""
    if want is not None and tuple(arr.shape) != tuple(want):
        report.shape_mismatches.append((key, tuple(want), tuple(arr.shape)))
        return False
    check_values(key, "", arr, report)
    return True


