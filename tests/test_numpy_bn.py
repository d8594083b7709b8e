"""The NumPy batch normalization (parity.core.numpy_reference) against both frameworks, float64, same inputs:
keras.layers.BatchNormalization (training=True, gradients by tf.GradientTape) and torch.nn.BatchNorm2d (train
mode, autograd). This is how a hand-written layer gets a referee that is neither side."""
from __future__ import annotations

import parity.core.env  # noqa: F401

import numpy as np
import pytest

from parity.core.conventions import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, TORCH_BN_MOMENTUM_FROM_KERAS
from parity.core.numpy_reference import batchnorm_backward, batchnorm_forward

#: float64, a few reductions over 2*5*7 values: measured max |diff| 1.8e-15 against either framework.
TOL = 1e-12
N, C, H, W = 2, 3, 5, 7


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(0.5, 2.0, (N, C, H, W)),    # NCHW
        "dy": rng.normal(size=(N, C, H, W)),
        "gamma": rng.uniform(0.5, 1.5, C), "beta": rng.normal(size=C),
        "mean": rng.normal(size=C), "var": rng.uniform(0.5, 1.5, C),
    }


def _close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= TOL


def _to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def test_against_keras(data):
    import keras
    import tensorflow as tf

    bn = keras.layers.BatchNormalization(epsilon=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM, dtype="float64")
    bn.build((None, H, W, C))
    bn.set_weights([data["gamma"], data["beta"], data["mean"], data["var"]])
    x = tf.constant(_to_nhwc(data["x"]))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bn(x, training=True)
        loss = tf.reduce_sum(y * _to_nhwc(data["dy"]))  # dL/dy = dy
    dx, dgamma, dbeta = tape.gradient(loss, [x, bn.gamma, bn.beta])

    res = batchnorm_forward(_to_nhwc(data["x"]), data["gamma"], data["beta"], eps=KERAS_BN_EPSILON,
                            layout="NHWC", running_mean=data["mean"], running_var=data["var"],
                            momentum=KERAS_BN_MOMENTUM, running_update="keras")
    _close(res.y, y.numpy())
    _close(res.running_mean, bn.moving_mean.numpy())
    _close(res.running_var, bn.moving_variance.numpy())
    ndx, ndgamma, ndbeta = batchnorm_backward(_to_nhwc(data["dy"]), res.cache)
    _close(ndx, dx.numpy())
    _close(ndgamma, dgamma.numpy())
    _close(ndbeta, dbeta.numpy())

    # eval mode, with the updated moving statistics
    ev = batchnorm_forward(_to_nhwc(data["x"]), data["gamma"], data["beta"], eps=KERAS_BN_EPSILON, layout="NHWC",
                           training=False, running_mean=res.running_mean, running_var=res.running_var)
    _close(ev.y, bn(x, training=False).numpy())


def test_against_torch(data):
    import torch

    bn = torch.nn.BatchNorm2d(C, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS).double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(data["gamma"]))
        bn.bias.copy_(torch.from_numpy(data["beta"]))
        bn.running_mean.copy_(torch.from_numpy(data["mean"]))
        bn.running_var.copy_(torch.from_numpy(data["var"]))
    x = torch.from_numpy(data["x"].copy()).requires_grad_(True)
    y = bn(x)
    y.backward(torch.from_numpy(data["dy"]))

    res = batchnorm_forward(data["x"], data["gamma"], data["beta"], eps=KERAS_BN_EPSILON, layout="NCHW",
                            running_mean=data["mean"], running_var=data["var"],
                            momentum=TORCH_BN_MOMENTUM_FROM_KERAS, running_update="torch")
    _close(res.y, y.detach().numpy())
    _close(res.running_mean, bn.running_mean.numpy())
    _close(res.running_var, bn.running_var.numpy())
    dx, dgamma, dbeta = batchnorm_backward(data["dy"], res.cache)
    _close(dx, x.grad.numpy())
    _close(dgamma, bn.weight.grad.numpy())
    _close(dbeta, bn.bias.grad.numpy())

    bn.eval()
    ev = batchnorm_forward(data["x"], data["gamma"], data["beta"], eps=KERAS_BN_EPSILON, training=False,
                           running_mean=res.running_mean, running_var=res.running_var)
    with torch.no_grad():
        _close(ev.y, bn(torch.from_numpy(data["x"])).numpy())


def test_layouts_agree_and_the_two_running_updates_differ_as_stated(data):
    kw = dict(eps=KERAS_BN_EPSILON, running_mean=data["mean"], running_var=data["var"])
    nchw = batchnorm_forward(data["x"], data["gamma"], data["beta"], layout="NCHW", **kw)
    nhwc = batchnorm_forward(_to_nhwc(data["x"]), data["gamma"], data["beta"], layout="NHWC", **kw)
    _close(_to_nhwc(nchw.y), nhwc.y)
    for a, b in zip(batchnorm_backward(data["dy"], nchw.cache),
                    batchnorm_backward(_to_nhwc(data["dy"]), nhwc.cache)):
        _close(_to_nhwc(a) if a.ndim == 4 else a, b)
    # same momentum in each framework's own convention: means agree, variances differ by n/(n-1)
    k = batchnorm_forward(data["x"], data["gamma"], data["beta"], momentum=KERAS_BN_MOMENTUM,
                          running_update="keras", **kw)
    t = batchnorm_forward(data["x"], data["gamma"], data["beta"], momentum=TORCH_BN_MOMENTUM_FROM_KERAS,
                          running_update="torch", **kw)
    n = N * H * W
    _close(k.running_mean, t.running_mean)
    m = TORCH_BN_MOMENTUM_FROM_KERAS
    _close(t.running_var - k.running_var, m * k.batch_var * (n / (n - 1) - 1))
    with pytest.raises(ValueError, match="expected running_update 'keras' or 'torch'"):
        batchnorm_forward(data["x"], data["gamma"], data["beta"], running_update="caffe", **kw)
