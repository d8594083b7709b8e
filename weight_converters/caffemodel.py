"""Binary Caffe ``.caffemodel`` files -> ``{layer_name: [blob arrays]}``, pure Python + numpy, and back.

A ``.caffemodel`` is one serialized ``caffe.NetParameter`` (protocol buffers, proto2). This module decodes the
protobuf wire format itself (no ``protobuf`` package, no ``caffe_pb2``, no Caffe): varints, 64-bit,
length-delimited and 32-bit fields; every field it does not need (layer parameters, ``bottom``/``top``, ``diff``
blobs, solver state...) is skipped by its wire type without being interpreted. Groups (wire types 3 and 4, which
``caffe.proto`` never uses) are refused. Nothing in the file is executed or imported: the only outputs are
strings and numpy arrays built with ``np.frombuffer``.

Field numbers, from BVLC/caffe ``src/caffe/proto/caffe.proto`` (checked at commit 9b89154, 2020-02-13):

- ``NetParameter``: ``name = 1``, ``layers = 2`` (repeated ``V1LayerParameter``, the old format),
  ``layer = 100`` (repeated ``LayerParameter``, the current format);
- ``LayerParameter``: ``name = 1``, ``type = 2`` (string), ``blobs = 7``;
- ``V1LayerParameter``: ``name = 4``, ``type = 5`` (enum ``LayerType``), ``blobs = 6``; ``layer = 1`` holds the
  even older ``V0LayerParameter`` (refused: upgrade with Caffe's ``upgrade_net_proto_binary``);
- ``BlobProto``: ``num = 1``, ``channels = 2``, ``height = 3``, ``width = 4`` (int32, the deprecated 4-D shape),
  ``data = 5``, ``diff = 6`` (repeated float), ``shape = 7`` (``BlobShape``), ``double_data = 8``,
  ``double_diff = 9`` (repeated double); declared ``[packed = true]``, but unpacked encodings are accepted too,
  as protobuf parsers must;
- ``BlobShape``: ``dim = 1`` (repeated int64, packed or not).

Blob shape: ``shape.dim`` when the blob has a ``shape``, else the legacy ``(num, channels, height, width)``
(fields left unset count 0, as in Caffe's ``Blob::FromProto``). Legacy files store InnerProduct weights as
``(1, 1, out, in)`` and biases as ``(1, 1, 1, out)``; this reader keeps those 4-D shapes: dropping leading 1s
is a mapping decision (Caffe's ``Blob::ShapeEquals`` compares legacy shapes right-aligned), taken by the
GOTURN mapping in :mod:`weight_converters.goturn`, which records it in its report. Values: ``float32`` from
``data``, ``float64`` from ``double_data`` (which wins when both are present, as in ``Blob::FromProto``).

Every problem is a one-line ``ValueError`` (:func:`input_error`: ``"--weights PATH: expected ... Received: ...
<what to do>"``), the style every Caffe reader here shares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from weight_converters.files import input_error, input_where, regular_file_size

# --- Protobuf wire format ---------------------------------------------------------------------------------
WIRE_VARINT = 0
"""Wire type of int32/int64/uint/bool/enum fields: a base-128 varint."""
WIRE_FIXED64 = 1
"""Wire type of double/fixed64 fields: 8 bytes, little-endian."""
WIRE_LEN = 2
"""Wire type of strings, bytes, embedded messages and packed repeated scalars: a varint length, then the bytes."""
WIRE_START_GROUP = 3
"""Deprecated group start (proto2 ``group``); caffe.proto has none, so a file with one is refused."""
WIRE_END_GROUP = 4
"""Deprecated group end; refused like :data:`WIRE_START_GROUP`."""
WIRE_FIXED32 = 5
"""Wire type of float/fixed32 fields: 4 bytes, little-endian."""
MAX_VARINT_BYTES = 10
"""A varint encodes at most 64 bits: 10 bytes of 7 bits."""
MAX_FIELD_NUMBER = (1 << 29) - 1
"""The largest field number protobuf allows."""

# --- caffe.proto field numbers ----------------------------------------------------------------------------
NET_NAME_FIELD = 1
"""``NetParameter.name`` (string)."""
NET_V1_LAYERS_FIELD = 2
"""``NetParameter.layers``: repeated ``V1LayerParameter`` (deprecated format, e.g. the original CaffeNet file)."""
NET_LAYER_FIELD = 100
"""``NetParameter.layer``: repeated ``LayerParameter`` (current format)."""
LAYER_NAME_FIELD = 1
"""``LayerParameter.name`` (string)."""
LAYER_TYPE_FIELD = 2
"""``LayerParameter.type`` (string, e.g. ``"Convolution"``)."""
LAYER_BLOBS_FIELD = 7
"""``LayerParameter.blobs``: repeated ``BlobProto`` (the learned parameters, weights first)."""
V1_LAYER_V0_FIELD = 1
"""``V1LayerParameter.layer``: a ``V0LayerParameter`` (the oldest format, not read here)."""
V1_LAYER_NAME_FIELD = 4
"""``V1LayerParameter.name`` (string)."""
V1_LAYER_TYPE_FIELD = 5
"""``V1LayerParameter.type`` (enum ``V1LayerParameter.LayerType``, see :data:`V1_LAYER_TYPES`)."""
V1_LAYER_BLOBS_FIELD = 6
"""``V1LayerParameter.blobs``: repeated ``BlobProto``."""
BLOB_NUM_FIELD = 1
"""``BlobProto.num`` (int32, legacy 4-D shape, axis 0)."""
BLOB_CHANNELS_FIELD = 2
"""``BlobProto.channels`` (int32, legacy 4-D shape, axis 1)."""
BLOB_HEIGHT_FIELD = 3
"""``BlobProto.height`` (int32, legacy 4-D shape, axis 2)."""
BLOB_WIDTH_FIELD = 4
"""``BlobProto.width`` (int32, legacy 4-D shape, axis 3)."""
BLOB_LEGACY_FIELDS = (BLOB_NUM_FIELD, BLOB_CHANNELS_FIELD, BLOB_HEIGHT_FIELD, BLOB_WIDTH_FIELD)
"""The legacy shape fields in axis order."""
BLOB_DATA_FIELD = 5
"""``BlobProto.data``: repeated float, the values in C order."""
BLOB_DIFF_FIELD = 6
"""``BlobProto.diff``: repeated float, gradients (snapshots only; skipped)."""
BLOB_SHAPE_FIELD = 7
"""``BlobProto.shape`` (``BlobShape``)."""
BLOB_DOUBLE_DATA_FIELD = 8
"""``BlobProto.double_data``: repeated double, the values when the blob was saved in double precision."""
BLOB_DOUBLE_DIFF_FIELD = 9
"""``BlobProto.double_diff``: repeated double (skipped)."""
SHAPE_DIM_FIELD = 1
"""``BlobShape.dim``: repeated int64."""
MAX_BLOB_AXES = 32
"""``caffe/blob.hpp`` ``kMaxBlobAxes``: Caffe refuses blobs of more axes."""
LEGACY_AXES = 4
"""Axes of the legacy (num, channels, height, width) shape."""

V1_LAYER_TYPES = {
    "": 0, "AbsVal": 35, "Accuracy": 1, "ArgMax": 30, "BNLL": 2, "Concat": 3, "ContrastiveLoss": 37,
    "Convolution": 4, "Data": 5, "Deconvolution": 39, "Dropout": 6, "DummyData": 32, "EuclideanLoss": 7,
    "Eltwise": 25, "Exp": 38, "Flatten": 8, "HDF5Data": 9, "HDF5Output": 10, "HingeLoss": 28, "Im2col": 11,
    "ImageData": 12, "InfogainLoss": 13, "InnerProduct": 14, "LRN": 15, "MemoryData": 29,
    "MultinomialLogisticLoss": 16, "MVN": 34, "Pooling": 17, "Power": 26, "ReLU": 18, "Sigmoid": 19,
    "SigmoidCrossEntropyLoss": 27, "Silence": 36, "Softmax": 20, "SoftmaxWithLoss": 21, "Split": 22,
    "Slice": 33, "TanH": 23, "WindowData": 24, "Threshold": 31,
}
"""Current layer type name -> ``V1LayerParameter.LayerType`` number (caffe.proto's enum, named as Caffe's
``UpgradeV1LayerType`` in ``src/caffe/util/upgrade_proto.cpp`` names them)."""
V1_LAYER_TYPE_NAMES = {v: k for k, v in V1_LAYER_TYPES.items()}
"""``V1LayerParameter.LayerType`` number -> current layer type name."""

CAFFEMODEL_FORMAT = "expected a binary Caffe .caffemodel (a serialized caffe.NetParameter)"
"""What the reader expects, as its errors say it."""
RESAVE_HINT = "Re-download the .caffemodel or re-save it with Caffe (net.save(path))."
"""What to do about a file that is not a readable ``.caffemodel``."""
FILE_SIGNATURES = ((b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5?)"),
                   (b"PK\x03\x04", "a zip archive (.npz or torch .pt?)"),
                   (b"\x93NUMPY", "a NumPy .npy file"), (b"\x80", "a Python pickle"))
"""Leading bytes of formats users pass by mistake, named when the file does not parse."""


class CaffemodelFormatError(ValueError):
    """The bytes are not a readable ``NetParameter``: ``.received`` says what was found, ``.todo`` what to do.
    :func:`read_caffemodel` turns it into the one-line ``--weights PATH: expected ...`` message."""

    def __init__(self, received: str, todo: str = RESAVE_HINT):
        super().__init__(f"{CAFFEMODEL_FORMAT}. Received: {received}. {todo}")
        self.received = received
        self.todo = todo


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: ``name``, ``type`` (a V1 enum is given its current name), ``blobs``
    (arrays in file order, each in its shape) and ``v1`` (from the deprecated ``layers`` field)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    v1: bool = False


# --- Decoding ---------------------------------------------------------------------------------------------
def _truncated(what: str, pos: int, need: int, end: int) -> CaffemodelFormatError:
    return CaffemodelFormatError(f"a truncated or corrupt file ({what} at byte {pos} needs {need} bytes, "
                                 f"{max(end - pos, 0)} left)")


def _varint(buf, pos: int, end: int, what: str) -> tuple[int, int]:
    result = shift = 0
    start = pos
    for _ in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise CaffemodelFormatError(f"a truncated or corrupt file ({what}: a varint at byte {start} runs past "
                                        f"the end at byte {end})")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                break
            return result, pos
        shift += 7
    raise CaffemodelFormatError(f"a corrupt file ({what}: a varint at byte {start} longer than 64 bits)")


def _signed(value: int, bits: int) -> int:
    """Two's complement of a decoded varint as int32 / int64 (protobuf truncates int32 to 32 bits)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _next_field(buf, pos: int, end: int, what: str, names: Mapping[int, str] | None = None):
    """The field starting at ``pos``: ``(number, wire, payload, payload_start, next_pos)``; ``payload`` is the
    value of a varint, else ``None`` (the bytes are ``buf[payload_start:next_pos]``). ``names``: how errors
    name known fields (``{100: "layer #3"}``); others are ``field N``."""
    key, p = _varint(buf, pos, end, what)
    number, wire = key >> 3, key & 7
    if number == 0 or number > MAX_FIELD_NUMBER:
        raise CaffemodelFormatError(f"a corrupt file ({what}: field number {number} at byte {pos})")
    label = f"{what} {(names or {}).get(number, f'field {number}')}"
    if wire == WIRE_VARINT:
        value, nxt = _varint(buf, p, end, label)
        return number, wire, value, p, nxt
    if wire == WIRE_LEN:
        length, q = _varint(buf, p, end, f"{label} length")
        if length > end - q:
            raise _truncated(label, q, length, end)
        return number, wire, None, q, q + length
    if wire in (WIRE_FIXED32, WIRE_FIXED64):
        width = 4 if wire == WIRE_FIXED32 else 8
        if width > end - p:
            raise _truncated(label, p, width, end)
        return number, wire, None, p, p + width
    if wire in (WIRE_START_GROUP, WIRE_END_GROUP):
        raise CaffemodelFormatError(f"a protobuf group ({label} at byte {pos}, wire type {wire}), "
                                    "which caffe.proto never uses (a corrupt file or not a .caffemodel)")
    raise CaffemodelFormatError(f"a corrupt file ({what}: invalid wire type {wire} at byte {pos})")


