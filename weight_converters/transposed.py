"""Transposed convolution, Keras <-> torch, as pure numpy (UpSampling / ZeroPadding / Cropping carry no weights).

===============  ======================================  ==============================================
Keras layer      Keras variable (layout)                 torch key (layout)
===============  ======================================  ==============================================
Conv2DTranspose  kernel (kh, kw, out, in)                weight (in, out, kh, kw): transpose(3, 2, 0, 1)
                 bias (out,)                             bias (out,)
===============  ======================================  ==============================================

Both compute the adjoint of a correlation: no kernel flip. Origins: keras/src/layers/convolutional/
base_conv_transpose.py (``kernel_shape = kernel_size + (filters, input_channel)``), torch/nn/modules/conv.py
(``ConvTranspose2d.weight``: (in_channels, out_channels / groups, kh, kw))."""
from __future__ import annotations

import numpy as np

from weight_converters.renamed import RenamedFamily

CONV_TRANSPOSE_LAYOUT = "Conv2DTranspose kernel (kh,kw,out,in) -> ConvTranspose2d weight (in,out,kh,kw): transpose(3,2,0,1)"


def _to_torch(kind, var, a):
    return a.transpose(3, 2, 0, 1) if var == "kernel" else a


def _to_keras(kind, var, w, shape):
    return w.transpose(2, 3, 1, 0) if var == "kernel" else w


FAMILY = RenamedFamily({"conv2d_transpose": {"kernel": "weight", "bias": "bias"}},
                       {"conv2d_transpose": CONV_TRANSPOSE_LAYOUT}, _to_torch, _to_keras)
KINDS = FAMILY.KINDS
