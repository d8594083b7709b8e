"""The 3-D convolution family (``parity.core.families.conv3d``, ``weight_converters/conv3d.py``): the kernel layout
against Keras itself, TF 'same' in torch against Keras' Conv3D / MaxPooling3D / AveragePooling3D, a correct small
volume CNN passing ``parity.compare`` (float64; float32 with 3-D pooling, which TensorFlow cannot run in float64),
``parity check --input-shape D,H,W,C``, and the planted convention bugs found at their layer with their cause."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.core import families
from parity.core.errors import UsageError
from parity.core.families import conv3d as fam
from tests.keras_dtype import keras_float64
from tests.planted_ports import assert_found_and_named
from weight_converters import conv3d as conv
from weight_converters.keras import LayerMap, keras_to_torch, torch_to_keras

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")


# ---- the converter -------------------------------------------------------------------------------------------
def test_converter_round_trips_and_names_its_layout():
    rng = np.random.default_rng(0)
    k, b = rng.normal(size=(3, 2, 1, 4, 8)), rng.normal(size=(8,))
    sd, rep = keras_to_torch({"c": {"kernel": k, "bias": b}}, [LayerMap("c", "body.conv", "conv3d")],
                             expected={"body.conv.weight": (8, 4, 3, 2, 1), "body.conv.bias": (8,)})
    assert sd["body.conv.weight"].shape == (8, 4, 3, 2, 1)
    assert sd["body.conv.weight"][5, 2, 1, 0, 0] == k[1, 0, 0, 2, 5]  # (out, in, kd, kh, kw) <- (kd, kh, kw, in, out)
    assert any("transpose(4,3,0,1,2)" in c for c in rep.conventions)
    back, _ = torch_to_keras(sd, [LayerMap("c", "body.conv", "conv3d")],
                             expected={"c": {"kernel": k.shape, "bias": b.shape}})
    np.testing.assert_array_equal(back["c"]["kernel"], k)
    np.testing.assert_array_equal(back["c"]["bias"], b)
    with pytest.raises(ValueError, match="5 axes"):
        conv.kernel_to_torch(np.zeros((3, 3, 4, 8)))


def test_converted_kernel_computes_keras_conv3d():
    """Keras 3's own Conv3D (kernel (kd, kh, kw, in, out)) == torch conv3d with the converted weight on NCDHW."""
    import torch.nn.functional as F

    with keras_float64():
        layer = keras.layers.Conv3D(5, (3, 2, 2), strides=(1, 2, 1), padding="valid", dilation_rate=1)
        x = np.random.default_rng(1).normal(size=(2, 6, 7, 5, 3))
        y = np.asarray(layer(x))
        k, b = (np.asarray(v) for v in layer.weights)
    assert k.shape == (3, 2, 2, 3, 5)
    w = torch.from_numpy(conv.kernel_to_torch(k))
    yt = F.conv3d(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()), w, torch.from_numpy(b), stride=(1, 2, 1))
    np.testing.assert_allclose(yt.numpy().transpose(0, 2, 3, 4, 1), y, rtol=0, atol=1e-12)


# ---- TF 'same' in torch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, stride, size", [(3, 2, (8, 6, 4)), (2, 1, (5, 4, 3)), (3, 2, (7, 5, 6)),
                                                  ((2, 3, 1), (2, 1, 2), (6, 6, 5))])
def test_conv3d_same_matches_keras(kernel, stride, size):
    from ported_torch.layers3d import Conv3dSame

    with keras_float64():
        layer = keras.layers.Conv3D(4, kernel, strides=stride, padding="same")
        x = np.random.default_rng(2).normal(size=(2, *size, 2))
        y = np.asarray(layer(x))
        k, b = (np.asarray(v) for v in layer.weights)
    m = Conv3dSame(2, 4, kernel, stride=stride).double()
    m.load_state_dict({"weight": torch.from_numpy(conv.kernel_to_torch(k)), "bias": torch.from_numpy(b)})
    with torch.no_grad():
        yt = m(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())).numpy().transpose(0, 2, 3, 4, 1)
    np.testing.assert_allclose(yt, y, rtol=0, atol=1e-12)


