"""Keras HDF5 weight files read without Keras (:mod:`weight_converters.h5`), proven on mini_XCEPTION.

A float64 reference with random weights and random BN statistics is saved by Keras itself in both layouts
(legacy full-model ``.h5`` via ``model.save`` and Keras 3 ``.weights.h5`` via ``model.save_weights``); each
file is read with h5py alone, converted to the torch port's state_dict, loaded into the port, converted back,
and every variable must equal the original bit for bit. Then the files users actually bring: Keras 2 auto
layer names (oarriaga's Keras 2.0.5 files), older Keras 3 files without layer names, and broken files.
"""
from __future__ import annotations

import parity.core.env  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA & co. before TensorFlow / torch load)

import json
import shutil

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from parity.pairs.minixception import SPEC  # noqa: E402
from ported_torch.minixception import mini_xception as port_builder  # noqa: E402
from reference_keras.minixception import MODULE_FILTERS, mini_xception as reference_builder  # noqa: E402
from weight_converters.h5 import (FORMAT_KERAS3, FORMAT_LEGACY, KerasWeightFile, WeightFileError,  # noqa: E402
                                  load_keras_weights, match_to_reference, read_keras_h5, write_keras3_weights_h5)
from weight_converters.keras import LayerMap, keras_to_torch, torch_to_keras  # noqa: E402
from weight_converters.report import ConversionError  # noqa: E402

CONFIG = SPEC.config()
# Keras' own convert_to_numpy trips numpy 2's __array__(copy=) deprecation; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _build_reference():
    from parity.backends.keras_side import keras_dtype

    with keras_dtype("float64"):
        return reference_builder(**CONFIG)


