"""A framework-free third leg: layers written in NumPy, checked against both Keras and torch
(tests/test_numpy_bn.py), so that a user's hand-written layer has a referee that is neither side.

Spatial batch normalization (Ioffe & Szegedy 2015), one channel axis, statistics over every other axis:

- forward, train mode: normalise with the batch mean and the *biased* batch variance (both frameworks do);
  update the running statistics with either convention (:data:`KERAS_RUNNING_UPDATE`,
  :data:`TORCH_RUNNING_UPDATE`): they differ in what ``momentum`` weighs and in the variance estimator;
- forward, eval mode: normalise with the running statistics;
- backward: ``dx, dgamma, dbeta`` from ``dy``.

NumPy only (plus the number-only :mod:`parity.core.conventions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.conventions import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, TORCH_BN_MOMENTUM_DEFAULT

KERAS_RUNNING_UPDATE = "keras"
"""moving = m * moving + (1 - m) * batch, ``m`` weighs the OLD value (default 0.99), variance BIASED (/n)
(keras/src/layers/normalization/batch_normalization.py)."""
TORCH_RUNNING_UPDATE = "torch"
"""running = (1 - m) * running + m * batch, ``m`` weighs the NEW value (default 0.1), variance UNBIASED
(/(n-1)) (torch/nn/modules/batchnorm.py, ``F.batch_norm``)."""
_DEFAULT_MOMENTUM = {KERAS_RUNNING_UPDATE: KERAS_BN_MOMENTUM, TORCH_RUNNING_UPDATE: TORCH_BN_MOMENTUM_DEFAULT}
#: Channel axis per layout.
CHANNEL_AXIS = {"NCHW": 1, "NHWC": -1}


@dataclass
class BatchNormCache:
    """What :func:`batchnorm_backward` needs from the forward."""

    xhat: np.ndarray
    inv_std: np.ndarray     # 1 / sqrt(var + eps), broadcastable to x
    gamma: np.ndarray       # broadcastable to x
    axes: tuple[int, ...]   # reduction axes (all but the channel axis)
    training: bool


@dataclass
class BatchNormResult:
    y: np.ndarray
    cache: BatchNormCache
    #: batch statistics (train mode; per channel): mean and biased variance
    batch_mean: np.ndarray | None = None
    batch_var: np.ndarray | None = None
    #: running statistics after the update (train mode with running stats given), per channel
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None


def _axes(x: np.ndarray, layout: str) -> tuple[int, tuple[int, ...], list[int]]:
    if layout not in CHANNEL_AXIS:
        raise ValueError(f"batchnorm: expected layout 'NCHW' or 'NHWC'. Received: {layout!r}.")
    c = CHANNEL_AXIS[layout] % x.ndim
    shape = [1] * x.ndim
    shape[c] = x.shape[c]
    return c, tuple(a for a in range(x.ndim) if a != c), shape


def batchnorm_forward(x, gamma, beta, *, eps: float = KERAS_BN_EPSILON, layout: str = "NCHW",
                      training: bool = True, running_mean=None, running_var=None, momentum: float | None = None,
                      running_update: str = KERAS_RUNNING_UPDATE) -> BatchNormResult:
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel.

    ``training=True``: batch mean and biased batch variance; if ``running_mean``/``running_var`` are given,
    they are updated (new arrays returned, inputs untouched) by ``running_update`` (``"keras"`` or
    ``"torch"``) with ``momentum`` in *that* convention (default: that framework's default).
    ``training=False``: ``running_mean``/``running_var`` are required and used for normalisation.
    """
    x = np.asarray(x)
    c, axes, shape = _axes(x, layout)
    g = np.asarray(gamma).reshape(shape)
    b = np.asarray(beta).reshape(shape)
    batch_mean = batch_var = new_mean = new_var = None
    if training:
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        batch_mean, batch_var = mean.reshape(-1), var.reshape(-1)
        if running_mean is not None and running_var is not None:
            n = x.size // x.shape[c]  # values per channel (N*H*W)
            new_mean, new_var = update_running_stats(running_mean, running_var, batch_mean, batch_var, n,
                                                     momentum=momentum, running_update=running_update)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batchnorm eval mode: expected running_mean and running_var. Received: None.")
        mean = np.asarray(running_mean).reshape(shape)
        var = np.asarray(running_var).reshape(shape)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv_std
    return BatchNormResult(y=g * xhat + b,
                           cache=BatchNormCache(xhat=xhat, inv_std=inv_std, gamma=g, axes=axes, training=training),
                           batch_mean=batch_mean, batch_var=batch_var, running_mean=new_mean, running_var=new_var)


def update_running_stats(running_mean, running_var, batch_mean, batch_var, n: int, *,
                         momentum: float | None = None, running_update: str = KERAS_RUNNING_UPDATE):
    """New (running_mean, running_var) from the batch mean and *biased* variance over ``n`` values per
    channel, in the Keras or torch convention (see :data:`KERAS_RUNNING_UPDATE`, :data:`TORCH_RUNNING_UPDATE`)."""
    if running_update not in _DEFAULT_MOMENTUM:
        raise ValueError(f"batchnorm: expected running_update 'keras' or 'torch'. Received: {running_update!r}.")
    m = _DEFAULT_MOMENTUM[running_update] if momentum is None else momentum
    rm, rv = np.asarray(running_mean), np.asarray(running_var)
    if running_update == KERAS_RUNNING_UPDATE:
        return m * rm + (1.0 - m) * batch_mean, m * rv + (1.0 - m) * batch_var
    unbiased = batch_var * (n / (n - 1))
    return (1.0 - m) * rm + m * batch_mean, (1.0 - m) * rv + m * unbiased


def batchnorm_backward(dy, cache: BatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta) for ``dy`` = dL/dy. Train mode differentiates through the batch statistics:

    dx = gamma * inv_std / n * (n * dy - sum(dy) - xhat * sum(dy * xhat)), sums per channel over n values.
    Eval mode: dx = gamma * inv_std * dy.
    """
    dy = np.asarray(dy)
    axes, xhat = cache.axes, cache.xhat
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    if not cache.training:
        return cache.gamma * cache.inv_std * dy, dgamma, dbeta
    n = dy.size // dbeta.size
    sum_dy = dy.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = cache.gamma * cache.inv_std / n * (n * dy - sum_dy - xhat * sum_dy_xhat)
    return dx, dgamma, dbeta
