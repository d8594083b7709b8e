"""Layers TensorFlow/Keras (and Caffe) have and torch lacks, exact to the reference semantics.

Every port of the project takes these from here (one module for every pair):

- :class:`Conv2dSame` / :class:`MaxPool2dSame` / :class:`AvgPool2dSame`: TF ``padding="same"``, which pads
  the extra pixel bottom/right (``parity.core.conventions.TF_SAME_PADDING``). ``nn.MaxPool2d(3, 2, padding=1)``
  is *not* this: on an even input it pads top/left too and shifts every window (max |diff| ~3 measured).
- :class:`SeparableConv2d`: Keras ``SeparableConv2D`` = depthwise (``groups=in``) then 1x1 pointwise; the bias,
  if any, lives on the pointwise conv.
- :class:`Add`, :class:`Concat`, :class:`GlobalAvgPool2d`, :class:`FlattenHWC`: functional ops as modules, so
  that forward hooks can tap them (a tapped tensor must be a module output).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF 'same' along one axis (see ``parity.core.conventions.TF_SAME_PADDING``)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def same_pads_2d(x, kernel_size, stride, dilation=(1, 1)) -> tuple[int, int, int, int]:
    """``F.pad`` order (left, right, top, bottom) of TF 'same' for an NCHW input."""
    top, bottom = tf_same_pads(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = tf_same_pads(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return left, right, top, bottom


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'same' padding computed from the input size (asymmetric when needed).

    Parameters keep ``nn.Conv2d``'s names (``weight``, ``bias``), so state_dict keys do not change.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)
        self.tf_padding = "same"

    def forward(self, x):
        left, right, top, bottom = same_pads_2d(x, self.kernel_size, self.stride, self.dilation)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _PoolSame(nn.Module):
    """A TF ``padding="same"`` pooling window: stride defaults to the window (as in Keras)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.tf_padding = "same"

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding='same' (TF)"


class MaxPool2dSame(_PoolSame):
    """TF ``MaxPool2D(padding="same")``: pad with -inf (padding never wins), extra pixel bottom/right."""

    def forward(self, x):
        x = F.pad(x, same_pads_2d(x, self.kernel_size, self.stride), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPool2dSame(_PoolSame):
    """TF ``AveragePooling2D(padding="same")``: padded cells are excluded from the count."""

    def forward(self, x):
        pads = same_pads_2d(x, self.kernel_size, self.stride)
        ones = torch.ones_like(x[:1, :1])
        xs = F.avg_pool2d(F.pad(x, pads), self.kernel_size, self.stride, divisor_override=1)
        ns = F.avg_pool2d(F.pad(ones, pads), self.kernel_size, self.stride, divisor_override=1)
        return xs / ns


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: depthwise conv (``groups=in``, ``depth_multiplier`` outputs per channel)
    followed by a 1x1 pointwise conv. ``padding="same"`` follows TF. Keys: ``depthwise.weight``,
    ``pointwise.weight`` (+ ``pointwise.bias`` when ``bias=True``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="same", depth_multiplier=1,
                 bias=True):
        super().__init__()
        mid = in_channels * depth_multiplier
        if padding == "same":
            self.depthwise = Conv2dSame(in_channels, mid, kernel_size, stride=stride, groups=in_channels, bias=False)
        else:
            self.depthwise = nn.Conv2d(in_channels, mid, kernel_size, stride=stride, padding=0,
                                       groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(mid, out_channels, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class Add(nn.Module):
    """``keras.layers.Add`` as a module (tappable)."""

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """``keras.layers.Concatenate`` as a module; ``dim`` in torch's NCHW (channels = 1)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)


class GlobalAvgPool2d(nn.Module):
    """``keras.layers.GlobalAveragePooling2D``: mean over H, W -> (N, C)."""

    def forward(self, x):
        return x.mean(dim=(-2, -1))


class FlattenHWC(nn.Module):
    """Flatten an NCHW tensor in Keras' HWC order (``parity.core.conventions.KERAS_FLATTEN_ORDER``), so a Dense
    kernel copied with a plain transpose works. The alternative: ``nn.Flatten`` (CHW) and a converter that
    reorders the Dense kernel rows (``weight_converters.keras.dense_kernel_to_torch(..., flatten_chw=...)``)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class ChannelSlice(nn.Module):
    """``x[:, start:stop]`` of an NCHW tensor, as a module (tappable): one stream of a channel-stacked input,
    e.g. GOTURN's target (0:3) and image (3:6) crops (``parity.core.goturn_net.STACKED_INPUT_CHANNELS``)."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = int(start), int(stop)

    def forward(self, x):
        return x[:, self.start:self.stop]

    def extra_repr(self):
        return f"start={self.start}, stop={self.stop}"