def _weights(model) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {var: array}}`` in ``model.layers`` order (Keras 3: ``variable.name`` is the var name)."""
    return {l.name: {w.name: np.array(w.numpy()) for w in l.weights} for l in model.layers if l.weights}


def _expected(weights) -> dict[str, dict[str, tuple]]:
    return {n: {v: a.shape for v, a in vs.items()} for n, vs in weights.items()}


@pytest.fixture(scope="module")
def reference():
    """float64 mini_XCEPTION, every variable random (BN variances positive): no two arrays alike, so any
    mix-up of layers, variables or axes shows."""
    model = _build_reference()
    rng = np.random.default_rng(1234)
    for layer in model.layers:
        for w in layer.weights:
            w.assign(rng.uniform(0.5, 2.0, w.shape) if "variance" in w.name else rng.standard_normal(w.shape))
    return model


@pytest.fixture(scope="module")
def originals(reference):
    return _weights(reference)


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
    d = tmp_path_factory.mktemp("h5")
    paths = {FORMAT_LEGACY: d / "mini_xception.h5", FORMAT_KERAS3: d / "mini_xception.weights.h5"}
    reference.save(paths[FORMAT_LEGACY])
    reference.save_weights(paths[FORMAT_KERAS3])
    return paths


def _assert_same(weights, originals, ordered=True):
    assert (list(weights) if ordered else sorted(weights)) == (list(originals) if ordered else sorted(originals))
    for layer, vars_ in originals.items():
        assert list(weights[layer]) == list(vars_), layer
        for var, a in vars_.items():
            b = weights[layer][var]
            assert b.dtype == a.dtype and np.array_equal(b, a), f"{layer}/{var}"


# --- The two layouts Keras writes -------------------------------------------------------------------------
def test_legacy_full_model_h5_reads_every_variable_bit_exact(files, originals):
    f = read_keras_h5(files[FORMAT_LEGACY])

    assert isinstance(f, KerasWeightFile) and f.format == FORMAT_LEGACY
    assert f.keras_version == keras.__version__ and f.backend == "tensorflow"
    assert f.has_model_config and not f.assumptions
    assert list(f.layers) == list(originals)  # layer_names order = model.layers order
    assert f.kinds["block1_sepconv1"] == "separable_conv2d" and f.kinds["base_bn1"] == "batchnorm"
    assert "arrays stored as float64" in f.notes
    _assert_same({n: f.layers[n] for n in originals}, originals)


def test_keras3_weights_h5_reads_every_variable_bit_exact(files, originals):
    f = read_keras_h5(files[FORMAT_KERAS3])

    assert f.format == FORMAT_KERAS3 and f.keras_version is None
    assert set(f.layers) == set(originals) and not f.assumptions
    _assert_same({n: f.layers[n] for n in originals}, originals)
    assert f.kinds["head_conv"] == "conv2d"


@pytest.mark.parametrize("fmt", [FORMAT_LEGACY, FORMAT_KERAS3])
def test_h5_to_torch_port_and_back_is_bit_exact(fmt, files, originals):
    expected = _expected(originals)
    weights, report = load_keras_weights(files[fmt], expected)
    assert report.ok and not report.assumptions, report.problems()
    assert len(report.mapped) == sum(len(v) for v in originals.values())
    mapping = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in SPEC.taps(CONFIG) if t.weighted]
    port = port_builder(**CONFIG).double()
    port_expected = {k: tuple(v.shape) for k, v in port.state_dict().items()}

    sd, to_torch = keras_to_torch(weights, mapping, expected=port_expected)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    state = {k: v.detach().numpy() for k, v in port.state_dict().items()}
    back, to_keras = torch_to_keras(state, mapping, expected=expected)

    assert to_torch.ok and to_keras.ok
    _assert_same(back, originals, ordered=False)  # torch_to_keras follows the taps' order


def test_torch_port_loaded_from_h5_gives_the_reference_output(files, reference, originals):
    weights, _ = load_keras_weights(files[FORMAT_LEGACY], _expected(originals))
    mapping = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in SPEC.taps(CONFIG) if t.weighted]
    port = port_builder(**CONFIG).double().eval()
    sd, _ = keras_to_torch(weights, mapping)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = np.random.default_rng(5).uniform(-1, 1, (2, *CONFIG["input_shape"]))

    # Logits (head_gap), not probabilities: random weights saturate the softmax, which would hide errors.
    logits_model = keras.Model(reference.input, reference.get_layer("head_gap").output)
    logits_ref = np.asarray(logits_model(x, training=False))
    with torch.no_grad():
        logits_port = port(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()

    # float64 eval after an exact copy: measured <= 1e-16 relative per layer (`parity check minixception`);
    # here 3.7e-16 of max|logit|. 1e-12 leaves room for summation order only.
    np.testing.assert_allclose(logits_port, logits_ref, rtol=0, atol=1e-12 * np.abs(logits_ref).max())


def test_keras_archive_reads_its_weights_member(reference, originals, tmp_path):
    path = tmp_path / "mini_xception.keras"
    reference.save(path)
    f = read_keras_h5(path)
    assert f.format == FORMAT_KERAS3 and any(".keras archive" in n for n in f.notes)
    _assert_same({n: f.layers[n] for n in originals}, originals)


def test_written_keras3_weights_load_into_keras(originals, tmp_path):
    path = tmp_path / "written.weights.h5"
    write_keras3_weights_h5(path, originals)
    fresh = _build_reference()
    fresh.load_weights(path)  # Keras finds every layers/<class key>/vars where it expects it
    _assert_same(_weights(fresh), originals)
    _assert_same({n: read_keras_h5(path).layers[n] for n in originals}, originals)


# --- Files users bring --------------------------------------------------------------------------------
def _keras2_auto_names() -> dict[str, str]:
    """Keras 2 names layers by class in *creation* order (cnn.py: residual conv+BN before the separable
    convs of each module): base_conv1 -> conv2d_1, block1_residual_bn -> batch_normalization_3, ..."""
    created = ["base_conv1", "base_bn1", "base_conv2", "base_bn2"]
    for i in range(1, len(MODULE_FILTERS) + 1):
        created += [f"block{i}_residual_conv", f"block{i}_residual_bn", f"block{i}_sepconv1",
                    f"block{i}_sepconv1_bn", f"block{i}_sepconv2", f"block{i}_sepconv2_bn"]
    created.append("head_conv")
    counters: dict[str, int] = {}
    names = {}
    for n in created:
        cls = ("separable_conv2d" if "sepconv" in n and not n.endswith("_bn") else
               "batch_normalization" if "bn" in n else "conv2d")
        counters[cls] = counters.get(cls, 0) + 1
        names[n] = f"{cls}_{counters[cls]}"
    return names


def _write_keras2_style_h5(path, model, weights, rename, keras_version="2.0.5"):
    """What Keras 2.0.5's ``model.save`` wrote (bytes attributes, ``layer/var:0`` weight names), with h5py;
    ``layer_names`` in ``model.layers`` order."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = keras_version.encode()
        f.attrs["backend"] = b"tensorflow"
        layers_cfg = [{"class_name": type(l).__name__, "config": {"name": rename.get(l.name, l.name)}}
                      for l in model.layers]
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers_cfg}}).encode()
        f.attrs["training_config"] = json.dumps({"optimizer_config": {"class_name": "Adam"}}).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [rename.get(l.name, l.name).encode() for l in model.layers]
        mw.attrs["keras_version"] = keras_version.encode()
        mw.attrs["backend"] = b"tensorflow"
        for l in model.layers:
            name = rename.get(l.name, l.name)
            g = mw.create_group(name)
            vars_ = weights.get(l.name, {})
            g.attrs["weight_names"] = [f"{name}/{v}:0".encode() for v in vars_]
            for v, a in vars_.items():
                g.create_dataset(f"{name}/{v}:0", data=a)
        f.create_group("optimizer_weights")


