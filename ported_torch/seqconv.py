"""PyTorch port of ``reference_keras/seqconv.py`` (a 1-D CNN over sequences):

- the port takes Keras' (N, L, C) and transposes once to torch's (N, C, L);
- ``padding='causal'`` is a left pad of (k - 1) * dilation before a padding-0 Conv1d (``CausalConv1d``;
  ``parity.core.families.conv1d.causal_pad``); torch has no causal mode;
- ``padding='same'`` with an even kernel pads the extra step on the right: torch ``padding='same'`` does the
  same, ``padding=p`` would not;
- activations fused into the Keras layers are applied inside the conv modules (one output to compare);
- the model returns **logits**: the reference's softmax belongs to ``F.cross_entropy``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parity.core.families.conv1d import causal_pad
from ported_torch.transformer import GlobalAvgPool1d


class CausalConv1d(nn.Conv1d):
    """``Conv1D(padding='causal', activation='relu')``."""

    def __init__(self, *args, dilation=1, **kw):
        super().__init__(*args, dilation=dilation, padding=0, **kw)
        self.causal_pad = causal_pad(self.kernel_size[0], dilation)

    def forward(self, x):
        return torch.relu(super().forward(F.pad(x, (self.causal_pad, 0))))


class ConvReLU1d(nn.Conv1d):
    def forward(self, x):
        return torch.relu(super().forward(x))


class SequenceCNN(nn.Module):
    def __init__(self, seq_len=32, channels=4, filters=8, num_classes=3, *, conv1=None, conv2_padding="same"):
        super().__init__()
        self.conv1 = conv1 or CausalConv1d(channels, filters, 5)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = ConvReLU1d(filters, 2 * filters, 4, padding=conv2_padding, dilation=2)
        self.gap = GlobalAvgPool1d()
        self.classifier = nn.Linear(2 * filters, num_classes)

    def forward(self, x):
        x = self.conv2(self.pool1(self.conv1(x.transpose(1, 2))))  # Keras' (N, L, C) -> torch's (N, C, L)
        return self.classifier(self.gap(x.transpose(1, 2)))  # back to (N, L, C): Keras' pooling, Keras' layout


def sequence_cnn(**cfg) -> SequenceCNN:
    return SequenceCNN(**cfg)