def _wrong_wire(what: str, name: str, wire: int, pos: int) -> CaffemodelFormatError:
    return CaffemodelFormatError(f"a corrupt file ({what}: {name} with wire type {wire} at byte {pos})")


def _string(buf, start: int, stop: int, what: str) -> str:
    try:
        return bytes(buf[start:stop]).decode("utf-8")
    except UnicodeDecodeError:
        raise CaffemodelFormatError(f"a corrupt file ({what}: a string at byte {start} that is not UTF-8)") from None


def _fixed_run(buf, pos: int, end: int, tag_len: int, width: int) -> tuple[np.ndarray, int]:
    """Unpacked repeated float/double: consecutive ``tag + value`` records of the same field from ``pos`` (the
    first is known to be one), read vectorised. Returns the values' bytes as a (count, width) uint8 array and
    the position after the run. The window doubles while every record matches, so cost stays linear."""
    rec = tag_len + width
    tag = np.frombuffer(buf, np.uint8, count=tag_len, offset=pos)
    avail = (end - pos) // rec
    count, window = 0, 64
    while count < avail:
        take = min(window, avail - count)
        rows = np.frombuffer(buf, np.uint8, count=take * rec, offset=pos + count * rec).reshape(take, rec)
        same = (rows[:, :tag_len] == tag).all(axis=1)
        if same.all():
            count += take
            window *= 2
            continue
        count += int(np.argmin(same))
        break
    rows = np.frombuffer(buf, np.uint8, count=count * rec, offset=pos).reshape(count, rec)
    return np.ascontiguousarray(rows[:, tag_len:]), pos + count * rec


