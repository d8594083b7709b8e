"""The Caffe ``.npy`` weight loader of the GOTURN pair (:mod:`weight_converters.goturn`,
:mod:`weight_converters.npy_safe`), pure numpy: a dict
saved the way users save it loads into the reference's layout and back bit-exact; a pickle that names
anything but numpy arrays and containers is refused before it runs; the fc6 flatten order (Caffe CHW vs
Keras HWC) is converted; a reshaped-instead-of-transposed fc6 is flagged; bad files fail in one line."""
from __future__ import annotations

import os

import numpy as np
import pytest

from parity.pairs.goturn import (CAFFE_FC_NAMES, CONV_LAYERS, FAST_FC_UNITS, FAST_INPUT_SHAPE, GOTURN_OUTPUTS,
                                 concat_chw, taps)
from weight_converters.caffe import CaffeConversionReport, looks_reshaped
from weight_converters.goturn import (BOTH_STREAMS, FC_CAFFE_NAMES, goturn_caffe_to_torch, goturn_from_caffe,
                                      goturn_to_caffe, load_goturn_weights)
from weight_converters.npy_safe import UnsafePickle, read_caffe_npy
from weight_converters.keras import LayerMap, dense_kernel_to_torch, keras_to_torch
from weight_converters.report import ConversionError

CHW = concat_chw(FAST_INPUT_SHAPE[:2])                 # (512, 2, 2) at 79x79
FC_SHAPES = {"fc6": (CHW[0] * CHW[1] * CHW[2], FAST_FC_UNITS), "fc7": (FAST_FC_UNITS, FAST_FC_UNITS),
             "fc7b": (FAST_FC_UNITS, FAST_FC_UNITS), "fc8": (FAST_FC_UNITS, GOTURN_OUTPUTS)}
FORMAT = "expected a .npy holding a dict of numpy arrays"


def conv_blob_shapes() -> dict[str, tuple]:
    """Caffe OIHW shapes of conv1..conv5 (grouped convs see in/groups input channels)."""
    out, c = {}, 3
    for name, filters, k, _, _, groups, _ in CONV_LAYERS:
        out[name] = (filters, c // groups, k, k)
        c = filters
    return out


def expected_reference() -> dict[str, dict[str, tuple]]:
    """The Keras reference's ``{layer: {var: shape}}`` at the fast config, without building it."""
    exp = {}
    for name, (o, i, kh, kw) in conv_blob_shapes().items():
        for stream in ("target", "image"):
            exp[f"{stream}_{name}"] = {"kernel": (kh, kw, i, o), "bias": (o,)}
    for fc, (n_in, n_out) in FC_SHAPES.items():
        exp[fc] = {"kernel": (n_in, n_out), "bias": (n_out,)}
    return exp


def caffe_convs(rng, suffix="") -> dict[str, list[np.ndarray]]:
    return {name + suffix: [rng.standard_normal(shape).astype(np.float32),
                            rng.standard_normal(shape[0]).astype(np.float32)]
            for name, shape in conv_blob_shapes().items()}


def structured_fc6(rng) -> np.ndarray:
    """A Keras-layout fc6 kernel (in, out) whose output units differ in scale, as trained units do."""
    n_in, n_out = FC_SHAPES["fc6"]
    return rng.standard_normal((n_in, n_out)) * np.exp(rng.normal(0.0, 0.5, n_out))


def test_converter_names_mirror_the_pair():
    """weight_converters imports no parity module: its copy of the Caffe fc names must stay the pair's."""
    assert FC_CAFFE_NAMES == CAFFE_FC_NAMES


def test_npy_dict_saved_by_a_user_loads_into_both_streams(tmp_path):
    rng = np.random.default_rng(0)
    caffe = caffe_convs(rng)
    path = tmp_path / "caffenet_convs.npy"
    np.save(path, caffe)  # what nrupatunga/goturn-pytorch's weights file is: np.save of a dict
    weights, report = load_goturn_weights(path, expected_reference())
    assert isinstance(report, CaffeConversionReport) and report.ok, report.problems()
    for name, (w, b) in caffe.items():
        for stream in ("target", "image"):
            np.testing.assert_array_equal(weights[f"{stream}_{name}"]["kernel"], w.transpose(2, 3, 1, 0))
            np.testing.assert_array_equal(weights[f"{stream}_{name}"]["bias"], b)
    assert set(weights) == {f"{s}_{n}" for s in ("target", "image") for n in caffe}
    assert BOTH_STREAMS in report.assumptions
    assert ("fc6, fc7, fc7b, fc8 (fc6-new, fc7-new, fc7-newb, fc8-shapes) not in file: kept from the reference's "
            "initialisation") in report.assumptions
    assert not (report.missing or report.unexpected or report.shape_mismatches)
    # ... and back: Caffe OIHW again, bit-exact, for each stream
    back = goturn_to_caffe(weights, CHW)
    for name, (w, b) in caffe.items():
        for key in (name, name + "_p"):
            assert back[key][0].tobytes() == w.tobytes() and back[key][1].tobytes() == b.tobytes()


def test_full_two_stream_file_round_trips_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    caffe = {**caffe_convs(rng), **caffe_convs(rng, "_p")}
    for fc, (n_in, n_out) in FC_SHAPES.items():
        caffe[CAFFE_FC_NAMES[fc]] = [rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)]
    path = tmp_path / "goturn.npy"
    np.save(path, caffe)
    weights, report = load_goturn_weights(path, expected_reference())
    assert report.ok and not report.assumptions, (report.problems(), report.assumptions)
    np.testing.assert_array_equal(weights["image_conv3"]["kernel"], caffe["conv3_p"][0].transpose(2, 3, 1, 0))
    back = goturn_to_caffe(weights, CHW)
    assert set(back) == set(caffe)
    for key, blobs in caffe.items():
        for a, b in zip(back[key], blobs):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key


