"""3-D convolution, Keras <-> torch, as pure numpy (the 3-D poolings and global poolings carry no weights).

=========  ===================================  ===================================================
Keras      Keras variable (layout)              torch key (layout)
=========  ===================================  ===================================================
Conv3D     kernel (kd, kh, kw, in/g, out)       weight (out, in/g, kd, kh, kw): transpose(4,3,0,1,2)
           bias (out,)                          bias (out,)
=========  ===================================  ===================================================

Origins: keras/src/layers/convolutional/base_conv.py (``kernel_shape = kernel_size + (input_channel // groups,
filters)``; Conv3D in keras/src/layers/convolutional/conv3d.py), torch/nn/modules/conv.py (``Conv3d.weight``:
(out_channels, in_channels / groups, kD, kH, kW)). Measured on Keras 3.15: ``Conv3D(8, (3, 2, 1))`` on 4 input
channels has a kernel of shape (3, 2, 1, 4, 8)."""
from __future__ import annotations

import numpy as np

from weight_converters.renamed import RenamedFamily

#: Keras kernel axes (kd, kh, kw, in, out) -> torch (out, in, kd, kh, kw)
KERAS_TO_TORCH_AXES = (4, 3, 0, 1, 2)
#: torch weight axes (out, in, kd, kh, kw) -> Keras (kd, kh, kw, in, out)
TORCH_TO_KERAS_AXES = (2, 3, 4, 1, 0)
CONV3D_LAYOUT = ("Conv3D kernel (kd,kh,kw,in,out) DHWIO -> Conv3d weight (out,in,kd,kh,kw) OIDHW: "
                 "transpose(4,3,0,1,2)")


def kernel_to_torch(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k)
    if k.ndim != 5:
        raise ValueError(f"expected a Conv3D kernel of 5 axes (kd, kh, kw, in, out). Received: shape {k.shape}.")
    return np.ascontiguousarray(k.transpose(KERAS_TO_TORCH_AXES))


def kernel_to_keras(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 5:
        raise ValueError(f"expected a Conv3d weight of 5 axes (out, in, kd, kh, kw). Received: shape {w.shape}.")
    return np.ascontiguousarray(w.transpose(TORCH_TO_KERAS_AXES))


def _to_torch(kind, var, a):
    return kernel_to_torch(a) if var == "kernel" else a


def _to_keras(kind, var, w, shape):
    return kernel_to_keras(w) if var == "kernel" else w


FAMILY = RenamedFamily({"conv3d": {"kernel": "weight", "bias": "bias"}}, {"conv3d": CONV3D_LAYOUT},
                       _to_torch, _to_keras)
KINDS = FAMILY.KINDS
