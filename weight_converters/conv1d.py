"""1-D convolution, Keras <-> torch, as pure numpy.

===============  ===============================  ===============================================
Keras            Keras variable (layout)          torch key (layout)
===============  ===============================  ===============================================
Conv1D           kernel (k, in/g, out)            weight (out, in/g, k): transpose(2, 1, 0)
                 bias (out,)                      bias (out,)
DepthwiseConv1D  kernel (k, in, mult)             weight (in*mult, 1, k): out channel c*mult + m
                 bias (in*mult,)                  bias (in*mult,)
SeparableConv1D  depthwise_kernel (k, in, mult)   depthwise.weight (in*mult, 1, k): c*mult + m
                 pointwise_kernel (1, in*mult,    pointwise.weight (out, in*mult, 1):
                 out)                             transpose(2, 1, 0)
                 bias (out,)                      pointwise.bias (out,)
===============  ===============================  ===============================================

A torch depthwise conv is ``nn.Conv1d(in, in*mult, k, groups=in)``: group c makes output channels
c*mult .. c*mult + mult - 1, the order TF's depthwise conv writes them in (Keras' (k, in, mult) kernel
reshaped to (k, in*mult)). Measured on Keras 3.15: ``SeparableConv1D(6, 3, depth_multiplier=2)`` on 4 channels
has depthwise_kernel (3, 4, 2), pointwise_kernel (1, 8, 6), bias (6,); ``DepthwiseConv1D(3, depth_multiplier=2)``
kernel (3, 4, 2), bias (8,); ``Conv1D(6, 3, groups=2)`` kernel (3, 2, 6).

Origins: keras/src/layers/convolutional/base_conv.py (``kernel_shape = kernel_size + (input_channel // groups,
filters)``), keras/src/layers/convolutional/base_depthwise_conv.py (``kernel_size + (input_channel,
depth_multiplier)``), keras/src/layers/convolutional/base_separable_conv.py (``depthwise_kernel_shape``,
``pointwise_kernel_shape = (1,) * rank + (depth_multiplier * input_dim, filters)``), torch/nn/modules/conv.py
(``Conv1d.weight``: (out_channels, in_channels / groups, kernel_size))."""
from __future__ import annotations

import numpy as np

from weight_converters.renamed import RenamedFamily

CONV1D_LAYOUT = "Conv1D kernel (k,in,out) -> Conv1d weight (out,in,k): transpose(2,1,0)"
DEPTHWISE1D_LAYOUT = ("DepthwiseConv1D kernel (k,in,mult) -> Conv1d(groups=in) weight (in*mult,1,k), "
                      "out channel = c*mult + m")
SEPARABLE1D_LAYOUT = ("SeparableConv1D depthwise_kernel (k,in,mult) -> depthwise.weight (in*mult,1,k) (c*mult + m); "
                      "pointwise_kernel (1,in*mult,out) -> pointwise.weight (out,in*mult,1): transpose(2,1,0)")


def depthwise_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    """Keras (k, in, mult) -> torch (in*mult, 1, k), output channel c*mult + m."""
    k = np.asarray(k)
    if k.ndim != 3:
        raise ValueError(f"expected a 1-D depthwise kernel of 3 axes (k, in, mult). Received: shape {k.shape}.")
    n, cin, mult = k.shape
    return np.ascontiguousarray(k.reshape(n, cin * mult).T[:, None, :])


def depthwise_kernel_to_keras(w: np.ndarray, depth_multiplier: int = 1) -> np.ndarray:
    """torch (in*mult, 1, k) -> Keras (k, in, mult)."""
    w = np.asarray(w)
    if w.ndim != 3 or w.shape[1] != 1:
        raise ValueError(f"expected a depthwise Conv1d weight (in*mult, 1, k). Received: shape {w.shape}.")
    cm, _, n = w.shape
    return np.ascontiguousarray(w[:, 0].T.reshape(n, cm // depth_multiplier, depth_multiplier))


def _to_torch(kind, var, a):
    if var == "depthwise_kernel" or (kind == "depthwise_conv1d" and var == "kernel"):
        return depthwise_kernel_to_torch(a)
    return a.transpose(2, 1, 0) if var in ("kernel", "pointwise_kernel") else a


def _to_keras(kind, var, w, shape):
    if var == "depthwise_kernel" or (kind == "depthwise_conv1d" and var == "kernel"):
        return depthwise_kernel_to_keras(w, int(shape[2]) if shape is not None and len(shape) == 3 else 1)
    return w.transpose(2, 1, 0) if var in ("kernel", "pointwise_kernel") else w


FAMILY = RenamedFamily(
    {"conv1d": {"kernel": "weight", "bias": "bias"},
     # Keras 2 named the depthwise kernel ``depthwise_kernel``, Keras 3 ``kernel``
     "depthwise_conv1d": {"kernel": "weight", "depthwise_kernel": "weight", "bias": "bias"},
     "separable_conv1d": {"depthwise_kernel": "depthwise.weight", "pointwise_kernel": "pointwise.weight",
                          "bias": "pointwise.bias"}},
    {"conv1d": CONV1D_LAYOUT, "depthwise_conv1d": DEPTHWISE1D_LAYOUT, "separable_conv1d": SEPARABLE1D_LAYOUT},
    _to_torch, _to_keras)
KINDS = FAMILY.KINDS
