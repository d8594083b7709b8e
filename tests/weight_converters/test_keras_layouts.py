"""Every layout rule of :mod:`weight_converters.keras`, checked numerically against the real layers: a Keras
layer and the torch op fed the converted weights give the same output in float64, and the conversion back
to Keras is bit-exact. Then the converters' strictness: missing, unexpected, shape mismatch and non-finite
are each listed, strict mode raises :class:`ConversionError`, and ``report.conventions`` lists exactly the
conventions applied."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA & co. before TensorFlow / torch load)

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from weight_converters.keras import (BN_NAMES, BN_TRACKED, BN_VAR_AS_IS, CONV_HWIO_TO_OIHW,  # noqa: E402
                                     DENSE_FLATTEN, DENSE_TRANSPOSE, DEPTHWISE_TO_TORCH, POINTWISE_TO_TORCH,
                                     LayerMap, conv_kernel_to_keras, conv_kernel_to_torch,
                                     dense_kernel_to_keras, dense_kernel_to_torch, depthwise_kernel_to_keras,
                                     depthwise_kernel_to_torch, keras_to_torch, torch_to_keras)
from weight_converters.report import ConversionError  # noqa: E402

#: float64 Keras vs torch on the same weights: both sum the same products in a different order; measured
#: max |diff| ~1e-15 on these sizes. 1e-12 leaves room for the summation order and nothing else.
ATOL = 1e-12
# Keras' own convert_to_numpy trips numpy 2's __array__(copy=) deprecation; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _randomize(layer, rng) -> dict[str, np.ndarray]:
    """Random values into every variable (variances positive); returns ``{var_name: array}``."""
    out = {}
    for w in layer.weights:
        value = rng.uniform(0.5, 2.0, w.shape) if "variance" in w.name else rng.standard_normal(w.shape)
        w.assign(value)
        out[w.name] = np.array(w.numpy())
    return out


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# --- Layout rules, numerically ----------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_kernel_hwio_to_oihw_matches_keras_conv2d_with_groups(groups):
    rng = _rng(groups)
    x = rng.standard_normal((2, 7, 6, 4))
    # (3, 2) kernel: a swapped H/W in the permutation cannot pass unnoticed.
    layer = keras.layers.Conv2D(6, (3, 2), groups=groups, dtype="float64")
    layer.build(x.shape)
    kvars = _randomize(layer, rng)
    assert kvars["kernel"].shape == (3, 2, 4 // groups, 6)  # HWIO, I = in/groups
    mapping = [LayerMap("conv", "conv", "conv2d")]

    sd, report = keras_to_torch({"conv": kvars}, mapping)

    assert sd["conv.weight"].shape == (6, 4 // groups, 3, 2)  # OIHW
    y_t = F.conv2d(_nchw(x), _t(sd["conv.weight"]), _t(sd["conv.bias"]), groups=groups)
    np.testing.assert_allclose(_nhwc(y_t), np.asarray(layer(x)), rtol=0, atol=ATOL)
    assert CONV_HWIO_TO_OIHW in report.conventions
    back, _ = torch_to_keras(sd, mapping)
    assert all(np.array_equal(back["conv"][v], kvars[v]) for v in kvars)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_kernel_matches_keras_depthwise_conv2d_as_torch_grouped_conv(multiplier):
    rng = _rng(10 + multiplier)
    x = rng.standard_normal((2, 6, 5, 3))
    layer = keras.layers.DepthwiseConv2D((3, 2), depth_multiplier=multiplier, dtype="float64")
    layer.build(x.shape)
    kvars = _randomize(layer, rng)
    # Keras 3 names the depthwise kernel "kernel"; the converter's table uses Keras 2's "depthwise_kernel".
    weights = {"dw": {"depthwise_kernel": kvars["kernel"], "bias": kvars["bias"]}}
    mapping = [LayerMap("dw", "dw", "depthwise_conv2d")]

    sd, report = keras_to_torch(weights, mapping)

    assert sd["dw.weight"].shape == (3 * multiplier, 1, 3, 2)
    y_t = F.conv2d(_nchw(x), _t(sd["dw.weight"]), _t(sd["dw.bias"]), groups=3)
    np.testing.assert_allclose(_nhwc(y_t), np.asarray(layer(x)), rtol=0, atol=ATOL)
    assert DEPTHWISE_TO_TORCH in report.conventions
    # Back to Keras: the multiplier comes from the expected shape, then from the LayerMap.
    back, _ = torch_to_keras(sd, mapping, expected={"dw": {"depthwise_kernel": kvars["kernel"].shape,
                                                           "bias": kvars["bias"].shape}})
    assert np.array_equal(back["dw"]["depthwise_kernel"], kvars["kernel"])
    # Without an expected layout the Keras 3 name ("kernel") is produced.
    back, _ = torch_to_keras(sd, [LayerMap("dw", "dw", "depthwise_conv2d", depth_multiplier=multiplier)])
    assert np.array_equal(back["dw"]["kernel"], kvars["kernel"])


def test_keras3_depthwise_conv2d_variable_names_convert_as_is():
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, dtype="float64")
    layer.build((None, 5, 5, 3))
    kvars = _randomize(layer, _rng(3))
    sd, report = keras_to_torch({"dw": kvars}, [LayerMap("dw", "dw", "depthwise_conv2d")], strict=False)
    assert report.ok, report.problems()
    assert np.array_equal(sd["dw.weight"], depthwise_kernel_to_torch(kvars["kernel"]))
    back, _ = torch_to_keras(sd, [LayerMap("dw", "dw", "depthwise_conv2d", depth_multiplier=2)])
    assert set(back["dw"]) == {"kernel", "bias"}
    assert np.array_equal(back["dw"]["kernel"], kvars["kernel"])


@pytest.mark.parametrize("multiplier", [1, 2])
def test_separable_conv2d_matches_keras_as_torch_depthwise_then_pointwise(multiplier):
    rng = _rng(20 + multiplier)
    x = rng.standard_normal((2, 6, 6, 3))
    layer = keras.layers.SeparableConv2D(5, (3, 2), depth_multiplier=multiplier, dtype="float64")
    layer.build(x.shape)
    kvars = _randomize(layer, rng)
    mapping = [LayerMap("sep", "sep", "separable_conv2d")]

    sd, report = keras_to_torch({"sep": kvars}, mapping)

    assert sd["sep.depthwise.weight"].shape == (3 * multiplier, 1, 3, 2)
    assert sd["sep.pointwise.weight"].shape == (5, 3 * multiplier, 1, 1)
    h = F.conv2d(_nchw(x), _t(sd["sep.depthwise.weight"]), groups=3)
    y_t = F.conv2d(h, _t(sd["sep.pointwise.weight"]), _t(sd["sep.pointwise.bias"]))
    np.testing.assert_allclose(_nhwc(y_t), np.asarray(layer(x)), rtol=0, atol=ATOL)
    assert {DEPTHWISE_TO_TORCH, POINTWISE_TO_TORCH} <= set(report.conventions)
    expected = {"sep": {v: a.shape for v, a in kvars.items()}}
    back, _ = torch_to_keras(sd, mapping, expected=expected)
    assert all(np.array_equal(back["sep"][v], kvars[v]) for v in kvars)


def test_dense_kernel_transposes_to_linear_weight():
    rng = _rng(30)
    x = rng.standard_normal((4, 7))
    layer = keras.layers.Dense(3, dtype="float64")
    layer.build(x.shape)
    kvars = _randomize(layer, rng)
    mapping = [LayerMap("fc", "fc", "dense")]

    sd, report = keras_to_torch({"fc": kvars}, mapping)

    assert sd["fc.weight"].shape == (3, 7)
    y_t = F.linear(_t(x), _t(sd["fc.weight"]), _t(sd["fc.bias"]))
    np.testing.assert_allclose(y_t.numpy(), np.asarray(layer(x)), rtol=0, atol=ATOL)
    assert DENSE_TRANSPOSE in report.conventions
    assert not any(c.startswith(DENSE_FLATTEN) for c in report.conventions)
    back, _ = torch_to_keras(sd, mapping)
    assert all(np.array_equal(back["fc"][v], kvars[v]) for v in kvars)


def test_dense_after_flatten_reorders_rows_hwc_to_chw_like_keras_flatten_and_torch_flatten():
    rng = _rng(31)
    c, h, w = 5, 3, 4  # all different: any axis mix-up changes the result
    x = rng.standard_normal((2, h, w, c))
    flatten, dense = keras.layers.Flatten(dtype="float64"), keras.layers.Dense(6, dtype="float64")
    dense.build((None, h * w * c))
    kvars = _randomize(dense, rng)
    y_k = np.asarray(dense(flatten(x)))
    mapping = [LayerMap("fc", "fc", "dense", flatten_chw=(c, h, w))]

    sd, report = keras_to_torch({"fc": kvars}, mapping)

    y_t = torch.nn.functional.linear(torch.nn.Flatten()(_nchw(x)), _t(sd["fc.weight"]), _t(sd["fc.bias"]))
    np.testing.assert_allclose(y_t.numpy(), y_k, rtol=0, atol=ATOL)
    assert f"{DENSE_FLATTEN} (C,H,W)={(c, h, w)}" in report.conventions
    # Without the reorder the port computes something else (the rule is not a no-op on this shape).
    plain, _ = keras_to_torch({"fc": kvars}, [LayerMap("fc", "fc", "dense")])
    y_plain = F.linear(torch.nn.Flatten()(_nchw(x)), _t(plain["fc.weight"]), _t(plain["fc.bias"]))
    assert np.abs(y_plain.numpy() - y_k).max() > 1e-3
    back, _ = torch_to_keras(sd, mapping)
    assert all(np.array_equal(back["fc"][v], kvars[v]) for v in kvars)


def test_batchnorm_names_map_to_torch_and_eval_output_matches_keras():
    rng = _rng(40)
    x = rng.standard_normal((3, 4, 4, 6))
    layer = keras.layers.BatchNormalization(epsilon=1e-3, dtype="float64")
    layer.build(x.shape)
    kvars = _randomize(layer, rng)
    mapping = [LayerMap("bn", "bn", "batchnorm")]

    sd, report = keras_to_torch({"bn": kvars}, mapping)

    assert set(sd) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert np.array_equal(sd["bn.weight"], kvars["gamma"]) and np.array_equal(sd["bn.bias"], kvars["beta"])
    assert np.array_equal(sd["bn.running_mean"], kvars["moving_mean"])
    assert np.array_equal(sd["bn.running_var"], kvars["moving_variance"])
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"] == 0
    y_t = F.batch_norm(_nchw(x), _t(sd["bn.running_mean"]), _t(sd["bn.running_var"]), _t(sd["bn.weight"]),
                       _t(sd["bn.bias"]), training=False, eps=1e-3)
    np.testing.assert_allclose(_nhwc(y_t), np.asarray(layer(x, training=False)), rtol=0, atol=ATOL)
    assert {BN_NAMES, BN_VAR_AS_IS, BN_TRACKED} <= set(report.conventions)
    back, rep_back = torch_to_keras(sd, mapping)
    assert all(np.array_equal(back["bn"][v], kvars[v]) for v in kvars)
    assert rep_back.ok  # num_batches_tracked is torch bookkeeping, not "unexpected"


def test_per_array_rules_are_exact_inverses():
    rng = _rng(50)
    k = rng.standard_normal((3, 2, 4, 6))
    assert np.array_equal(conv_kernel_to_keras(conv_kernel_to_torch(k)), k)
    assert np.array_equal(depthwise_kernel_to_keras(depthwise_kernel_to_torch(k), 6), k)
    d = rng.standard_normal((5 * 3 * 4, 7))
    assert np.array_equal(dense_kernel_to_keras(dense_kernel_to_torch(d)), d)
    assert np.array_equal(dense_kernel_to_keras(dense_kernel_to_torch(d, (5, 3, 4)), (5, 3, 4)), d)


def test_conventions_list_exactly_what_was_applied():
    rng = _rng(60)
    weights = {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4))},
               "bn": {"gamma": np.ones(4), "beta": np.zeros(4), "moving_mean": np.zeros(4),
                      "moving_variance": np.ones(4)}}
    _, report = keras_to_torch(weights, [LayerMap("conv", "conv", "conv2d"), LayerMap("bn", "bn", "batchnorm")])
    assert set(report.conventions) == {CONV_HWIO_TO_OIHW, BN_NAMES, BN_VAR_AS_IS, BN_TRACKED}
    assert len(report.conventions) == len(set(report.conventions))  # each once
    assert [m[:2] for m in report.mapped] == [("conv/kernel", "conv.weight"), ("bn/gamma", "bn.weight"),
                                              ("bn/beta", "bn.bias"), ("bn/moving_mean", "bn.running_mean"),
                                              ("bn/moving_variance", "bn.running_var")]


# --- Strictness -------------------------------------------------------------------------------------------
def _conv_weights(rng, out=4):
    return {"kernel": rng.standard_normal((3, 3, 2, out)), "bias": rng.standard_normal(out)}


MAPPING = [LayerMap("c1", "conv1", "conv2d"), LayerMap("c2", "conv2", "conv2d")]
EXPECTED_TORCH = {"conv1.weight": (4, 2, 3, 3), "conv1.bias": (4,), "conv2.weight": (4, 2, 3, 3),
                  "conv2.bias": (4,)}


def test_keras_to_torch_lists_missing_layer_and_strict_raises():
    weights = {"c1": _conv_weights(_rng(70))}
    with pytest.raises(ConversionError) as err:
        keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH)
    assert any(m.startswith("c2/kernel") for m in err.value.report.missing)
    assert "missing" in str(err.value)
    _, report = keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH, strict=False)
    assert not report.ok and "conv2.weight" in " ".join(report.missing)


def test_keras_to_torch_lists_unexpected_layer_and_variable():
    rng = _rng(71)
    weights = {"c1": {**_conv_weights(rng), "extra": np.zeros(4)}, "c2": _conv_weights(rng),
               "ghost": {"kernel": np.zeros((1, 1, 1, 1))}}
    _, report = keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH, strict=False)
    assert set(report.unexpected) == {"c1/extra", "ghost/kernel"}
    assert not report.missing and not report.shape_mismatches
    with pytest.raises(ConversionError, match="unexpected"):
        keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH)


def test_keras_to_torch_lists_shape_mismatch():
    rng = _rng(72)
    weights = {"c1": _conv_weights(rng), "c2": _conv_weights(rng, out=5)}
    _, report = keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH, strict=False)
    assert ("conv2.weight", (4, 2, 3, 3), (5, 2, 3, 3)) in report.shape_mismatches
    assert ("conv2.bias", (4,), (5,)) in report.shape_mismatches
    with pytest.raises(ConversionError, match=r"shape conv2\.weight: expected \(4, 2, 3, 3\), received"):
        keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_keras_to_torch_lists_nonfinite_values(bad):
    rng = _rng(73)
    weights = {"c1": _conv_weights(rng), "c2": _conv_weights(rng)}
    weights["c2"]["kernel"][1, 1, 0, 2] = bad
    _, report = keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH, strict=False)
    assert report.nonfinite == ["c2/kernel"]
    with pytest.raises(ConversionError, match="non-finite values in c2/kernel"):
        keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH)


def test_keras_to_torch_reports_every_problem_at_once():
    rng = _rng(74)
    weights = {"c1": _conv_weights(rng, out=5), "ghost": {"kernel": np.zeros(2)}}
    weights["c1"]["bias"][0] = np.nan
    with pytest.raises(ConversionError) as err:
        keras_to_torch(weights, MAPPING, expected=EXPECTED_TORCH)
    r = err.value.report
    assert r.missing and r.unexpected and r.shape_mismatches and r.nonfinite
    assert "more)" in str(err.value)  # the one-line message counts what it does not show


def test_torch_to_keras_lists_missing_unexpected_shape_and_nonfinite():
    rng = _rng(75)
    sd, _ = keras_to_torch({"c1": _conv_weights(rng), "c2": _conv_weights(rng)}, MAPPING)
    del sd["conv2.bias"]
    sd["conv9.weight"] = np.zeros((1,))
    sd["conv1.weight"][0, 0, 0, 0] = np.inf
    expected = {"c1": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "c2": {"kernel": (3, 3, 2, 8), "bias": (4,)}}

    _, report = torch_to_keras(sd, MAPPING, expected=expected, strict=False)

    assert any(m.startswith("c2/bias") for m in report.missing)
    assert report.unexpected == ["conv9.weight"]
    assert report.shape_mismatches == [("c2/kernel", (3, 3, 2, 8), (3, 3, 2, 4))]
    assert report.nonfinite == ["conv1.weight"]
    with pytest.raises(ConversionError):
        torch_to_keras(sd, MAPPING, expected=expected)


def test_clean_conversion_report_is_truthy_and_serializes():
    rng = _rng(76)
    _, report = keras_to_torch({"c1": _conv_weights(rng), "c2": _conv_weights(rng)}, MAPPING,
                               expected=EXPECTED_TORCH)
    assert report and report.ok and report.problems() == []
    d = report.to_dict()
    assert d["ok"] is True and len(d["mapped"]) == 4
