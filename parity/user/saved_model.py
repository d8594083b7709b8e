"""``--reference FILE``: a saved Keras model as a reference, with its own trained weights.

Three kinds of file: a Keras 3 ``.keras`` archive and a Keras 3 ``.h5`` are loaded by
``keras.saving.load_model`` as they are. A Keras 2-era full-model ``.h5`` (``model.save("m.h5")`` in Keras
2.0–2.x: root attributes ``keras_version``, ``model_config``, ``training_config``, groups ``model_weights`` and
``optimizer_weights``) is read through the same Keras 3 legacy HDF5 loader after its ``model_config`` JSON was
rewritten, as data, into the form that loader accepts (:func:`keras3_model_config`); its weights are then set
from the file's ``model_weights`` by :mod:`weight_converters.h5` (by layer name, Keras 2 ``:0`` suffixes and
auto names handled, every array checked for shape and finiteness).

Nothing named in the file is executed beyond Keras' own deserialisation under ``safe_mode=True``: a ``Lambda``
layer (marshalled Python bytecode in Keras 2 files) is refused. The optimizer state is not loaded
(``compile=False``); the file's training configuration is read as JSON by
:func:`parity.optim.user.training_config_from_file`.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from typing import Any

from parity.core.errors import UsageError
from weight_converters.h5 import WeightFileError, match_to_reference, read_keras_h5

#: Keras 2.0.x–2.2.2 saved a ``Sequential`` model's config as the bare list of its layers; Keras 2.2.3 and Keras 3
#: expect ``{"name": ..., "layers": [...]}`` (keras-team/keras ``keras/engine/sequential.py`` ``get_config``,
#: before and after 2.2.3). The name Keras 3 gives it when the file has none:
KERAS2_SEQUENTIAL_NAME = "sequential"

#: Keras 2 gave a Sequential's implicit input the first layer's name plus this suffix (keras-team/keras 2.x
#: ``keras/models.py`` ``Sequential.add``); Keras 3's legacy loader turns a first layer's ``batch_input_shape``
#: into an ``input_shape`` that keeps the batch axis, so the input is made an explicit ``InputLayer`` instead.
KERAS2_SEQUENTIAL_INPUT_SUFFIX = "_input"

#: Keras 2 layer-config keys Keras 3 renamed (keras-team/keras ``keras/src/layers/activations/leaky_relu.py``:
#: ``alpha`` -> ``negative_slope``, still read under the old name with a deprecation warning), per layer class.
KERAS2_LAYER_KEYS = {"LeakyReLU": {"alpha": "negative_slope"}}


class SavedModelError(UsageError):
    """A saved model that cannot be a reference (the CLI exits 2 with this one line)."""


def keras_version_of(path: str) -> str | None:
    """The ``keras_version`` root attribute of an HDF5 file (``None`` for a ``.keras`` archive or none stored)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get("keras_version")
    except OSError:
        return None
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def is_keras2_file(path: str) -> bool:
    """An HDF5 full-model file written by Keras 1 or 2 (its ``keras_version`` is below 3)."""
    v = keras_version_of(path)
    return bool(v) and v.split(".")[0].isdigit() and int(v.split(".")[0]) < 3


def keras3_model_config(cfg: dict) -> tuple[dict, list[str]]:
    """A Keras 2 ``model_config`` rewritten (a copy; pure JSON) into what Keras 3's legacy HDF5 loader accepts,
    and the rewrites made (one line each). What that loader already reads (``batch_input_shape``,
    ``inbound_nodes`` as nested lists, ``L1L2`` regularisers, ``VarianceScaling`` initialisers, ``Model``) is
    left as it is."""
    cfg = copy.deepcopy(cfg)
    done: list[str] = []

    def fix_model(m: dict) -> None:
        if m.get("class_name") == "Sequential" and isinstance(m.get("config"), list):
            m["config"] = {"name": KERAS2_SEQUENTIAL_NAME, "layers": m["config"]}
            done.append("Sequential config: the Keras 2 list of layers -> {name, layers}")
        inner = m.get("config")
        if m.get("class_name") == "Sequential" and isinstance(inner, dict) and inner.get("layers"):
            first = inner["layers"][0]
            fc = first.get("config") if isinstance(first, dict) else None
            if isinstance(fc, dict) and first.get("class_name") != "InputLayer" and "batch_input_shape" in fc:
                shape = fc.pop("batch_input_shape")
                name = f"{fc.get('name', 'layer')}{KERAS2_SEQUENTIAL_INPUT_SUFFIX}"
                inner["layers"].insert(0, {"class_name": "InputLayer", "config": {
                    "batch_shape": shape, "dtype": fc.get("dtype", "float32"), "name": name}})
                done.append(f"Sequential: the first layer's batch_input_shape -> an InputLayer {name!r}")
        for layer in (inner.get("layers") or []) if isinstance(inner, dict) else []:
            if not isinstance(layer, dict):
                continue
            if layer.get("class_name") in ("Sequential", "Model", "Functional"):
                fix_model(layer)
                continue
            renames = KERAS2_LAYER_KEYS.get(layer.get("class_name"), {})
            lc = layer.get("config") or {}
            for old, new in renames.items():
                if old in lc and new not in lc:
                    lc[new] = lc.pop(old)
                    done.append(f"{layer.get('class_name')} {lc.get('name', '')}: {old} -> {new}")

    fix_model(cfg)
    return cfg, done