def _dims(buf, start: int, stop: int, what: str) -> list[int]:
    """A ``BlobShape``'s dims (packed or not)."""
    dims = []
    pos = start
    while pos < stop:
        number, wire, value, p, nxt = _next_field(buf, pos, stop, what)
        if number == SHAPE_DIM_FIELD:
            if wire == WIRE_VARINT:
                dims.append(_signed(value, 64))
            elif wire == WIRE_LEN:
                q = p
                while q < nxt:
                    v, q = _varint(buf, q, nxt, f"{what} packed dim")
                    dims.append(_signed(v, 64))
            else:
                raise _wrong_wire(what, "dim", wire, pos)
        pos = nxt
    return dims


_VALUE_FIELDS = {BLOB_DATA_FIELD: ("data", 4, WIRE_FIXED32), BLOB_DIFF_FIELD: ("diff", 4, WIRE_FIXED32),
                 BLOB_DOUBLE_DATA_FIELD: ("double_data", 8, WIRE_FIXED64),
                 BLOB_DOUBLE_DIFF_FIELD: ("double_diff", 8, WIRE_FIXED64)}


def _values(buf, chunks: list, dtype: str) -> np.ndarray:
    parts = []
    for chunk in chunks:
        if isinstance(chunk, np.ndarray):  # an unpacked run's value bytes
            parts.append(chunk.reshape(-1).view(dtype))
        else:
            start, stop = chunk
            parts.append(np.frombuffer(buf, dtype, count=(stop - start) // np.dtype(dtype).itemsize, offset=start))
    native = np.float32 if dtype == "<f4" else np.float64
    if not parts:
        return np.empty(0, native)
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]).astype(native, copy=True)


