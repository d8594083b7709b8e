"""Read Keras HDF5 weight files with h5py alone (no Keras, no TensorFlow, no torch, never pickle).

Two layouts, both verified against the installed Keras 3.15 source:

``legacy-h5`` (``keras/src/legacy/saving/legacy_h5_format.py``: ``save_model_to_hdf5``,
``save_weights_to_hdf5_group``, ``load_attributes_from_hdf5_group``): what Keras 2 wrote for
``model.save("x.h5")`` / ``model.save_weights("x.h5")`` and what Keras 3 still writes for ``model.save("x.h5")``
(oarriaga's trained mini_XCEPTION files are this layout, from Keras 2.0.5)::

    /                       attrs keras_version, backend, model_config (JSON), training_config (JSON)
    /model_weights          (the root itself for a weights-only save_weights("x.h5"))
        attrs layer_names = [layer, ...] in ``model.layers`` order (bytes in Keras 2, str in Keras 3;
              split into layer_names0, layer_names1, ... when over the 64 KiB attribute limit)
        /<layer>            attrs weight_names = ["conv2d_1/kernel:0", ...] (Keras 2) or ["c1/kernel"] (Keras 3)
            /<weight_name>  one dataset per weight name (the "/" in the name makes a subgroup)
        /top_level_model_weights   (Keras 3: variables owned by the model itself)
    /optimizer_weights      (full saves with a compiled model; not read)

``keras3-weights`` (``keras/src/saving/saving_lib.py``: ``_save_state``, ``_save_container_state``,
``H5IOStore``; ``Layer.save_own_variables`` in ``keras/src/layers/layer.py``): ``model.save_weights("x.weights.h5")``
and the ``model.weights.h5`` inside a ``.keras`` zip archive::

    /layers/<key>/vars      key = snake_case(class name) + "_<n>" counter in ``model.layers`` order
                            (conv2d, conv2d_1, ..., batch_normalization_10); attrs name = the layer's name
                            (recent Keras 3; older files lack it)
        /0, /1, ...         the layer's variables, trainable then non-trainable, in creation order
    /layers/<key>/layers/<key>/vars      nested models (keras.applications backbones), recursively
    /vars                   the model's own variables;  /optimizer/vars   optimizer state (not read)

Variable names are not stored in ``keras3-weights`` files: they come from the reference model's ``expected``
``{layer: {var: shape}}`` when it names that layer, else from the class key (:data:`KERAS3_VAR_ORDER`), else
from the number and rank of the arrays; every guess is recorded in :attr:`KerasWeightFile.assumptions`.

:func:`match_to_reference` pairs the file's layers with the reference's: by name where names agree, otherwise
(Keras 2 auto names ``conv2d_1``, ``batch_normalization_3`` against stable names) by order among layers of
the same variable signature, shapes checked, and the pairing written into the report.
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Mapping

import h5py
import numpy as np

from weight_converters.files import regular_file_size
from weight_converters.report import ConversionReport, check_values

#: The 8-byte HDF5 format signature; it sits at offset 0, or 512, 1024, 2048, ... after a user block.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
#: The weights member of a Keras 3 ``.keras`` archive (``saving_lib._VARS_FNAME + ".h5"``).
KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"

FORMAT_LEGACY = "legacy-h5"
FORMAT_KERAS3 = "keras3-weights"

#: Keras 3 variable order of ``layers/<key>/vars/<i>`` per layer kind (``add_weight`` order in
#: keras/src/layers/convolutional/base_conv.py, base_depthwise_conv.py, base_separable_conv.py,
#: core/dense.py, normalization/batch_normalization.py). Keras 3 names the depthwise kernel "kernel";
#: Keras 2 named it "depthwise_kernel" (:data:`DEPTHWISE_ALIASES`).
KERAS3_VAR_ORDER: dict[str, tuple[str, ...]] = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batchnorm": ("gamma", "beta", "moving_mean", "moving_variance"),
}
#: Keras 3 class key (``naming.to_snake_case(cls.__name__)``) -> kind of :data:`KERAS3_VAR_ORDER`.
CLASS_KEY_KINDS = {
    "conv1d": "conv2d", "conv2d": "conv2d", "conv3d": "conv2d", "conv1d_transpose": "conv2d",
    "conv2d_transpose": "conv2d", "conv3d_transpose": "conv2d",
    "depthwise_conv1d": "depthwise_conv2d", "depthwise_conv2d": "depthwise_conv2d",
    "separable_conv1d": "separable_conv2d", "separable_conv2d": "separable_conv2d",
    "dense": "dense", "batch_normalization": "batchnorm",
}
#: Legacy ``model_config`` class names -> kind (Keras 1/2/3 spellings).
CLASS_NAME_KINDS = {
    "Conv2D": "conv2d", "Convolution2D": "conv2d", "Conv1D": "conv2d", "Conv3D": "conv2d",
    "DepthwiseConv2D": "depthwise_conv2d", "SeparableConv2D": "separable_conv2d",
    "Dense": "dense", "BatchNormalization": "batchnorm",
}
#: A depthwise kernel is "depthwise_kernel" in Keras 2 (and inside SeparableConv2D) but "kernel" in a Keras 3
#: DepthwiseConv2D; a lone depthwise kernel is matched under either name.
DEPTHWISE_ALIASES = ("depthwise_kernel", "kernel")

#: The most a ``.keras`` archive's weights member may expand relative to the archive's size. Float weights barely
#: compress (a Keras 3 archive of trained weights measures ~1.1x); the limit leaves room for zero-filled arrays
#: and refuses a zip bomb after reading at most this many times the file's size.
KERAS_ARCHIVE_MAX_RATIO = 32
#: ... but never less than this (a small archive whose few arrays are zeros compresses far more)
KERAS_ARCHIVE_MIN_LIMIT = 64 << 20
#: DEFLATE's largest expansion (zlib technical details, zlib.net/zlib_tech.html: "1032:1"): a dataset stored with
#: a compression filter holds at most this many bytes per byte of the file; an unfiltered one at most the file
DEFLATE_MAX_RATIO = 1032
#: chunk size of the bounded read of an archive member
_READ_CHUNK = 1 << 20

_WHAT = "expected an HDF5 file with a 'model_weights' group or Keras 3 '.weights.h5' layout"
_DO = "Pass a file saved by model.save() or model.save_weights()."


class WeightFileError(ValueError):
    """The file is missing, not HDF5, corrupt, or has no Keras weights layout. One line: expected /
    received / what to do."""


class _Inconsistent(Exception):
    """Raised inside the readers; :func:`read_keras_h5` turns it into a :class:`WeightFileError`."""


@dataclass
class KerasWeightFile:
    """What :func:`read_keras_h5` found. ``layers``: ``{layer: {var: array}}`` of every layer holding
    variables, in file order (legacy: ``layer_names`` = ``model.layers`` order; keras3: by class key, then
    counter, which is ``model.layers`` order within a class). Arrays keep the file's dtype."""

    path: str
    format: str
    layers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    keras_version: str | None = None
    backend: str | None = None
    #: layer -> kind ("conv2d", "separable_conv2d", "batchnorm", ...) where the file says (class key, model_config)
    kinds: dict[str, str] = field(default_factory=dict)
    has_model_config: bool = False
    has_training_config: bool = False
    has_optimizer_weights: bool = False
    #: what the file contains beyond the weights, and how it was read
    notes: list[str] = field(default_factory=list)
    #: guesses the reader had to make (variable names inferred from shapes, ...); copied into the report
    assumptions: list[str] = field(default_factory=list)
    #: what reading may still allocate (bounded by the file's size); not part of the result
    budget: "_Budget | None" = field(default=None, repr=False, compare=False)

    def shapes(self) -> dict[str, dict[str, tuple]]:
        return {n: {v: tuple(a.shape) for v, a in vs.items()} for n, vs in self.layers.items()}

    def summary(self) -> str:
        n = sum(len(v) for v in self.layers.values())
        ver = f", keras {self.keras_version}" if self.keras_version else ""
        return f"{self.path}: {self.format}{ver}, {len(self.layers)} layers with weights, {n} arrays"