def test_fc6_flatten_order_caffe_chw_to_keras_hwc():
    """Caffe's InnerProduct reads pool5_concat flattened C, H, W; Keras' Dense reads Flatten's H, W, C: the same
    layer after conversion, on the same features."""
    rng = np.random.default_rng(2)
    c, h, w = CHW
    n_out = FC_SHAPES["fc6"][1]
    w_caffe = rng.standard_normal((n_out, c * h * w))
    feats = rng.standard_normal((3, c, h, w))                          # N, C, H, W
    caffe_out = feats.reshape(3, -1) @ w_caffe.T                       # InnerProduct over a CHW flatten
    exp = expected_reference()
    weights, _ = goturn_from_caffe({**caffe_convs(rng), "fc6-new": [w_caffe, np.zeros(n_out)]}, exp)
    keras_out = feats.transpose(0, 2, 3, 1).reshape(3, -1) @ weights["fc6"]["kernel"]  # Dense over HWC flatten
    np.testing.assert_allclose(keras_out, caffe_out, rtol=1e-12, atol=1e-12)
    assert not np.allclose(feats.reshape(3, -1) @ weights["fc6"]["kernel"], caffe_out)  # order matters
    # Caffe's blob is already torch's layout: keras -> torch with the pair's flatten_chw gives it back exactly
    np.testing.assert_array_equal(dense_kernel_to_torch(weights["fc6"]["kernel"], CHW), w_caffe)


def test_caffe_to_torch_equals_caffe_to_keras_to_torch():
    rng = np.random.default_rng(3)
    caffe = caffe_convs(rng)
    for fc, (n_in, n_out) in FC_SHAPES.items():
        caffe[CAFFE_FC_NAMES[fc]] = [rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)]
    cfg = {"input_shape": FAST_INPUT_SHAPE, "fc_units": FAST_FC_UNITS}
    maps = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in taps(cfg) if t.weighted]
    keras_w, rep = goturn_from_caffe(caffe, expected_reference())
    via_keras, rep2 = keras_to_torch(keras_w, maps)
    expected_torch = {k: v.shape for k, v in via_keras.items()}
    direct, rep3 = goturn_caffe_to_torch(caffe, expected_torch)
    assert rep.ok and rep2.ok and rep3.ok
    assert set(direct) == set(via_keras) and len(direct) == 2 * 2 * 5 + 2 * 4
    for key in direct:
        np.testing.assert_array_equal(direct[key], via_keras[key], err_msg=key)
    np.testing.assert_array_equal(direct["image.conv2.weight"], caffe["conv2"][0])


