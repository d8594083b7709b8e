"""The TF-compatible layers against TensorFlow itself (float64)."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


# Inputs go through tf.constant(..., tf.float64): measured here, a raw float64 numpy array passed to
# tf.nn.max_pool2d a second time in a process came back rounded to float32 (1.1e-7 off).


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size", [5, 6, 7, 8, 30, 60, 74])
@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (3, 1), (1, 2)])
def test_maxpool_same_matches_tf(tf, size, kernel, stride):
    from ported_torch.layers import MaxPool2dSame

    x = np.random.default_rng(size).standard_normal((2, size, size + 1, 3))
    ref = tf.nn.max_pool2d(tf.constant(x, tf.float64), kernel, stride, "SAME").numpy()
    out = MaxPool2dSame(kernel, stride)(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("size", [5, 8, 15, 30])
def test_avgpool_same_matches_tf(tf, size):
    from ported_torch.layers import AvgPool2dSame

    x = np.random.default_rng(size).standard_normal((2, size, size, 3))
    ref = tf.nn.avg_pool2d(tf.constant(x, tf.float64), 3, 2, "SAME").numpy()
    out = AvgPool2dSame(3, 2)(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("size", [7, 8, 15, 64])
@pytest.mark.parametrize("kernel,stride", [(1, 2), (3, 2), (3, 1), (5, 2)])
def test_conv_same_matches_tf(tf, size, kernel, stride):
    import torch

    from ported_torch.layers import Conv2dSame
    from weight_converters.keras import conv_kernel_to_torch

    rng = np.random.default_rng(size * 10 + kernel)
    x = rng.standard_normal((2, size, size, 3))
    k = rng.standard_normal((kernel, kernel, 3, 4))
    ref = tf.nn.conv2d(tf.constant(x, tf.float64), tf.constant(k, tf.float64), stride, "SAME").numpy()
    conv = Conv2dSame(3, 4, kernel, stride=stride, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(conv_kernel_to_torch(k)))
        out = conv(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_symmetric_maxpool_is_not_tf_same(tf):
    """The classic mistake, measured: MaxPool2d(3, 2, padding=1) on an even input shifts every window."""
    from torch import nn

    x = np.random.default_rng(0).standard_normal((1, 74, 74, 8)) * 3
    ref = tf.nn.max_pool2d(tf.constant(x, tf.float64), 3, 2, "SAME").numpy()
    out = nn.MaxPool2d(3, 2, padding=1)(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() > 1.0


def test_c1_input_is_made_contiguous():
    """An NHWC array with C=1 transposed to NCHW must not stay an ambiguous channels_last view."""
    from parity.backends.torch_side import TorchSide
    from ported_torch.minixception import mini_xception

    ts = TorchSide(mini_xception(), [], dtype="float64")
    t = ts.to_input(np.zeros((2, 64, 64, 1)))
    assert t.is_contiguous() and t.stride() == (64 * 64, 64 * 64, 64, 1)