def test_keras2_auto_named_file_matches_by_file_order_and_says_so(reference, originals, tmp_path):
    rename = _keras2_auto_names()
    path = tmp_path / "fer2013_mini_XCEPTION.h5"
    _write_keras2_style_h5(path, reference, originals, rename)

    f = read_keras_h5(path)
    weights, report = match_to_reference(f, _expected(originals))

    assert f.keras_version == "2.0.5" and f.kinds["conv2d_1"] == "conv2d"
    assert any(":0" in n for n in f.notes) and f.has_optimizer_weights and f.has_training_config
    assert report.ok, report.problems()
    order_note = next(a for a in report.assumptions if a.startswith("layers matched by order"))
    assert "'conv2d_1' -> 'base_conv1'" in order_note
    # batch_normalization_3 was created first in module 1 but comes third in the file (model.layers order):
    # the file order, not the number in the name, decides.
    assert "'batch_normalization_3' -> 'block1_residual_bn'" in order_note
    assert any("only the file order tells them apart" in a for a in report.assumptions)
    _assert_same(weights, originals)


def test_keras3_weights_without_layer_names_match_by_order(files, originals, tmp_path):
    path = tmp_path / "old_keras3.weights.h5"
    shutil.copy(files[FORMAT_KERAS3], path)
    with h5py.File(path, "a") as f:
        f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)

    f = read_keras_h5(path, _expected(originals))
    weights, report = match_to_reference(f, _expected(originals))

    assert "conv2d_1" in f.layers and any("no 'name' attribute" in n for n in f.notes)
    assert report.ok, report.problems()
    assert any("'conv2d_1' -> 'base_conv2'" in a for a in report.assumptions)
    _assert_same(weights, originals)