_BLOB_FIELD_NAMES = {BLOB_SHAPE_FIELD: "shape", **{n: v[0] for n, v in _VALUE_FIELDS.items()}}


def _blob(buf, start: int, stop: int, what: str) -> np.ndarray:
    legacy: dict[int, int] = {}
    dims = None
    chunks = {name: [] for name, _, _ in _VALUE_FIELDS.values()}
    pos = start
    while pos < stop:
        number, wire, value, p, nxt = _next_field(buf, pos, stop, what, _BLOB_FIELD_NAMES)
        if number in BLOB_LEGACY_FIELDS:
            if wire != WIRE_VARINT:
                raise _wrong_wire(what, f"legacy shape field {number}", wire, pos)
            legacy[number] = _signed(value, 32)
        elif number == BLOB_SHAPE_FIELD:
            if wire != WIRE_LEN:
                raise _wrong_wire(what, "shape", wire, pos)
            dims = (dims or []) + _dims(buf, p, nxt, f"{what} shape")  # a repeated message field merges
        elif number in _VALUE_FIELDS:
            name, width, fixed = _VALUE_FIELDS[number]
            if wire == WIRE_LEN:
                if (nxt - p) % width:
                    raise CaffemodelFormatError(f"a corrupt file ({what}: packed {name} of {nxt - p} bytes at byte "
                                                f"{p}, not a multiple of {width})")
                chunks[name].append((p, nxt))
            elif wire == fixed:
                run, nxt = _fixed_run(buf, pos, stop, p - pos, width)
                chunks[name].append(run)
            else:
                raise _wrong_wire(what, name, wire, pos)
        pos = nxt
    if dims is not None:
        shape = dims
        if legacy:  # Caffe itself would take the legacy dims; refuse a file where the two disagree
            old = [legacy.get(f, 0) for f in BLOB_LEGACY_FIELDS]
            if any(d < 0 for d in old) or math.prod(old) != math.prod(shape) or \
                    [d for d in old if d != 1] != [d for d in shape if d != 1]:
                raise CaffemodelFormatError(f"{what} with shape {tuple(shape)} and a different legacy shape "
                                            f"(num, channels, height, width) = {tuple(old)}")
    elif legacy:
        shape = [legacy.get(f, 0) for f in BLOB_LEGACY_FIELDS]
    else:
        shape = []
    if len(shape) > MAX_BLOB_AXES:
        raise CaffemodelFormatError(f"{what} with {len(shape)} axes (Caffe allows {MAX_BLOB_AXES})")
    if any(d < 0 for d in shape):
        raise CaffemodelFormatError(f"{what} with a negative dimension in shape {tuple(shape)}")
    if chunks["double_data"]:
        values = _values(buf, chunks["double_data"], "<f8")
        source = "double_data"
    else:
        values = _values(buf, chunks["data"], "<f4")
        source = "data"
    count = math.prod(shape)
    if values.size != count:
        raise CaffemodelFormatError(f"{what}: {values.size} {source} values for shape {tuple(shape)} "
                                    f"({count} expected)")
    return values.reshape(shape)