def _read_model_config(path: str) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        raise SavedModelError(f"--reference {path}: expected a full model saved by Keras (model.save(\"m.h5\")). "
                              "Received: an HDF5 file without a model_config (weights only?). Build the model "
                              "with a builder (--reference MOD:FN) and pass this file with --weights.")
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def _load_keras2(path: str, custom_objects: dict[str, Any]):
    """Build the model from the rewritten config with Keras' legacy loader (a temporary copy holding the
    rewritten ``model_config`` and the ``model_weights``), then set every weight from the file by name."""
    import h5py
    import keras

    cfg, _ = keras3_model_config(_read_model_config(path))
    with tempfile.TemporaryDirectory(prefix="parity-keras2-") as tmp:
        copy_path = os.path.join(tmp, "model.h5")
        with h5py.File(path, "r") as src, h5py.File(copy_path, "w") as dst:
            for k, v in src.attrs.items():
                if k != "training_config":
                    dst.attrs[k] = v
            dst.attrs["model_config"] = json.dumps(cfg).encode()
            src.copy(src["model_weights"], dst, "model_weights")
        model = keras.saving.load_model(copy_path, custom_objects=custom_objects, compile=False, safe_mode=True)
    set_weights_from_file(model, path)
    return model


def _expected(model) -> dict[str, dict[str, tuple]]:
    out: dict[str, dict[str, tuple]] = {}
    for layer in model.layers:
        if layer.weights:
            out[layer.name] = {w.name: tuple(w.shape) for w in layer.weights}
    return out


def set_weights_from_file(model, path: str) -> None:
    """Every weight of ``model`` from the HDF5 file's ``model_weights`` (:mod:`weight_converters.h5`: by name,
    Keras 2 auto names by order, each array checked); a missing, extra or mis-shaped array is refused."""
    import numpy as np

    expected = _expected(model)
    try:
        weights, report = match_to_reference(read_keras_h5(path, expected, label="--reference"), expected)
    except WeightFileError as exc:
        raise SavedModelError(str(exc)) from None
    if not report.ok:
        raise SavedModelError(f"--reference {path}: expected the file's model_weights to fit the model its "
                              f"model_config describes. Received: {'; '.join(report.problems()[:3])}. Save the "
                              "model again with model.save(), or build it and pass the file with --weights.")
    for layer in model.layers:
        for w in layer.weights:
            w.assign(np.asarray(weights[layer.name][w.name], dtype=str(w.dtype)))


def load_saved_model(path: str, custom_objects: dict[str, Any] | None = None):
    """The saved model at ``path`` (any of the three kinds in the module docstring), uncompiled."""
    import keras

    objects = custom_objects or {}
    if str(path).lower().endswith((".h5", ".hdf5")) and is_keras2_file(path):
        return _load_keras2(path, objects)
    return keras.saving.load_model(path, custom_objects=objects, compile=False, safe_mode=True)


def describe_training_config(saved) -> str | None:
    """``(optimizer config, loss)`` as one line (``Adam(learning_rate=0.001, beta_1=0.9, ...), loss
    categorical_crossentropy``), or None when the file holds none."""
    opt, loss = saved if saved else (None, None)
    if not opt and loss is None:
        return None
    parts = []
    if opt:
        c = opt.get("config") or {}
        hp = ", ".join(f"{k}={c[k]:.6g}" if isinstance(c[k], float) else f"{k}={c[k]}" for k in sorted(c)
                       if k in ("learning_rate", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "amsgrad",
                                "rho", "weight_decay"))
        parts.append(f"{opt.get('class_name')}({hp})")
    if loss is not None:
        parts.append(f"loss {loss if isinstance(loss, str) else json.dumps(loss, sort_keys=True)}")
    return ", ".join(parts)