class _RunsShell:
    """What a malicious 'weights' file carries: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload, global_name", [(_RunsShell, f"{os.system.__module__}.system"),
                                                  (_RunsPython, "builtins.exec")])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, global_name):
    marker = tmp_path / "marker"
    rng = np.random.default_rng(4)
    weights = caffe_convs(rng)
    weights["conv5"] = [weights["conv5"][0], payload(marker)]  # hidden after 4 honest layers
    path = tmp_path / "weights.npy"
    np.save(path, weights)
    assert not marker.exists()
    with pytest.raises(UnsafePickle) as info:
        load_goturn_weights(path, expected_reference())
    assert str(info.value) == (f"--weights {path}: expected a .npy holding a dict of numpy arrays. Received: a pickle that "
                               f"references {global_name}. Re-save the weights with numpy arrays only.")
    assert isinstance(info.value, ValueError)
    assert not marker.exists()  # the payload did not run


def _text(path):
    path.write_text("conv1: not weights\n")


def _npz(path):
    with path.open("wb") as f:  # an .npz under a .npy name
        np.savez(f, conv1=np.zeros(3))


def _plain(path):
    np.save(path, np.zeros((2, 3), np.float32))


def _strings(path):
    np.save(path, {"conv1": ["weights.bin", "bias.bin"]})


def _truncated(path):
    np.save(path, caffe_convs(np.random.default_rng(5)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("write, received", [
    (_text, "Received: a file without the NumPy .npy signature."),
    (_npz, "Received: a .npz (zip) archive."),
    (_plain, "Received: a float32 array of shape (2, 3), not a dict."),
    (_strings, "Received: 'conv1' holds list ['str', 'str']. Each layer must be [weights, bias] as numpy arrays."),
    (_truncated, "Received: a truncated or corrupt pickle"),
])
def test_bad_files_raise_one_line_value_errors(tmp_path, write, received):
    path = tmp_path / "weights.npy"
    write(path)
    with pytest.raises(ValueError) as info:
        read_caffe_npy(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"--weights {path}: {FORMAT}") and received in msg


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"Received: no such file\. Check the path\.$"):
        read_caffe_npy(tmp_path / "nope.npy")
    with pytest.raises(ValueError) as info:  # outside the CLI: the path alone
        read_caffe_npy(tmp_path / "nope.npy", label="")
    assert str(info.value).startswith(f"{tmp_path / 'nope.npy'}: expected a .npy")


def test_reshape_instead_of_transpose_is_flagged(tmp_path):
    rng = np.random.default_rng(6)
    kernel = structured_fc6(rng)                      # Keras (in, out), rows already in CHW order
    n_in, n_out = kernel.shape
    convs = caffe_convs(rng)
    bias = np.ones(n_out)
    good = {**convs, "fc6-new": [np.ascontiguousarray(kernel.T), bias]}
    bad = {**convs, "fc6-new": [np.reshape(kernel, (n_out, n_in)), bias]}  # the known port mistake
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "bad.npy", bad)
    _, report = load_goturn_weights(tmp_path / "good.npy", expected_reference())
    assert report.ok and not report.suspicious
    with pytest.raises(ConversionError, match="fc6 weight looks reshaped, not transposed") as info:
        load_goturn_weights(tmp_path / "bad.npy", expected_reference())
    assert not info.value.report.ok and len(info.value.report.suspicious) == 1
    assert "fc6 weight looks reshaped, not transposed" in info.value.report.to_dict()["suspicious"][0]
    _, lenient = load_goturn_weights(tmp_path / "bad.npy", expected_reference(), strict=False)
    assert lenient.suspicious and not lenient
    # the torch-side mapping applies the same guard
    _, torch_report = goturn_caffe_to_torch(bad, {})
    assert any(s.startswith("fc6 weight looks reshaped") for s in torch_report.suspicious)


def test_reshape_guard_stays_quiet_on_unstructured_and_square_weights():
    rng = np.random.default_rng(7)
    iid = rng.standard_normal((512, 2048))
    assert looks_reshaped(iid) is None                             # nothing to tell either way
    assert looks_reshaped(iid.reshape(2048, 512).T.copy()) is None
    square = rng.standard_normal((512, 512)) * np.exp(rng.normal(0, 0.5, 512))
    assert looks_reshaped(square) is None and looks_reshaped(square.T.copy()) is None
    assert looks_reshaped(structured_fc6(rng).T.copy()) is None


def test_real_problems_fail_strict_and_classifier_layers_are_ignored(tmp_path):
    rng = np.random.default_rng(8)
    caffe = caffe_convs(rng)
    del caffe["conv4"]
    caffe["conv9"] = [np.zeros((2, 2)), np.zeros(2)]
    caffe["fc8"] = [np.zeros((1000, 4096)), np.zeros(1000)]      # CaffeNet's ImageNet classifier
    caffe["conv1"] = [caffe["conv1"][0][:, :, :5], caffe["conv1"][1]]
    path = tmp_path / "w.npy"
    np.save(path, caffe)
    with pytest.raises(ConversionError) as info:
        load_goturn_weights(path, expected_reference())
    report = info.value.report
    assert report.missing == ["target_conv4/kernel (<- conv4)", "target_conv4/bias (<- conv4)",
                              "image_conv4/kernel (<- conv4_p)", "image_conv4/bias (<- conv4_p)"]
    assert report.unexpected == ["conv9 (no GOTURN layer of that name)"]
    # shapes in the file's (Caffe OIHW) terms, as the user saved them
    assert report.shape_mismatches == [("conv1/weight (-> target_conv1/kernel)", (96, 3, 11, 11), (96, 3, 5, 11)),
                                       ("conv1/weight (-> image_conv1/kernel)", (96, 3, 11, 11), (96, 3, 5, 11))]
    assert any(a.startswith("ignored CaffeNet classifier layer(s) fc8") for a in report.assumptions)
    assert "\n" not in str(info.value)