def test_keras2_depthwise_kernel_name_matches_keras3_kernel(tmp_path):
    k = np.arange(3 * 3 * 4 * 2, dtype=np.float32).reshape(3, 3, 4, 2)
    path = tmp_path / "dw.h5"
    with h5py.File(path, "w") as f:  # Keras 2 save_weights("x.h5"): the layout at the root
        f.attrs["layer_names"] = [b"depthwise_conv2d_1"]
        g = f.create_group("depthwise_conv2d_1")
        g.attrs["weight_names"] = [b"depthwise_conv2d_1/depthwise_kernel:0"]
        g["depthwise_conv2d_1/depthwise_kernel:0"] = k

    weights, report = load_keras_weights(path, {"dw": {"kernel": (3, 3, 4, 2)}})

    assert report.ok, report.problems()
    assert np.array_equal(weights["dw"]["kernel"], k)
    assert any("depthwise_kernel" in c for c in report.conventions)
    assert any("weights-only" in n for n in read_keras_h5(path).notes)


def test_nested_keras3_model_reads_inner_layers(tmp_path):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_fc"),
                              keras.layers.BatchNormalization(name="inner_bn")], name="backbone")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    path = tmp_path / "nested.weights.h5"
    model.save_weights(path)

    f = read_keras_h5(path)

    assert set(f.layers) == {"inner_fc", "inner_bn", "head"}
    assert list(f.layers["inner_bn"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert np.array_equal(f.layers["inner_fc"]["kernel"], inner.layers[0].kernel.numpy())


def test_legacy_nested_model_group_is_split_into_its_layers(tmp_path):
    path = tmp_path / "nested.h5"
    with h5py.File(path, "w") as f:
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"vgg16", b"dense_1"]
        g = mw.create_group("vgg16")
        g.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0", b"block1_conv2/kernel:0"]
        g["block1_conv1/kernel:0"] = np.ones((3, 3, 3, 2))
        g["block1_conv1/bias:0"] = np.zeros(2)
        g["block1_conv2/kernel:0"] = np.ones((3, 3, 2, 2))
        d = mw.create_group("dense_1")
        d.attrs["weight_names"] = [b"dense_1/kernel:0"]
        d["dense_1/kernel:0"] = np.ones((2, 1))

    f = read_keras_h5(path)

    assert list(f.layers) == ["block1_conv1", "block1_conv2", "dense_1"]
    assert list(f.layers["block1_conv1"]) == ["kernel", "bias"]
    assert any("nested model 'vgg16'" in n for n in f.notes)


# --- Problems the report lists ----------------------------------------------------------------------------
def _edited_copy(src, dst, layer, var, edit):
    """Copy a legacy file and replace one dataset by ``edit(array)`` (possibly another shape)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        g = f["model_weights"][layer]
        key = f"{layer}/{var}"
        a = edit(np.array(g[key]))
        del g[key]
        g[key] = a
    return dst


def test_wrong_kernel_shape_is_listed_in_shape_mismatches(files, originals, tmp_path):
    path = _edited_copy(files[FORMAT_LEGACY], tmp_path / "bad_shape.h5", "block2_residual_conv", "kernel",
                        lambda a: a[..., :-1])

    weights, report = load_keras_weights(path, _expected(originals))

    assert report.shape_mismatches == [("block2_residual_conv/kernel", (1, 1, 16, 32), (1, 1, 16, 31))]
    assert not report.ok and not report.missing and not report.unexpected
    assert "shape block2_residual_conv/kernel: expected (1, 1, 16, 32), received (1, 1, 16, 31)" in report.problems()
    with pytest.raises(ConversionError, match="block2_residual_conv/kernel"):
        load_keras_weights(path, _expected(originals), strict=True)


def test_nan_in_a_kernel_is_listed_in_nonfinite(files, originals, tmp_path):
    def plant(a):
        a[0, 0, 3, 5] = np.nan
        return a

    path = _edited_copy(files[FORMAT_LEGACY], tmp_path / "nan.h5", "block1_sepconv1", "pointwise_kernel", plant)

    weights, report = load_keras_weights(path, _expected(originals))

    assert report.nonfinite == ["block1_sepconv1/pointwise_kernel"]
    assert not report.ok and "non-finite values in block1_sepconv1/pointwise_kernel" in report.problems()
    assert np.isnan(weights["block1_sepconv1"]["pointwise_kernel"]).any()


def test_negative_moving_variance_is_reported_as_invalid(files, originals, tmp_path):
    """A variance below zero makes eval-mode BatchNorm NaN (sqrt(var + eps)) on both sides, which would compare
    as "equal": the reader's report and the keras -> torch conversion both name it, and the report fails."""
    def plant(a):
        a[2] = -1.0
        return a

    path = _edited_copy(files[FORMAT_LEGACY], tmp_path / "negvar.h5", "block1_sepconv1_bn", "moving_variance", plant)
    weights, report = load_keras_weights(path, _expected(originals))
    n = originals["block1_sepconv1_bn"]["moving_variance"].size
    assert report.invalid == [f"block1_sepconv1_bn/moving_variance: 1 of {n} values negative (min -1); a BatchNorm "
                              "variance is >= 0 and eval mode takes sqrt(variance + eps)"]
    assert not report.ok and not report.nonfinite and report.summary().endswith(", 1 invalid")
    assert report.problems() == [f"invalid {report.invalid[0]}"]
    with pytest.raises(ConversionError, match="block1_sepconv1_bn/moving_variance: 1 of"):
        load_keras_weights(path, _expected(originals), strict=True)
    maps = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in SPEC.taps(CONFIG) if t.weighted]
    _, to_torch = keras_to_torch(weights, maps, strict=False)
    assert [k.split(":")[0] for k in to_torch.invalid] == ["block1_sepconv1_bn/moving_variance"]
    assert to_torch.to_dict()["invalid"] == to_torch.invalid and not to_torch.to_dict()["ok"]


