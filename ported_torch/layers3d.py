"""3-D layers TensorFlow/Keras has and torch lacks, exact to the reference semantics (the 3-D counterparts of
:mod:`ported_torch.layers`):

- :class:`Conv3dSame` / :class:`MaxPool3dSame` / :class:`AvgPool3dSame`: TF ``padding="same"`` on an NCDHW
  volume, which pads ``pad_total // 2`` before and the extra cell after on every axis (back, bottom, right:
  ``parity.core.families.conv3d.TF_SAME_3D``). ``nn.Conv3d(k, stride=2, padding=k // 2)`` is *not* this on an
  even size: it pads before too and shifts every window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ported_torch.layers import tf_same_pads


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def same_pads_3d(x, kernel_size, stride, dilation=(1, 1, 1)) -> tuple[int, ...]:
    """``F.pad`` order (w_before, w_after, h_before, h_after, d_before, d_after) of TF 'same' for NCDHW."""
    out: list[int] = []
    for axis in (2, 1, 0):  # F.pad lists the last axis first
        out += tf_same_pads(x.shape[2 + axis], kernel_size[axis], stride[axis], dilation[axis])
    return tuple(out)


class Conv3dSame(nn.Conv3d):
    """``nn.Conv3d`` with TF 'same' padding computed from the input size (asymmetric when needed). Parameters
    keep ``nn.Conv3d``'s names (``weight``, ``bias``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)
        self.tf_padding = "same"

    def forward(self, x):
        pads = same_pads_3d(x, self.kernel_size, self.stride, self.dilation)
        if all(pads[i] == pads[i + 1] for i in (0, 2, 4)):
            return F.conv3d(x, self.weight, self.bias, self.stride, (pads[4], pads[2], pads[0]), self.dilation,
                            self.groups)
        return F.conv3d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _Pool3dSame(nn.Module):
    """A TF ``padding="same"`` 3-D pooling window: stride defaults to the window (as in Keras)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride if stride is not None else kernel_size)
        self.tf_padding = "same"

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding='same' (TF)"


class MaxPool3dSame(_Pool3dSame):
    """TF ``MaxPooling3D(padding="same")``: pad with -inf (padding never wins), extra cell after."""

    def forward(self, x):
        x = F.pad(x, same_pads_3d(x, self.kernel_size, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel_size, self.stride)


class AvgPool3dSame(_Pool3dSame):
    """TF ``AveragePooling3D(padding="same")``: padded cells are left out of the count."""

    def forward(self, x):
        pads = same_pads_3d(x, self.kernel_size, self.stride)
        ones = torch.ones_like(x[:1, :1])
        xs = F.avg_pool3d(F.pad(x, pads), self.kernel_size, self.stride, divisor_override=1)
        ns = F.avg_pool3d(F.pad(ones, pads), self.kernel_size, self.stride, divisor_override=1)
        return xs / ns