def _layer(buf, start: int, stop: int, index: int, v1: bool) -> CaffeLayer:
    name_field, type_field, blobs_field = ((V1_LAYER_NAME_FIELD, V1_LAYER_TYPE_FIELD, V1_LAYER_BLOBS_FIELD) if v1
                                           else (LAYER_NAME_FIELD, LAYER_TYPE_FIELD, LAYER_BLOBS_FIELD))
    what = f"{'V1 ' if v1 else ''}layer #{index}"
    name, kind, blobs = None, "", []
    blob_spans = []
    pos = start
    while pos < stop:
        number, wire, value, p, nxt = _next_field(buf, pos, stop, what, {blobs_field: f"blob {len(blob_spans)}"})
        if number == name_field:
            if wire != WIRE_LEN:
                raise _wrong_wire(what, "name", wire, pos)
            name = _string(buf, p, nxt, what)
            what = f"layer {name!r}"
        elif number == type_field:
            if v1:
                if wire != WIRE_VARINT:
                    raise _wrong_wire(what, "type", wire, pos)
                kind = V1_LAYER_TYPE_NAMES.get(value, f"V1 type {value}")
            else:
                if wire != WIRE_LEN:
                    raise _wrong_wire(what, "type", wire, pos)
                kind = _string(buf, p, nxt, what)
        elif number == blobs_field:
            if wire != WIRE_LEN:
                raise _wrong_wire(what, "blobs", wire, pos)
            blob_spans.append((p, nxt))
        elif v1 and number == V1_LAYER_V0_FIELD and wire == WIRE_LEN:
            raise CaffemodelFormatError(
                f"a V0-format net ({what} holds a V0LayerParameter)",
                "Upgrade it with Caffe's upgrade_net_proto_binary, then pass the upgraded file.")
        pos = nxt
    for i, (p, q) in enumerate(blob_spans):
        blobs.append(_blob(buf, p, q, f"{what} blob {i}"))
    return CaffeLayer(name if name is not None else "", kind, blobs, v1)


def _sniff(buf) -> str | None:
    head = bytes(buf[:512])
    for magic, kind in FILE_SIGNATURES:
        if head.startswith(magic):
            return kind
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return "a text file (a .prototxt or text-format net? the weights are in the binary .caffemodel)"
    return None


