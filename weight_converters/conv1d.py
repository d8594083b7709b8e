"""1-D convolution, Keras <-> torch, as pure numpy.

=========  ===============================  =========================================
Keras      Keras variable (layout)          torch key (layout)
=========  ===============================  =========================================
Conv1D     kernel (k, in/g, out)            weight (out, in/g, k): transpose(2, 1, 0)
           bias (out,)                      bias (out,)
=========  ===============================  =========================================

Origins: keras/src/layers/convolutional/base_conv.py (``kernel_shape = kernel_size + (input_channel // groups,
filters)``), torch/nn/modules/conv.py (``Conv1d.weight``: (out_channels, in_channels / groups, kernel_size))."""
from __future__ import annotations

from weight_converters.renamed import RenamedFamily

CONV1D_LAYOUT = "Conv1D kernel (k,in,out) -> Conv1d weight (out,in,k): transpose(2,1,0)"


def _to_torch(kind, var, a):
    return a.transpose(2, 1, 0) if var == "kernel" else a


def _to_keras(kind, var, w, shape):
    return w.transpose(2, 1, 0) if var == "kernel" else w


FAMILY = RenamedFamily({"conv1d": {"kernel": "weight", "bias": "bias"}}, {"conv1d": CONV1D_LAYOUT},
                       _to_torch, _to_keras)
KINDS = FAMILY.KINDS
