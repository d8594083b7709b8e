"""1-D layers TensorFlow/Keras has and torch lacks, exact to the reference semantics (the 1-D counterparts of
:mod:`ported_torch.layers`):

- :class:`Conv1dSame`: TF ``padding="same"`` on an (N, C, L) sequence at any stride, which pads
  ``pad_total // 2`` on the left and the extra step on the right (``parity.core.families.conv1d.TF_SAME_1D``).
  torch's ``nn.Conv1d(padding="same")`` refuses a stride above 1, and ``nn.Conv1d(k, stride=2, padding=k // 2)``
  pads both sides: on an even length that shifts every window by one step.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ported_torch.layers import tf_same_pads


class Conv1dSame(nn.Conv1d):
    """``nn.Conv1d`` with TF 'same' padding computed from the input length (asymmetric when needed). Parameters
    keep ``nn.Conv1d``'s names (``weight``, ``bias``); ``groups`` works as in ``nn.Conv1d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
                         groups=groups, bias=bias)
        self.tf_padding = "same"

    def forward(self, x):
        left, right = tf_same_pads(x.shape[-1], self.kernel_size[0], self.stride[0], self.dilation[0])
        if left == right:
            return F.conv1d(x, self.weight, self.bias, self.stride, left, self.dilation, self.groups)
        return F.conv1d(F.pad(x, (left, right)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