def parse_caffemodel(data) -> list[CaffeLayer]:
    """Decode a serialized ``NetParameter`` (``bytes``-like) into its layers, in file order, all of them (with
    or without blobs). Raises :class:`CaffemodelFormatError` (a ``ValueError``)."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    end = len(buf)
    if end == 0:
        raise CaffemodelFormatError("an empty file")
    try:
        layers: list[CaffeLayer] = []
        seen = set()
        pos = 0
        while pos < end:
            number, wire, value, p, nxt = _next_field(buf, pos, end, "NetParameter", {
                NET_LAYER_FIELD: f"layer #{len(layers)}", NET_V1_LAYERS_FIELD: f"V1 layer #{len(layers)}"})
            if number in (NET_LAYER_FIELD, NET_V1_LAYERS_FIELD):
                if wire != WIRE_LEN:
                    raise _wrong_wire("NetParameter", "layer", wire, pos)
                seen.add(number)
                layers.append(_layer(buf, p, nxt, len(layers), v1=number == NET_V1_LAYERS_FIELD))
            elif number == NET_NAME_FIELD and wire != WIRE_LEN:
                raise _wrong_wire("NetParameter", "name", wire, pos)
            pos = nxt
    except CaffemodelFormatError as exc:
        kind = _sniff(buf)
        if kind is None:
            raise
        raise CaffemodelFormatError(f"{kind} ({exc.received})", exc.todo) from None
    if len(seen) > 1:
        raise CaffemodelFormatError("a net with both 'layer' (current) and 'layers' (V1) fields, which Caffe "
                                    "refuses too", "Upgrade it with Caffe's upgrade_net_proto_binary.")
    return layers


def caffemodel_blobs(layers: Sequence[CaffeLayer]) -> dict[str, list[np.ndarray]]:
    """``{name: blobs}`` of the layers that have blobs; a nameless or twice-named layer with blobs is an
    error (which one's weights were meant is unknowable). Blobless layers (data, ReLU, a TRAIN and a TEST
    data layer sharing a name...) are left out."""
    out: dict[str, list[np.ndarray]] = {}
    for i, layer in enumerate(layers):
        if not layer.blobs:
            continue
        if not layer.name:
            raise CaffemodelFormatError(f"layer #{i} ({layer.type or 'no type'}) has {len(layer.blobs)} blobs but "
                                        "no name", "Name every layer that has weights.")
        if layer.name in out:
            raise CaffemodelFormatError(f"two layers named {layer.name!r} with blobs",
                                        "Rename one of them so each layer's weights have one name.")
        out[layer.name] = layer.blobs
    if not out:
        raise CaffemodelFormatError(f"a net of {len(layers)} layers, none with blobs (a net definition without "
                                    "weights?)", "Pass the trained .caffemodel.")
    return out


def read_caffemodel(path, *, label: str = "--weights") -> dict[str, list[np.ndarray]]:
    """Read ``path`` (a binary ``.caffemodel``) into ``{layer_name: [blob arrays]}`` in file order, each blob
    reshaped to its shape, ``float32`` (``float64`` for ``double_data`` blobs). Layers without blobs are left
    out. Bad files raise a one-line ``ValueError`` prefixed ``"{label} {path}: "``."""
    path = Path(path)
    where = input_where(path, label)
    regular_file_size(path, lambda received, todo: input_error(where, received, todo, expected=CAFFEMODEL_FORMAT))
    try:
        return caffemodel_blobs(parse_caffemodel(path.read_bytes()))
    except CaffemodelFormatError as exc:
        raise input_error(where, exc.received, exc.todo, expected=CAFFEMODEL_FORMAT) from None


# --- Encoding (round trips, tests) ------------------------------------------------------------------------
def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _enc_len(number: int, payload: bytes) -> bytes:
    return _enc_key(number, WIRE_LEN) + _enc_varint(len(payload)) + payload


def _enc_values(number: int, values: np.ndarray, packed: bool) -> bytes:
    width = values.dtype.itemsize
    raw = values.reshape(-1).view(np.uint8).reshape(-1, width)
    if packed:
        return _enc_len(number, raw.tobytes()) if raw.size else b""
    tag = np.frombuffer(_enc_key(number, WIRE_FIXED32 if width == 4 else WIRE_FIXED64), np.uint8)
    rows = np.empty((raw.shape[0], tag.size + width), np.uint8)
    rows[:, :tag.size] = tag
    rows[:, tag.size:] = raw
    return rows.tobytes()


def _enc_blob(arr: np.ndarray, legacy_v1: bool, packed: bool, what: str) -> bytes:
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{what}: expected a real numeric array. Received: dtype {arr.dtype}.")
    out = bytearray()
    if legacy_v1:
        if arr.ndim > LEGACY_AXES:
            raise ValueError(f"{what}: expected at most {LEGACY_AXES} axes for a V1 blob. Received: shape "
                             f"{arr.shape}. Write it with legacy_v1=False.")
        for number, dim in zip(BLOB_LEGACY_FIELDS, (1,) * (LEGACY_AXES - arr.ndim) + arr.shape):
            out += _enc_key(number, WIRE_VARINT) + _enc_varint(dim)
    else:
        dims = b"".join(_enc_varint(d) for d in arr.shape)
        shape = (_enc_len(SHAPE_DIM_FIELD, dims) if dims else b"") if packed else b"".join(
            _enc_key(SHAPE_DIM_FIELD, WIRE_VARINT) + _enc_varint(d) for d in arr.shape)
        out += _enc_len(BLOB_SHAPE_FIELD, shape)
    if arr.dtype == np.float64:
        out += _enc_values(BLOB_DOUBLE_DATA_FIELD, np.ascontiguousarray(arr, "<f8"), packed)
    else:
        out += _enc_values(BLOB_DATA_FIELD, np.ascontiguousarray(arr, "<f4"), packed)
    return bytes(out)


def encode_caffemodel(layers: Mapping[str, Sequence[np.ndarray]], types: Mapping[str, str] | None = None, *,
                      legacy_v1: bool = False, packed: bool = True, net_name: str = "") -> bytes:
    """Serialize ``{layer_name: [blobs]}`` as a ``NetParameter`` (see :func:`write_caffemodel`)."""
    types = dict(types or {})
    unknown = sorted(set(types) - set(layers))
    if unknown:
        raise ValueError(f"types: expected names of layers being written. Received: {unknown}. Drop them.")
    out = bytearray(_enc_len(NET_NAME_FIELD, net_name.encode()) if net_name else b"")
    for name, blobs in layers.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"layers: expected non-empty string names. Received: {name!r}. Name the layer.")
        kind = types.get(name, "")
        if legacy_v1:
            if kind not in V1_LAYER_TYPES:
                raise ValueError(f"types[{name!r}]: expected a layer type V1 files can hold "
                                 f"({', '.join(sorted(k for k in V1_LAYER_TYPES if k))}). Received: {kind!r}. "
                                 "Write it with legacy_v1=False.")
            msg = _enc_len(V1_LAYER_NAME_FIELD, name.encode())
            if kind:
                msg += _enc_key(V1_LAYER_TYPE_FIELD, WIRE_VARINT) + _enc_varint(V1_LAYER_TYPES[kind])
            blobs_field, layer_field = V1_LAYER_BLOBS_FIELD, NET_V1_LAYERS_FIELD
        else:
            msg = _enc_len(LAYER_NAME_FIELD, name.encode())
            if kind:
                msg += _enc_len(LAYER_TYPE_FIELD, kind.encode())
            blobs_field, layer_field = LAYER_BLOBS_FIELD, NET_LAYER_FIELD
        for i, blob in enumerate(blobs):
            msg += _enc_len(blobs_field, _enc_blob(blob, legacy_v1, packed, f"layers[{name!r}][{i}]"))
        out += _enc_len(layer_field, msg)
    return bytes(out)


def write_caffemodel(path, layers: Mapping[str, Sequence[np.ndarray]], types: Mapping[str, str] | None = None, *,
                     legacy_v1: bool = False, packed: bool = True) -> None:
    """Write ``{layer_name: [blobs]}`` as a binary ``.caffemodel`` that Caffe (and :func:`read_caffemodel`) reads:
    current-format ``LayerParameter`` with a ``BlobShape`` per blob by default; with ``legacy_v1`` the
    deprecated ``V1LayerParameter`` with (num, channels, height, width) right-aligned as old Caffe wrote them
    (an InnerProduct weight (out, in) becomes (1, 1, out, in), a bias (1, 1, 1, out)). ``types``: layer type
    names (``"Convolution"``, ``"InnerProduct"``); omitted when not given. ``float64`` arrays are written as
    ``double_data``, all others as ``float32`` ``data``. ``packed=False`` writes one field per value (the
    unpacked encoding protobuf parsers also accept)."""
    Path(path).write_bytes(encode_caffemodel(layers, types, legacy_v1=legacy_v1, packed=packed))