def test_symmetric_padding_is_not_tf_same_at_stride_2():
    """The convention is real: Conv3d(padding=1) at stride 2 on an even size shifts every window."""
    from ported_torch.layers3d import Conv3dSame

    same = Conv3dSame(1, 1, 3, stride=2).double()
    sym = torch.nn.Conv3d(1, 1, 3, stride=2, padding=1).double()
    sym.load_state_dict(same.state_dict())
    x = torch.randn(1, 1, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert same(x).shape == sym(x).shape and (same(x) - sym(x)).abs().max() > 1e-3
    assert fam.tf_same_pads(6, 3, 2) == (0, 1) and fam.tf_same_pads(5, 3, 2) == (1, 1)


@pytest.mark.parametrize("cls", ["MaxPooling3D", "AveragePooling3D"])
@pytest.mark.parametrize("pool, stride, size", [(3, 2, (4, 8, 6)), (2, 2, (5, 4, 3)), ((1, 2, 3), None, (3, 5, 7))])
def test_pool3d_same_matches_keras(cls, pool, stride, size):
    from ported_torch.layers3d import AvgPool3dSame, MaxPool3dSame

    layer = getattr(keras.layers, cls)(pool, strides=stride, padding="same")
    x = np.random.default_rng(3).normal(size=(2, *size, 3)).astype(np.float32)
    y = np.asarray(layer(x))
    m = (MaxPool3dSame if cls.startswith("Max") else AvgPool3dSame)(pool, stride)
    yt = m(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())).numpy().transpose(0, 2, 3, 4, 1)
    np.testing.assert_allclose(yt, y, rtol=0, atol=1e-6)


# ---- config rules ------------------------------------------------------------------------------------------------
REF_CONV = {"class": "Conv3D", "kernel_size": [3, 3, 3], "strides": [2, 2, 2], "padding": "same",
            "dilation_rate": [1, 1, 1], "use_bias": True, "input_shape": [8, 16, 16, 4]}


def test_rules_name_tf_same_and_stay_quiet_on_correct_ports():
    sym = {"class": "Conv3d", "kernel_size": [3, 3, 3], "stride": [2, 2, 2], "padding": [1, 1, 1], "has_bias": True}
    (hit,) = families.config_findings("conv3d", REF_CONV, sym)
    assert hit[0] == "conv_padding" and "(0, 1)" in hit[1] and "Conv3dSame" in hit[2]
    assert families.config_findings("conv3d", REF_CONV, sym | {"padding": [0, 0, 0], "tf_padding": "same"}) == []
    stride1 = REF_CONV | {"strides": [1, 1, 1]}
    assert families.config_findings("conv3d", stride1, sym | {"stride": [1, 1, 1]}) == []  # odd k, s 1: symmetric
    ref_pool = {"class": "MaxPooling3D", "pool_size": [3, 3, 3], "strides": [2, 2, 2], "padding": "same",
                "input_shape": [4, 8, 8, 8]}
    (hit,) = families.config_findings("pool3d", ref_pool, {"class": "MaxPool3d", "kernel_size": 3, "stride": 2,
                                                           "padding": 0})
    assert hit[0] == "pool_padding" and "valid" in hit[1]
    assert families.config_findings("pool3d", ref_pool, {"class": "MaxPool3dSame", "kernel_size": [3, 3, 3],
                                                         "stride": [2, 2, 2], "tf_padding": "same"}) == []


def test_table_covers_the_3d_layers():
    for cls, kind in (("Conv3D", "conv3d"), ("MaxPooling3D", "pool3d"), ("AveragePooling3D", "pool3d"),
                      ("GlobalAveragePooling3D", "gap"), ("GlobalMaxPooling3D", "global_maxpool"),
                      ("ZeroPadding3D", "other"), ("UpSampling3D", "upsample"), ("Cropping3D", "other")):
        assert families.keras_kind(cls) == kind, cls
        assert families.refusal(cls, {}) is None, cls
    assert "channels_first" in families.refusal("Conv3D", {"data_format": "channels_first"})
    assert "float32" in families.refusal("AveragePooling3D", {"dtype": {"config": {"name": "float64"}}})


# ---- user mode ----------------------------------------------------------------------------------------------------
def test_volume_cnn_passes_float64():
    import parity
    from ported_torch.volume import volume_cnn as port
    from reference_keras.volume import volume_cnn

    with keras_float64():
        ref = volume_cnn()
    r = parity.compare(ref, port())
    assert r.passed, r.findings
    taps = {t.path: t for t in r.stage("forward_eval").tensors}
    assert taps["conv2"].shape == (4, 8, 4, 8, 8)  # NDHWC compared as the port's NCDHW
    assert taps["gap"].shape == (4, 8) and taps["conv2"].max_abs < 1e-12
    assert {t.path for t in r.stage("gradients").tensors} >= {"conv1:weight.grad", "conv2:weight.grad"}


def test_pooled_volume_cnn_passes_float32_and_float64_is_refused_in_one_line():
    import parity
    from ported_torch.volume import volume_cnn_pooled as port
    from reference_keras.volume import volume_cnn_pooled

    r = parity.compare(volume_cnn_pooled(), port(), dtype="float32")
    assert r.passed, r.findings
    assert {"pool", "avgpool"} <= {t.path for t in r.stage("forward_eval").tensors}
    with keras_float64():
        ref64 = volume_cnn_pooled()
    with pytest.raises(UsageError) as exc:
        parity.compare(ref64, port())
    msg = str(exc.value)
    assert "\n" not in msg and "'pool' (MaxPooling3D)" in msg and "--dtype float32" in msg


