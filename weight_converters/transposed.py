"""Transposed convolution, Keras <-> torch, as pure numpy (UpSampling / ZeroPadding / Cropping carry no weights).

===============  ======================================  ==============================================
Keras layer      Keras variable (layout)                 torch key (layout)
===============  ======================================  ==============================================
Conv2DTranspose  kernel (kh, kw, out, in)                weight (in, out, kh, kw): transpose(3, 2, 0, 1)
                 bias (out,)                             bias (out,)
Conv1DTranspose  kernel (k, out, in)                     weight (in, out, k): transpose(2, 1, 0)
                 bias (out,)                             bias (out,)
===============  ======================================  ==============================================

Both compute the adjoint of a correlation: no kernel flip. Origins: keras/src/layers/convolutional/
base_conv_transpose.py (``kernel_shape = kernel_size + (filters, input_channel)``), torch/nn/modules/conv.py
(``ConvTranspose2d.weight``: (in_channels, out_channels / groups, kh, kw); ``ConvTranspose1d.weight``:
(in_channels, out_channels / groups, k)). Measured on Keras 3.15: ``Conv1DTranspose(5, 3)`` on 4 channels has a
kernel of shape (3, 5, 4)."""
from __future__ import annotations

import numpy as np

from weight_converters.renamed import RenamedFamily

CONV_TRANSPOSE_LAYOUT = "Conv2DTranspose kernel (kh,kw,out,in) -> ConvTranspose2d weight (in,out,kh,kw): transpose(3,2,0,1)"
CONV_TRANSPOSE1D_LAYOUT = "Conv1DTranspose kernel (k,out,in) -> ConvTranspose1d weight (in,out,k): transpose(2,1,0)"


def _to_torch(kind, var, a):
    if var != "kernel":
        return a
    if kind == "conv1d_transpose":
        if a.ndim != 3:
            raise ValueError(f"expected a Conv1DTranspose kernel of 3 axes (k, out, in). Received: shape {a.shape}.")
        return a.transpose(2, 1, 0)
    return a.transpose(3, 2, 0, 1)


def _to_keras(kind, var, w, shape):
    if var != "kernel":
        return w
    return w.transpose(2, 1, 0) if kind == "conv1d_transpose" else w.transpose(2, 3, 1, 0)


FAMILY = RenamedFamily({"conv2d_transpose": {"kernel": "weight", "bias": "bias"},
                        "conv1d_transpose": {"kernel": "weight", "bias": "bias"}},
                       {"conv2d_transpose": CONV_TRANSPOSE_LAYOUT, "conv1d_transpose": CONV_TRANSPOSE1D_LAYOUT},
                       _to_torch, _to_keras)
KINDS = FAMILY.KINDS