def test_reference_layer_absent_from_file_is_missing_and_extra_file_layer_is_unexpected(files, originals):
    expected = _expected(originals)
    expected["extra_dense"] = {"kernel": (4, 2), "bias": (2,)}
    del expected["head_conv"]

    _, report = load_keras_weights(files[FORMAT_KERAS3], expected)

    assert report.missing == ["extra_dense/kernel", "extra_dense/bias"]
    assert report.unexpected == ["head_conv/kernel", "head_conv/bias"]


# --- Files that are not Keras weights ---------------------------------------------------------------------
def test_missing_file_says_so(tmp_path):
    with pytest.raises(WeightFileError, match=r"Received: no such file\. Check the path"):
        read_keras_h5(tmp_path / "nope.h5")


def test_non_hdf5_file_error_is_one_actionable_line(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(WeightFileError) as err:
        read_keras_h5(path)

    assert str(err.value) == (
        f"--weights {path}: expected an HDF5 file with a 'model_weights' group or Keras 3 '.weights.h5' layout. "
        "Received: a file without an HDF5 signature. Pass a file saved by model.save() or model.save_weights().")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_corrupt_file_with_hdf5_signature_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(1).bytes(4096))
    with pytest.raises(WeightFileError, match=r"expected a readable HDF5 file\. Received: a truncated or corrupt"):
        read_keras_h5(path)


def test_truncated_copy_is_reported_as_truncated(files, tmp_path):
    data = files[FORMAT_LEGACY].read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightFileError, match=r"truncated or corrupt HDF5 file .*Re-save or re-download"):
        read_keras_h5(path)


def test_hdf5_without_keras_layout_lists_what_it_found(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 2))
    with pytest.raises(WeightFileError, match=r"Received: an HDF5 file with top-level keys \['images'\]\. Pass a file"):
        read_keras_h5(path)


def test_error_label_names_the_option_the_path_came_from(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("not weights")
    with pytest.raises(WeightFileError, match=r"^--reference-weights .*x\.txt: expected"):
        read_keras_h5(path, label="--reference-weights")


def test_reader_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, weight_converters.h5; "
            "print([m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
