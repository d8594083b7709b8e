"""The 1-D layers beyond a plain Conv1D (``parity.core.families.conv1d``, ``parity.core.families.upsampling``,
``weight_converters/conv1d.py``, ``weight_converters/transposed.py``): DepthwiseConv1D, SeparableConv1D, grouped
and strided-'same' Conv1D, Conv1DTranspose, UpSampling1D, ZeroPadding1D, Cropping1D, GlobalMaxPooling1D. Kernel
layouts against Keras itself, TF 'same' in torch, the table and its rules, a correct port passing
``parity.compare`` in float64, ``parity check --input-shape L,C`` and the planted bugs found and named."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.core import families
from parity.core.families import conv1d as fam
from parity.core.families.upsampling import same_transpose_crop
from tests.keras_dtype import keras_float64
from tests.planted_ports import assert_found_and_named
from weight_converters import conv1d as conv
from weight_converters.keras import LayerMap, keras_to_torch, torch_to_keras

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

X = np.random.default_rng(1).normal(size=(2, 10, 4))  # (N, L, C): an even length


def _keras(make, x=X):
    """The output on ``x`` of the layer ``make()`` builds (float64, random non-zero weights) and its variables."""
    from parity.backends.keras_side import _var

    with keras_float64():
        layer = make()
        inp = keras.Input(x.shape[1:], dtype="float64")
        model = keras.Model(inp, layer(inp))
        rng = np.random.default_rng(0)
        for w in layer.weights:
            w.assign(rng.normal(0, 0.5, w.shape))
        return np.asarray(model(x)), {_var(layer, w): np.asarray(w.numpy()) for w in layer.weights}


def _torch(module, kind, variables, x=X):
    sd, rep = keras_to_torch({"l": variables}, [LayerMap("l", "", kind)],
                             expected={k: tuple(v.shape) for k, v in module.state_dict().items()})
    assert rep.ok, rep.problems()
    module = module.double().eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
        out = module(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy().transpose(0, 2, 1)
    return out, rep


def _close(out, ref):
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


# ---- kernel layouts, against Keras 3 ------------------------------------------------------------------------------
def test_depthwise_conv1d_kernel_and_channel_order():
    from torch import nn

    ref, v = _keras(lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2, padding="same"))
    assert v["kernel"].shape == (3, 4, 2) and v["bias"].shape == (8,)  # (k, in, mult): measured on Keras 3.15
    out, rep = _torch(nn.Conv1d(4, 8, 3, padding=1, groups=4), "depthwise_conv1d", v)
    _close(out, ref)
    assert any("c*mult + m" in c for c in rep.conventions)
    w = conv.depthwise_kernel_to_torch(v["kernel"])
    np.testing.assert_array_equal(conv.depthwise_kernel_to_keras(w, 2), v["kernel"])


def test_separable_conv1d_as_depthwise_and_pointwise():
    from torch import nn

    ref, v = _keras(lambda: keras.layers.SeparableConv1D(6, 3, depth_multiplier=2, padding="same"))
    assert (v["depthwise_kernel"].shape, v["pointwise_kernel"].shape, v["bias"].shape) == ((3, 4, 2), (1, 8, 6), (6,))
    mod = nn.Sequential()
    mod.add_module("depthwise", nn.Conv1d(4, 8, 3, padding=1, groups=4, bias=False))
    mod.add_module("pointwise", nn.Conv1d(8, 6, 1))
    out, rep = _torch(mod, "separable_conv1d", v)
    _close(out, ref)
    back, _ = torch_to_keras({k: v2.detach().numpy() for k, v2 in mod.state_dict().items()},
                             [LayerMap("l", "", "separable_conv1d")],
                             expected={"l": {k: a.shape for k, a in v.items()}})
    for k in v:
        np.testing.assert_allclose(back["l"][k], v[k], rtol=0, atol=0)


def test_grouped_conv1d():
    from torch import nn

    ref, v = _keras(lambda: keras.layers.Conv1D(6, 3, groups=2, padding="same"))
    assert v["kernel"].shape == (3, 2, 6)
    out, _ = _torch(nn.Conv1d(4, 6, 3, padding=1, groups=2), "conv1d", v)
    _close(out, ref)


@pytest.mark.parametrize("kernel, stride, length", [(3, 2, 10), (3, 2, 9), (4, 2, 10), (2, 1, 7), (5, 3, 11)])
def test_strided_same_conv1d_is_conv1d_same(kernel, stride, length):
    from ported_torch.layers1d import Conv1dSame

    x = np.random.default_rng(2).normal(size=(2, length, 4))
    ref, v = _keras(lambda: keras.layers.Conv1D(5, kernel, strides=stride, padding="same"), x)
    out, _ = _torch(Conv1dSame(4, 5, kernel, stride=stride), "conv1d", v, x)
    _close(out, ref)


def test_symmetric_padding_is_not_tf_same_at_stride_2():
    """The convention is real: Conv1d(3, stride=2, padding=1) on an even length shifts every window."""
    from torch import nn

    x = np.random.default_rng(3).normal(size=(2, 10, 4))
    ref, v = _keras(lambda: keras.layers.Conv1D(5, 3, strides=2, padding="same"), x)
    out, _ = _torch(nn.Conv1d(4, 5, 3, stride=2, padding=1), "conv1d", v, x)
    assert out.shape == ref.shape and np.abs(out - ref).max() > 1e-3
    assert fam.tf_same_pads(10, 3, 2) == (0, 1) and fam.tf_same_pads(9, 3, 2) == (1, 1)


@pytest.mark.parametrize("kernel, stride", [(4, 2), (3, 1), (5, 3)])
def test_conv1d_transpose_kernel_and_same(kernel, stride):
    from torch import nn

    ref, v = _keras(lambda: keras.layers.Conv1DTranspose(5, kernel, strides=stride, padding="same"))
    assert v["kernel"].shape == (kernel, 5, 4)  # (k, out, in)
    p, op = same_transpose_crop(kernel, stride)
    out, rep = _torch(nn.ConvTranspose1d(4, 5, kernel, stride=stride, padding=p, output_padding=op),
                      "conv1d_transpose", v)
    _close(out, ref)
    assert any("(in,out,k)" in c for c in rep.conventions)


def test_conv1d_transpose_valid():
    from torch import nn

    ref, v = _keras(lambda: keras.layers.Conv1DTranspose(3, 3, strides=2, padding="valid"))
    out, _ = _torch(nn.ConvTranspose1d(4, 3, 3, stride=2), "conv1d_transpose", v)
    _close(out, ref)


def test_upsampling1d_is_nearest_upsample_not_linear():
    from torch import nn

    ref, _ = _keras(lambda: keras.layers.UpSampling1D(3))
    xt = torch.from_numpy(X.transpose(0, 2, 1).copy())
    _close(nn.Upsample(scale_factor=3)(xt).numpy().transpose(0, 2, 1), ref)
    lin = nn.Upsample(scale_factor=3, mode="linear")(xt).numpy().transpose(0, 2, 1)
    assert np.abs(lin - ref).max() > 1e-2


# ---- the table and its rules ----------------------------------------------------------------------------------------
def test_table_covers_the_1d_layers_and_refuses_what_it_cannot():
    for cls, kind in (("SeparableConv1D", "separable_conv1d"), ("DepthwiseConv1D", "depthwise_conv1d"),
                      ("Conv1DTranspose", "conv1d_transpose"), ("UpSampling1D", "upsample"),
                      ("ZeroPadding1D", "other"), ("Cropping1D", "other"), ("GlobalMaxPooling1D", "global_maxpool"),
                      ("GlobalAveragePooling1D", "gap")):
        assert families.keras_kind(cls) == kind, cls
        assert families.refusal(cls, {}) is None, cls
    assert families.refusal("Conv1D", {"strides": [2], "padding": "same"}) is None
    assert families.refusal("Conv1D", {"groups": 3}) is None
    assert "output_padding" in families.refusal("Conv1DTranspose", {"output_padding": [1]})
    assert "channels_first" in families.refusal("SeparableConv1D", {"data_format": "channels_first"})


def test_rules_name_the_conventions_and_stay_quiet_on_correct_ports():
    ref = {"class": "Conv1D", "kernel_size": [3], "strides": [2], "padding": "same", "dilation_rate": [1],
           "input_shape": [16, 4]}
    (hit,) = families.config_findings("conv1d", ref, {"kernel_size": [3], "stride": [2], "padding": [1]})
    assert hit[0] == "conv_padding" and "(left 0, right 1)" in hit[1] and "Conv1dSame" in hit[2]
    assert families.config_findings("conv1d", ref, {"kernel_size": [3], "stride": [2], "padding": [0],
                                                    "tf_padding": "same"}) == []
    assert families.config_findings("conv1d", ref, {"kernel_size": [3], "stride": [2], "padding": [0],
                                                    "prepad": [0, 1]}) == []  # the parent's F.pad(x, (0, 1))
    odd = ref | {"input_shape": [15, 4]}  # TF pads (1, 1) on an odd length: padding=1 is right
    assert families.config_findings("conv1d", odd, {"kernel_size": [3], "stride": [2], "padding": [1]}) == []
    tref = {"class": "Conv1DTranspose", "kernel_size": [4], "strides": [2], "padding": "same"}
    (hit,) = families.config_findings("conv1d_transpose", tref, {"class": "ConvTranspose1d", "padding": [1],
                                                                 "output_padding": [1]})
    assert hit[0] == "conv_transpose_same" and "padding=1, output_padding=0" in hit[2]
    assert families.config_findings("conv1d_transpose", tref, {"class": "ConvTranspose1d", "padding": [1],
                                                               "output_padding": [0]}) == []
    uref = {"class": "UpSampling1D", "size": 2}
    assert [h[0] for h in families.config_findings("upsample", uref, {"mode": "linear", "scale_factor": 2.0})] == [
        "upsample_mode"]
    assert families.config_findings("upsample", uref, {"mode": "nearest", "scale_factor": 2.0}) == []


# ---- user mode ------------------------------------------------------------------------------------------------------
def test_seq1d_port_passes_float64():
    import parity
    from ported_torch.seq1d import seq1d_net as port
    from reference_keras.seq1d import seq1d_net

    with keras_float64():
        ref = seq1d_net()
    r = parity.compare(ref, port())
    assert r.passed, r.findings
    taps = {t.path: t for t in r.stage("forward_eval").tensors}
    assert {"conv_s2", "dw", "sep", "grouped", "tconv", "up", "conv", "gmp"} <= set(taps)
    assert taps["conv_s2"].shape == (4, 8, 6) and taps["tconv"].shape == (4, 16, 6) and taps["up"].shape == (4, 32, 6)
    assert max(t.max_abs for t in taps.values()) < 1e-12
    grads = {t.path for t in r.stage("gradients").tensors}
    assert {"dw:weight.grad", "tconv:weight.grad", "grouped:weight.grad"} <= grads, grads
    assert any(g.startswith("sep:") and "depthwise.weight" in g for g in grads), grads


def test_cli_input_shape_for_a_1d_model(tmp_path):
    from parity import cli

    rc = cli.main(["check", "--reference", "tests.families.seq1d_models:keras_tiny_seq", "--port",
                   "tests.families.seq1d_models:torch_tiny_seq", "--input-shape", "50,4", "-q", "--out",
                   str(tmp_path / "r")])
    assert rc == 0


# ---- planted bugs (the mutation catalogue's '1-D convolution' family, pair seq1d) ----------------------------------
@pytest.mark.parametrize("name", ["s1_strided_same_symmetric", "s1_depthwise_multiplier_major",
                                  "s1_separable_multiplier_major", "s1_grouped_as_dense",
                                  "s1_transpose_output_padding", "s1_upsample_linear"])
def test_planted_1d_bugs_found_and_named(name):
    assert_found_and_named(name)


def _port_in_another_style(pad):
    """The seq1d port written otherwise: the strided 'same' conv as F.pad(x, pad) in forward + Conv1d(padding=0),
    the SeparableConv1D as one module class with ``depthwise`` / ``pointwise`` children, ``.squeeze(-1)``."""
    import torch.nn.functional as F
    from torch import nn

    from ported_torch.seq1d import Seq1DNet

    class SepConv1d(nn.Module):
        def __init__(self, cin, cout, k, mult):
            super().__init__()
            self.depthwise = nn.Conv1d(cin, cin * mult, k, padding=k // 2, groups=cin, bias=False)
            self.pointwise = nn.Conv1d(cin * mult, cout, 1)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Other(Seq1DNet):
        def __init__(self):
            super().__init__()
            self.conv_s2 = nn.Conv1d(4, 6, 3, stride=2)
            del self.sep_depthwise, self.sep_pointwise
            self.sep = SepConv1d(12, 12, 3, 2)

        def forward(self, x):
            x = F.relu(self.conv_s2(F.pad(x, pad)))
            x = F.relu(self.sep(self.dw(x)))
            x = self.up(F.relu(self.tconv(self.grouped(x))))
            return self.classifier(self.gmp(self.conv(x)[:, :, 1:-2]).squeeze(-1))

    return Other()


def test_seq1d_port_in_another_style_passes_and_a_symmetric_pad_is_named():
    import parity
    from reference_keras.seq1d import seq1d_net

    with keras_float64():
        ref = seq1d_net()
    r = parity.compare(ref, _port_in_another_style((0, 1)))
    assert r.passed, r.findings
    r = parity.compare(ref, _port_in_another_style((1, 1)))
    assert not r.passed
    bad = [f for f in r.findings if f.severity == "error"]
    assert bad[0].path == "conv_s2" and bad[0].cause == "conv_padding" and "(left 0, right 1)" in bad[0].message