def test_cli_input_shape_for_a_volume(tmp_path):
    from parity import cli

    rc = cli.main(["check", "--reference", "reference_keras.volume:volume_cnn_any_size", "--port",
                   "ported_torch.volume:volume_cnn", "--input-shape", "8,16,16,1", "-q", "--out",
                   str(tmp_path / "r")])
    assert rc == 0


# ---- planted bugs (the mutation catalogue's '3-D convolution' family) ---------------------------------------------
@pytest.mark.parametrize("name", ["v3_conv_symmetric_pad", "v3_kernel_dh_swapped", "v3_pool_valid",
                                  "v3_pool_symmetric"])
def test_planted_conv3d_bugs_found_and_named(name):
    assert_found_and_named(name)


def test_3d_padding_upsampling_cropping_and_global_max_pooling_pass():
    """ZeroPadding3D + a valid Conv3D == Conv3d(padding=1); UpSampling3D == nn.Upsample; Cropping3D == slicing;
    GlobalMaxPooling3D == AdaptiveMaxPool3d(1) + flatten, compared as (N, C)."""
    import parity
    import torch.nn.functional as F
    from torch import nn

    with keras_float64():
        layers = keras.layers
        x_in = keras.Input((4, 6, 6, 2))
        x = layers.ZeroPadding3D(1, name="pad")(x_in)
        x = layers.Conv3D(3, 3, activation="relu", name="conv")(x)
        x = layers.UpSampling3D(2, name="up")(x)
        x = layers.Cropping3D(((0, 1), (1, 1), (0, 2)), name="crop")(x)
        x = layers.Conv3D(4, 2, name="conv2")(x)
        x = layers.GlobalMaxPooling3D(name="gmp")(x)
        ref = keras.Model(x_in, layers.Dense(2, name="fc")(x))

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 3, 3, padding=1)
            self.up = nn.Upsample(scale_factor=2)
            self.conv2 = nn.Conv3d(3, 4, 2)
            self.gmp = nn.AdaptiveMaxPool3d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.up(F.relu(self.conv(x)))[:, :, 0:-1, 1:-1, 0:-2]
            return self.fc(torch.flatten(self.gmp(self.conv2(x)), 1))

    r = parity.compare(ref, Port(), loss="mse")
    assert r.passed, r.findings
    shapes = {t.path: t.shape for t in r.stage("forward_eval").tensors}
    assert shapes["conv"] == (4, 3, 4, 6, 6) and shapes["gmp"] == (4, 4)


def test_flatten_after_conv3d_reorders_dense_rows_dhwc_to_cdhw():
    """Keras flattens (D, H, W, C), nn.Flatten (C, D, H, W): the Dense rows are reordered (the converter's
    ``flatten_chw`` is (C, D, H, W)) and the flatten outputs compared in torch's order; round trip exact."""
    import parity
    from torch import nn

    from parity.core.tensors import hwc_flat_to_chw_flat
    from weight_converters.keras import dense_kernel_to_keras, dense_kernel_to_torch

    k = np.random.default_rng(4).normal(size=(2 * 3 * 4 * 5, 6))
    w = dense_kernel_to_torch(k, (5, 2, 3, 4))
    x = np.random.default_rng(5).normal(size=(1, 2, 3, 4, 5))  # (N, D, H, W, C)
    np.testing.assert_allclose(x.reshape(1, -1) @ k, x.transpose(0, 4, 1, 2, 3).reshape(1, -1) @ w.T, atol=1e-12)
    np.testing.assert_array_equal(dense_kernel_to_keras(w, (5, 2, 3, 4)), k)
    np.testing.assert_array_equal(hwc_flat_to_chw_flat(x.reshape(1, -1), (5, 2, 3, 4)),
                                  x.transpose(0, 4, 1, 2, 3).reshape(1, -1))

    with keras_float64():
        x_in = keras.Input((3, 4, 5, 2))
        y = keras.layers.Flatten(name="flat")(keras.layers.Conv3D(3, 2, name="conv")(x_in))
        ref = keras.Model(x_in, keras.layers.Dense(2, name="fc")(y))
    port = nn.Sequential()
    port.add_module("conv", nn.Conv3d(2, 3, 2))
    port.add_module("flat", nn.Flatten())
    port.add_module("fc", nn.Linear(3 * 2 * 3 * 4, 2))
    r = parity.compare(ref, port, loss="mse")
    assert r.passed, r.findings