# --- Input checks -----------------------------------------------------------------------------------------
def _error(label: str, path: str, received: str, expected: str = _WHAT, do: str = _DO) -> WeightFileError:
    prefix = f"{label} {path}" if label else path
    return WeightFileError(f"{prefix}: {expected}. Received: {received}. {do}")


def _signature_offset(head: bytes, size: int) -> int | None:
    """Offset of the HDF5 signature (0 or a power of two >= 512: the user block), None if absent."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= min(size, len(head)):
        if head[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, label: str, path: str) -> bytes:
    """An archive member, read in chunks and refused as soon as it passes ``limit`` bytes (its declared size
    is checked first, but a zip's sizes can lie)."""
    info = zf.getinfo(name)
    what = (f"a .keras archive whose '{name}' expands to more than {limit / 1e6:.0f} MB "
            f"({KERAS_ARCHIVE_MAX_RATIO}x the archive)")
    do = f"Extract '{name}' from the archive (unzip) and pass that file."
    if info.file_size > limit:
        raise _error(label, path, what.replace("more than", f"{info.file_size / 1e6:.0f} MB, more than"), do=do)
    buf = io.BytesIO()
    with zf.open(info) as member:
        while True:
            chunk = member.read(_READ_CHUNK)
            if not chunk:
                break
            buf.write(chunk)
            if buf.tell() > limit:
                raise _error(label, path, what, do=do)
    return buf.getvalue()


def _open(path: str, label: str) -> tuple[h5py.File, list[str], int]:
    """Open ``path`` as HDF5 (or the weights member of a ``.keras`` zip), with one-line errors. Returns the
    file, notes and the size in bytes of the HDF5 data (what bounds every dataset read from it)."""
    size = regular_file_size(path, lambda received, do: _error(
        label, path, received, do=("Check the path; " + _DO[0].lower() + _DO[1:]) if do == "Check the path." else
        _DO if received.startswith("a directory") else do))
    with open(path, "rb") as fh:
        head = fh.read(min(size, 1 << 20))
    notes: list[str] = []
    if head[:4] == ZIP_SIGNATURE:
        limit = max(KERAS_ARCHIVE_MIN_LIMIT, KERAS_ARCHIVE_MAX_RATIO * size)
        try:
            with zipfile.ZipFile(path) as zf:
                if KERAS_ARCHIVE_WEIGHTS not in zf.namelist():
                    raise _error(label, path, f"a zip archive without '{KERAS_ARCHIVE_WEIGHTS}' "
                                              f"(members: {', '.join(zf.namelist()[:5])})")
                data = _read_member(zf, KERAS_ARCHIVE_WEIGHTS, limit, label, path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as e:
            raise _error(label, path, f"a truncated or corrupt zip archive ({_short(e)})",
                         do="Re-save or re-download the file.") from None
        notes.append(f"read '{KERAS_ARCHIVE_WEIGHTS}' from the .keras archive")
        path_or_io: str | io.BytesIO = io.BytesIO(data)
        head, size = data[:1 << 20], len(data)
    else:
        path_or_io = path
    if size == 0:
        raise _error(label, path, "an empty file (0 bytes)", do="Re-save or re-download the file.")
    if _signature_offset(head, size) is None:
        raise _error(label, path, "a file without an HDF5 signature")
    try:
        return h5py.File(path_or_io, "r"), notes, size
    except (OSError, RuntimeError, ValueError) as e:
        raise _error(label, path, f"a truncated or corrupt HDF5 file (h5py: {_short(e)})",
                     expected="expected a readable HDF5 file",
                     do="Re-save or re-download the file.") from None


class _Budget:
    """What the datasets of one file may allocate in all: its size for unfiltered storage,
    :data:`DEFLATE_MAX_RATIO` times its size for compressed storage. A dataset that declares more (a header
    saying 512 TiB) is refused before a byte is allocated."""

    def __init__(self, size: int):
        self.size = size
        self.used = 0

    def read(self, d, where: str) -> np.ndarray:
        if not isinstance(d, h5py.Dataset):
            raise _Inconsistent(f"{where} is a {type(d).__name__}, not a dataset")
        if d.dtype.kind not in "fiub":
            raise _Inconsistent(f"{where} holds {d.dtype} values, not numbers")
        nbytes = int(np.prod(d.shape, dtype=object)) * d.dtype.itemsize if d.shape is not None else 0
        bound = self.size * (DEFLATE_MAX_RATIO if d.compression or _filtered(d) else 1)
        if self.used + nbytes > max(bound, 1 << 16):
            raise _Inconsistent(f"{where} declares shape {tuple(d.shape)} ({_bytes(nbytes)}), more than a "
                                f"{_bytes(self.size)} file can hold")
        self.used += nbytes
        return np.array(d)


def _filtered(d) -> bool:
    try:
        return d.id.get_create_plist().get_nfilters() > 0
    except Exception:  # pragma: no cover - h5py without the low-level API
        return True


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


# --- Attribute helpers ------------------------------------------------------------------------------------
def _text(v) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf8")
    return str(v)


def _attr_text(*groups, name: str) -> str | None:
    for g in groups:
        if g is not None and name in g.attrs:
            return _text(g.attrs[name])
    return None


def _attr_list(group, name: str) -> list[str]:
    """``load_attributes_from_hdf5_group``: a string list, possibly chunked as name0, name1, ..."""
    if name in group.attrs:
        return [_text(n) for n in np.atleast_1d(group.attrs[name])]
    out, i = [], 0
    while f"{name}{i}" in group.attrs:
        out += [_text(n) for n in np.atleast_1d(group.attrs[f"{name}{i}"])]
        i += 1
    return out


def _natural_key(name: str):
    """``batch_normalization_10`` after ``batch_normalization_9``: Keras' counter order."""
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return (m.group(1), int(m.group(2) or 0), name)


# --- Variable names ---------------------------------------------------------------------------------------
def _names_from_kind(kind: str, arrays: list[np.ndarray]) -> list[str] | None:
    order = KERAS3_VAR_ORDER[kind]
    n = len(arrays)
    if kind == "batchnorm":
        if n == 4:
            return list(order)
        if n == 2:
            return ["moving_mean", "moving_variance"]
        return None  # 3: scale=False or center=False cannot be told apart
    if kind == "separable_conv2d":
        return list(order[:n]) if n in (2, 3) else None
    return list(order[:n]) if n in (1, 2) else None


def _kind_from_shapes(arrays: list[np.ndarray]) -> str | None:
    nd = [a.ndim for a in arrays]
    if nd in ([4], [4, 1]):
        return "conv2d"
    if nd in ([4, 4], [4, 4, 1]):
        return "separable_conv2d"
    if nd in ([2], [2, 1]):
        return "dense"
    if nd == [1, 1, 1, 1] and len({a.shape for a in arrays}) == 1:
        return "batchnorm"
    return None


def _names_from_expected(want: Mapping[str, tuple], arrays: list[np.ndarray]) -> list[str] | None:
    """Index -> name from the reference's variables of this layer: canonical Keras order where the names
    are a known kind's, else the order ``expected`` lists them in. Shapes must agree."""
    names = list(want)
    if len(names) != len(arrays):
        return None
    for order in KERAS3_VAR_ORDER.values():
        if set(names) <= set(order):
            names = [v for v in order if v in names]
            break
    if all(tuple(want[v]) == tuple(a.shape) for v, a in zip(names, arrays)):
        return names
    return None


def _keras3_var_names(layer: str, class_key: str, arrays: list[np.ndarray],
                      expected: Mapping[str, Mapping[str, tuple]] | None,
                      assumptions: list[str]) -> tuple[list[str], str | None]:
    if expected and layer in expected:
        names = _names_from_expected(expected[layer], arrays)
        if names is not None:
            return names, CLASS_KEY_KINDS.get(class_key)
    kind = CLASS_KEY_KINDS.get(class_key)
    if kind is not None:
        names = _names_from_kind(kind, arrays)
        if names is not None:
            return names, kind
        if kind == "batchnorm" and len(arrays) == 3:
            assumptions.append(f"{layer}: BatchNormalization with 3 variables read as beta, moving_mean, "
                               "moving_variance (scale=False); pass the reference's expected shapes to be sure")
            return ["beta", "moving_mean", "moving_variance"], kind
    guess = _kind_from_shapes(arrays)
    if guess is not None:
        names = _names_from_kind(guess, arrays)
        if names is not None:
            assumptions.append(f"{layer}: class '{class_key}' unknown; variables named {names} from their ranks "
                               f"({guess})")
            return names, guess
    assumptions.append(f"{layer}: class '{class_key}' unknown and shapes "
                       f"{[tuple(a.shape) for a in arrays]} ambiguous; variables kept as indices 0..{len(arrays) - 1}")
    return [str(i) for i in range(len(arrays))], None


# --- Layout readers ---------------------------------------------------------------------------------------
def _read_legacy(f: h5py.File, group: h5py.Group, out: KerasWeightFile) -> None:
    """``load_weights_from_hdf5_group``: layers from ``layer_names``, arrays from each ``weight_names``."""
    config_kinds: dict[str, str] = {}
    if "model_config" in f.attrs:
        out.has_model_config = True
        try:
            cfg = json.loads(_text(f.attrs["model_config"]))
            for layer in cfg.get("config", {}).get("layers", []):
                kind = CLASS_NAME_KINDS.get(layer.get("class_name"))
                name = layer.get("config", {}).get("name") or layer.get("name")
                if kind and name:
                    config_kinds[name] = kind
        except (ValueError, AttributeError, TypeError):
            out.notes.append("model_config present but not valid JSON (architecture not read)")
    out.has_training_config = "training_config" in f.attrs
    out.has_optimizer_weights = "optimizer_weights" in f
    names = _attr_list(group, "layer_names")
    if "top_level_model_weights" in group:
        names.append("top_level_model_weights")
    keras2_names = False
    for lname in names:
        if lname not in group:
            raise _Inconsistent(f"layer_names lists {lname!r} but the file has no such group")
        g = group[lname]
        wnames = _attr_list(g, "weight_names")
        if not wnames:
            continue
        # A nested model (Keras 2 keras.applications backbone) is one group whose weights belong to
        # several layers: "block1_conv1/kernel:0", "block1_conv2/kernel:0", ...
        owners = list(dict.fromkeys(w.split("/")[-2] if "/" in w else lname for w in wnames))
        nested = len(owners) > 1
        # an inner layer named like an outer one is kept as "<model>/<layer>"
        rename = {o: f"{lname}/{o}" if o in out.layers else o for o in owners}
        for w in wnames:
            if w not in g:
                raise _Inconsistent(f"layer {lname!r} lists weight {w!r} but the file has no such dataset")
            parts = w.split("/")
            keras2_names |= parts[-1].endswith(":0")
            var = parts[-1].split(":")[0]
            owner = rename[parts[-2] if len(parts) > 1 else lname] if nested else lname
            layer = out.layers.setdefault(owner, {})
            if var in layer:
                out.assumptions.append(f"{owner}: two weights named {var!r}; the second kept as {var}_1")
                var = f"{var}_1"
            layer[var] = out.budget.read(g[w], f"dataset {lname}/{w}")
        if not nested and lname in config_kinds:
            out.kinds[lname] = config_kinds[lname]
        if nested:
            out.notes.append(f"nested model {lname!r} read as {len(owners)} layers ({', '.join(owners[:4])}"
                             f"{', ...' if len(owners) > 4 else ''})")
    if keras2_names:
        out.notes.append("Keras 2 weight names 'layer/var:0' read as var")


def _walk_keras3(group: h5py.Group, path: str, entries: list) -> None:
    """Every ``<path>/vars`` group with datasets, depth first, children in Keras' counter order."""
    for key in sorted(group.keys(), key=_natural_key):
        child = group[key]
        if not isinstance(child, h5py.Group) or key == "vars":
            continue
        sub = f"{path}/{key}"
        if "vars" in child and isinstance(child["vars"], h5py.Group):
            entries.append((sub, _natural_key(key)[0], child["vars"]))
        _walk_keras3(child, sub, entries)


def _read_keras3(f: h5py.File, out: KerasWeightFile, expected) -> None:
    entries: list[tuple[str, str, h5py.Group]] = []
    containers = [k for k in ("layers", "_layer_checkpoint_dependencies") if k in f]
    for k in containers:
        _walk_keras3(f[k], k, entries)
    if "vars" in f and len(f["vars"]):
        entries.append(("vars", "top_level_model_weights", f["vars"]))
    for key in f.keys():
        if key in ("layers", "_layer_checkpoint_dependencies", "vars"):
            continue
        n = sum(1 for _ in _iter_datasets(f[key])) if isinstance(f[key], h5py.Group) else 1
        if key == "optimizer":
            out.has_optimizer_weights = True
            out.notes.append(f"optimizer state present ({n} arrays, not read)")
        else:
            out.notes.append(f"group '{key}' ({n} arrays) not read")
    unnamed = 0
    for path, class_key, vars_group in entries:
        keys = sorted(vars_group.keys(), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        arrays = [out.budget.read(vars_group[k], f"dataset {path}/vars/{k}") for k in keys]
        if not arrays:
            continue
        name = _text(vars_group.attrs["name"]) if "name" in vars_group.attrs else None
        if name is None:
            unnamed += 1
            name = path.split("/", 1)[1] if "/" in path else path
        elif name in out.layers:
            name = f"{path}:{name}"
            out.assumptions.append(f"two layers named {name.split(':')[-1]!r}; the second kept as {name!r}")
        if all(k.isdigit() for k in keys):
            var_names, kind = _keras3_var_names(name, class_key, arrays, expected, out.assumptions)
        else:
            var_names, kind = keys, CLASS_KEY_KINDS.get(class_key)
        out.layers[name] = dict(zip(var_names, arrays))
        if kind:
            out.kinds[name] = kind
    if unnamed:
        out.notes.append(f"{unnamed} layers carry no 'name' attribute (an older Keras 3 file): named by class key "
                         "(conv2d_1, ...), matched to the reference by order")


def _iter_datasets(group: h5py.Group):
    for v in group.values():
        if isinstance(v, h5py.Dataset):
            yield v
        elif isinstance(v, h5py.Group):
            yield from _iter_datasets(v)


def read_keras_h5(path: str | os.PathLike, expected: Mapping[str, Mapping[str, tuple]] | None = None, *,
                  label: str = "--weights") -> KerasWeightFile:
    """Read every weight array of a Keras HDF5 file (either layout, see the module docstring).

    ``expected``: the reference model's ``{layer: {var: shape}}`` in ``model.layers`` order; names the
    variables of ``keras3-weights`` files (which store indices only). ``label`` prefixes error messages
    (the CLI option the path came from). Raises :class:`WeightFileError` for a missing, non-HDF5,
    corrupt or unrecognised file.
    """
    spath = os.fspath(path)
    f, notes, size = _open(spath, label)
    try:
        with f:
            mw = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else None
            legacy_root = mw if mw is not None else f
            if "layer_names" in legacy_root.attrs or "layer_names0" in legacy_root.attrs:
                out = KerasWeightFile(spath, FORMAT_LEGACY, notes=notes, budget=_Budget(size))
                out.keras_version = _attr_text(f, mw, name="keras_version")
                out.backend = _attr_text(f, mw, name="backend")
                out.notes.append("full-model HDF5 (model.save)" if mw is not None
                                 else "weights-only HDF5 (model.save_weights to .h5)")
                _read_legacy(f, legacy_root, out)
            elif any(k in f for k in ("layers", "_layer_checkpoint_dependencies", "vars")):
                out = KerasWeightFile(spath, FORMAT_KERAS3, notes=notes, budget=_Budget(size))
                _read_keras3(f, out, expected)
            elif mw is not None:
                raise _error(label, spath, "an HDF5 file whose 'model_weights' group has no 'layer_names' attribute")
            else:
                keys = list(f.keys())
                raise _error(label, spath, f"an HDF5 file with top-level keys {keys[:6]}" if keys
                             else "an HDF5 file with no groups")
    except _Inconsistent as e:
        raise _error(label, spath, f"an inconsistent file: {e}", expected="expected a consistent Keras weights file",
                     do="Re-save or re-download the file.") from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, MemoryError, RecursionError) as e:
        if isinstance(e, WeightFileError):
            raise
        raise _error(label, spath, f"a truncated or corrupt HDF5 file (h5py: {_short(e)})",
                     expected="expected a readable HDF5 file", do="Re-save or re-download the file.") from None
    if out.has_model_config:
        out.notes.append("model_config present (architecture not read: the reference model is built in code)")
    if out.has_training_config:
        out.notes.append("training_config present (not read)")
    if out.has_optimizer_weights and out.format == FORMAT_LEGACY:
        out.notes.append("optimizer_weights present (not read)")
    dtypes = sorted({str(a.dtype) for vs in out.layers.values() for a in vs.values()})
    if dtypes:
        out.notes.append(f"arrays stored as {', '.join(dtypes)}")
    return out


# --- Matching a file to the reference model ---------------------------------------------------------------
def _signature(vars_: Mapping[str, object]) -> tuple:
    """Variable names and ranks, the depthwise kernel under one name (Keras 2 and 3 differ)."""
    names = set(vars_)
    sig = []
    for v, a in vars_.items():
        rank = len(a) if isinstance(a, (tuple, list)) else np.ndim(a)
        if v == "depthwise_kernel" and "pointwise_kernel" not in names:
            v = "kernel"
        sig.append((v, rank))
    return tuple(sorted(sig))


def _align_var_names(file_vars: dict[str, np.ndarray], want: Mapping[str, tuple],
                     report: ConversionReport) -> dict[str, np.ndarray]:
    """Rename a lone depthwise kernel to the reference's spelling ("kernel" in Keras 3, "depthwise_kernel"
    in Keras 2)."""
    if "pointwise_kernel" in file_vars or "pointwise_kernel" in want:
        return file_vars
    for have, need in (DEPTHWISE_ALIASES, DEPTHWISE_ALIASES[::-1]):
        if have in file_vars and need in want and need not in file_vars and have not in want:
            report.convention(f"DepthwiseConv2D kernel: file '{have}' = reference '{need}' "
                              "(Keras 2 'depthwise_kernel', Keras 3 'kernel')")
            return {(need if v == have else v): a for v, a in file_vars.items()}
    return file_vars


def match_to_reference(file: KerasWeightFile, expected: Mapping[str, Mapping[str, tuple]], *,
                       strict: bool = False) -> tuple[dict[str, dict[str, np.ndarray]], ConversionReport]:
    """Pair the file's layers with the reference's ``expected`` ``{layer: {var: shape}}``.

    By name where the names agree. The rest (Keras 2 auto names against stable names, an older Keras 3 file
    without layer names) by order: among layers of the same signature (variable names and ranks), the i-th
    in the file goes to the i-th in ``expected`` when both sides have the same count; the pairing is written
    into ``report.assumptions``. ``expected`` must therefore list layers in ``model.layers`` order, which is
    the order of both layouts. Every paired array is checked for shape and finiteness.

    Returns ``({reference_layer: {var: array}}, report)``; a shape-mismatched array is still returned (and
    listed), a missing one is not. ``strict`` raises :class:`ConversionError` on any problem.
    """
    report = ConversionReport(direction=f"{file.format}->keras")
    report.convention(f"read {file.format} file" + (f" (keras {file.keras_version})" if file.keras_version else ""))
    for a in file.assumptions:
        report.assume(a)
    want_layers = {n: v for n, v in expected.items() if v}
    have_layers = {n: v for n, v in file.layers.items() if v}
    pairs: dict[str, str] = {n: n for n in want_layers if n in have_layers}

    rest_want = [n for n in want_layers if n not in pairs]
    taken = set(pairs.values())
    rest_have = [n for n in have_layers if n not in taken]
    by_order: list[tuple[str, str]] = []
    ambiguous: list[str] = []
    if rest_want and rest_have:
        groups: dict[tuple, tuple[list[str], list[str]]] = {}
        for n in rest_want:
            groups.setdefault(_signature(want_layers[n]), ([], []))[0].append(n)
        for n in rest_have:
            groups.setdefault(_signature(have_layers[n]), ([], []))[1].append(n)
        for sig, (want_names, have_names) in groups.items():
            if not want_names or not have_names:
                continue
            if len(want_names) != len(have_names):
                report.assume(f"not matched by order: {len(have_names)} layers with variables "
                              f"{[v for v, _ in sig]} in the file, {len(want_names)} in the reference")
                continue
            for w, h in zip(want_names, have_names):
                pairs[w] = h
                by_order.append((h, w))
            shapes = [tuple(a.shape for a in have_layers[h].values()) for h in have_names]
            dup = [h for h, s in zip(have_names, shapes) if shapes.count(s) > 1]
            ambiguous += dup
        if by_order:
            order = {w: i for i, w in enumerate(want_layers)}
            by_order.sort(key=lambda p: order[p[1]])
            report.assume("layers matched by order (the file's layer names differ from the reference's; "
                          "i-th file layer of a kind -> i-th reference layer of that kind, shapes checked): "
                          + ", ".join(f"{h!r} -> {w!r}" for h, w in by_order))
            if ambiguous:
                report.assume(f"{len(ambiguous)} of these layers share their shapes with another of the same kind "
                              f"({', '.join(repr(a) for a in ambiguous[:4])}{', ...' if len(ambiguous) > 4 else ''}): "
                              "only the file order tells them apart; the forward stage confirms the pairing")

    out: dict[str, dict[str, np.ndarray]] = {}
    for ref, want in want_layers.items():
        src = pairs.get(ref)
        if src is None:
            report.missing += [f"{ref}/{v}" for v in want]
            continue
        have = _align_var_names(have_layers[src], want, report)
        layer_out: dict[str, np.ndarray] = {}
        for var, shape in want.items():
            if var not in have:
                report.missing.append(f"{ref}/{var}")
                continue
            a = have[var]
            if tuple(a.shape) != tuple(shape):
                report.shape_mismatches.append((f"{ref}/{var}", tuple(shape), tuple(a.shape)))
            check_values(f"{ref}/{var}", var, a, report)
            layer_out[var] = a
            report.mapped.append((f"{src}/{var}", f"{ref}/{var}", ""))
        report.unexpected += [f"{src}/{v}" for v in have if v not in want]
        if layer_out:
            out[ref] = layer_out
    used = set(pairs.values())
    for n, vars_ in have_layers.items():
        if n not in used:
            report.unexpected += [f"{n}/{v}" for v in vars_]
    if strict:
        report.raise_if_failed()
    return out, report


def load_keras_weights(path: str | os.PathLike, expected: Mapping[str, Mapping[str, tuple]], *,
                       strict: bool = False, label: str = "--weights",
                       ) -> tuple[dict[str, dict[str, np.ndarray]], ConversionReport]:
    """:func:`read_keras_h5` then :func:`match_to_reference`: the ``PairSpec.weights_loader`` for Keras files.
    Returns the reference's ``{layer: {var: array}}`` and the report (which the caller judges)."""
    return match_to_reference(read_keras_h5(path, expected, label=label), expected, strict=strict)


# --- Writer -----------------------------------------------------------------------------------------------
_KIND_CLASS_KEY = {"conv2d": "conv2d", "depthwise_conv2d": "depthwise_conv2d",
                   "separable_conv2d": "separable_conv2d", "dense": "dense", "batchnorm": "batch_normalization"}


def _kind_of(vars_: Mapping[str, np.ndarray]) -> str | None:
    names = set(vars_)
    if "pointwise_kernel" in names:
        return "separable_conv2d"
    if "depthwise_kernel" in names:
        return "depthwise_conv2d"
    if names & {"gamma", "beta", "moving_mean", "moving_variance"}:
        return "batchnorm"
    if "kernel" in names:
        return "conv2d" if np.ndim(vars_["kernel"]) >= 3 else "dense"
    return None


def write_keras3_weights_h5(path: str | os.PathLike, layers: Mapping[str, Mapping[str, np.ndarray]],
                            kinds: Mapping[str, str] | None = None) -> None:
    """Write ``{layer: {var: array}}`` in the Keras 3 ``.weights.h5`` layout (``layers/<class key>/vars/<i>``,
    ``name`` attribute = layer name). ``layers`` must be in ``model.layers`` order and contain every layer
    that has variables, so that Keras' per-class counters give the same keys ``model.load_weights`` looks
    up. ``kinds``: ``{layer: kind}`` where the variable names do not tell (a Keras 3 DepthwiseConv2D's
    "kernel")."""
    counters: dict[str, int] = {}
    with h5py.File(os.fspath(path), "w") as f:
        root = f.create_group("layers")
        for name, vars_ in layers.items():
            kind = (kinds or {}).get(name) or _kind_of(vars_)
            if kind is None:
                raise ValueError(f"layer {name!r}: expected variables of a conv2d, depthwise_conv2d, "
                                 f"separable_conv2d, dense or batchnorm layer. Received: {sorted(vars_)}. "
                                 "Pass kinds={layer: kind}.")
            base = _KIND_CLASS_KEY[kind]
            n = counters.get(base, 0)
            counters[base] = n + 1
            key = base if n == 0 else f"{base}_{n}"
            order = [v for v in KERAS3_VAR_ORDER[kind] if v in vars_]
            if kind == "depthwise_conv2d" and "depthwise_kernel" in vars_:
                order = ["depthwise_kernel"] + [v for v in order if v == "bias"]
            extra = [v for v in vars_ if v not in order]
            if extra:
                raise ValueError(f"layer {name!r} ({kind}): expected variables among {KERAS3_VAR_ORDER[kind]}. "
                                 f"Received also: {extra}.")
            g = root.create_group(key).create_group("vars")
            g.attrs["name"] = name
            for i, v in enumerate(order):
                g[str(i)] = np.asarray(vars_[v])
        f.create_group("vars")
