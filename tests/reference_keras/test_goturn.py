"""The GOTURN Keras reference: the published parameter count, Caffe's geometry (ceil pooling) at the fast
size, and each Caffe-semantics layer against a framework-free formula: ceil max pooling, LRN (also against
``tf.nn.local_response_normalization`` with alpha/n), and grouped convolutions forward and backward in float64."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before TensorFlow)


import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from parity.pairs.goturn import (CAFFE_LRN_ALPHA, CAFFE_LRN_BETA, CAFFE_LRN_K, CAFFE_LRN_SIZE,  # noqa: E402
                                 FAST_INPUT_SHAPE, GOTURN_PARAMS, SPEC, TF_LRN_ALPHA, TF_LRN_BIAS,
                                 TF_LRN_DEPTH_RADIUS, pool_remainders, stream_sizes)
from reference_keras.goturn import CaffeLRN, CaffeMaxPool2D, goturn  # noqa: E402

from parity.backends.keras_side import keras_dtype  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def caffe_max_pool(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    """Caffe MAX pooling, no pad (pooling_layer.cpp), NHWC: ceil output size, windows clipped at the edge."""
    n, h, w, c = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max(axis=(1, 2))
    return out


def caffe_lrn(x: np.ndarray, n=CAFFE_LRN_SIZE, alpha=CAFFE_LRN_ALPHA, beta=CAFFE_LRN_BETA, k=CAFFE_LRN_K):
    """Caffe LRN ACROSS_CHANNELS (lrn_layer.cpp), NHWC: x * (k + alpha/n * sum of n centred squares)^-beta."""
    c = x.shape[-1]
    pre = (n - 1) // 2
    sq = np.pad(x ** 2, [(0, 0)] * 3 + [(pre, n - 1 - pre)])
    return x * (k + alpha / n * sum(sq[..., i:i + c] for i in range(n))) ** -beta


def test_param_count_is_the_published_one():
    model = goturn()  # 227x227x6, float32: built, never run
    assert model.count_params() == GOTURN_PARAMS == SPEC.published_params["total"] == 113_748_740
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == GOTURN_PARAMS  # convs frozen by lr_mult
    per_stream = sum(model.get_layer(f"target_conv{i}").count_params() for i in range(1, 6))
    assert per_stream == 2_334_080
    assert model.get_layer("fc6").kernel.shape == (2 * 256 * 6 * 6, 4096)
    assert model.get_layer("target_conv1").kernel is not model.get_layer("image_conv1").kernel


def test_fast_size_shapes_follow_caffe_ceil_geometry():
    assert pool_remainders((227, 227)) == []                 # 55->27, 27->13, 13->6: every pool exact
    assert pool_remainders(FAST_INPUT_SHAPE[:2]) == ["pool1", "pool5"]
    model = goturn(**SPEC.fast_config)
    sizes = stream_sizes(FAST_INPUT_SHAPE[:2])
    assert sizes == {"conv1": (18, 18), "pool1": (9, 9), "conv2": (9, 9), "pool2": (4, 4), "conv3": (4, 4),
                     "conv4": (4, 4), "conv5": (4, 4), "pool5": (2, 2)}
    for stream in ("target", "image"):
        for name, (h, w) in sizes.items():
            assert tuple(model.get_layer(f"{stream}_{name}").output.shape[1:3]) == (h, w), (stream, name)
    assert tuple(model.get_layer("concat").output.shape) == (None, 2, 2, 512)
    assert tuple(model.get_layer("flatten").output.shape) == (None, 2048)
    assert tuple(model.output.shape) == (None, 4)
    assert model.get_layer("drop6").rate == 0.0


def test_builder_wants_the_stacked_input():
    with pytest.raises(ValueError, match=r"expected input_shape \(H, W, 6\) with target in channels 0:3 and "
                                         r"image in 3:6\. Received: \(227, 227, 3\)"):
        goturn(input_shape=(227, 227, 3))


@pytest.mark.parametrize("size", [9, 10, 18])
def test_caffe_max_pool_rounds_up_and_padding_never_wins(size):
    rng = np.random.default_rng(size)
    x = -rng.uniform(1.0, 2.0, (2, size, size + 1, 3))  # all negative: a zero pad would win the edge windows
    with keras_dtype("float64"):
        got = np.asarray(CaffeMaxPool2D()(x))
        floor = np.asarray(CaffeMaxPool2D(ceil_mode=False)(x))
    want = caffe_max_pool(x)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(floor, np.asarray(keras.layers.MaxPooling2D(3, 2, dtype="float64")(x)))


def test_caffe_lrn_is_caffes_formula_and_tf_lrn_with_alpha_over_n():
    rng = np.random.default_rng(0)
    x = rng.uniform(-60, 60, (2, 5, 5, 16))  # magnitudes of GOTURN's pool1: the alpha term matters
    with keras_dtype("float64"):
        got = np.asarray(CaffeLRN()(x))
    want = caffe_lrn(x)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    assert np.abs(want - x).max() > 1.0  # not the identity at these magnitudes
    x32 = x.astype(np.float32)
    tf_out = tf.nn.local_response_normalization(x32, depth_radius=TF_LRN_DEPTH_RADIUS, bias=TF_LRN_BIAS,
                                                alpha=TF_LRN_ALPHA, beta=CAFFE_LRN_BETA).numpy()
    np.testing.assert_allclose(tf_out, want, rtol=2e-6)
    tf_naive = tf.nn.local_response_normalization(x32, depth_radius=TF_LRN_DEPTH_RADIUS, bias=TF_LRN_BIAS,
                                                  alpha=CAFFE_LRN_ALPHA, beta=CAFFE_LRN_BETA).numpy()
    assert np.abs(tf_naive - want).max() > 1.0  # passing Caffe's alpha to TF unchanged is a different layer


def test_grouped_conv2d_forward_and_backward_in_float64():
    """Conv2D(groups=2) == split -> two convs -> concat on TF CPU in float64, values and gradients."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 7, 7, 8)))
    upstream = tf.constant(rng.standard_normal((2, 7, 7, 6)))
    with keras_dtype("float64"):
        conv = keras.layers.Conv2D(6, 3, padding="same", groups=2)
        conv.build(x.shape)
    assert conv.kernel.shape == (3, 3, 4, 6) and conv.kernel.dtype == "float64"
    kernel = tf.Variable(conv.kernel.numpy())
    bias = tf.Variable(conv.bias.numpy())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = conv(x)
        parts = [tf.nn.conv2d(x[..., 4 * g:4 * g + 4], kernel[..., 3 * g:3 * g + 3], 1, "SAME") for g in (0, 1)]
        y_split = tf.concat(parts, -1) + bias
        loss, loss_split = tf.reduce_sum(y * upstream), tf.reduce_sum(y_split * upstream)
    np.testing.assert_allclose(y.numpy(), y_split.numpy(), rtol=1e-13, atol=1e-13)
    for a, b in zip(tape.gradient(loss, [x, conv.kernel, conv.bias]), tape.gradient(loss_split, [x, kernel, bias])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, atol=1e-13)
