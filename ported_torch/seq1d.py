"""PyTorch port of ``reference_keras/seq1d.py``, written the natural torch way:

- the port reads torch's (N, C, L); parity moves the reference's (N, L, C) there;
- the stride-2 'same' Conv1D pads the extra step on the right: ``ported_torch.layers1d.Conv1dSame``
  (``parity.core.families.conv1d.TF_SAME_1D``);
- DepthwiseConv1D is ``nn.Conv1d(c, 2c, 3, groups=c)``; SeparableConv1D a depthwise Conv1d (no bias) feeding a
  kernel-1 Conv1d; a grouped Conv1D is ``nn.Conv1d(groups=3)``;
- the kernel-4 stride-2 'same' Conv1DTranspose is ``nn.ConvTranspose1d(padding=1)`` ((k - s) // 2 cropped at the
  start: ``parity.core.families.upsampling.same_transpose_crop``);
- UpSampling1D is ``nn.Upsample(scale_factor=2)`` (nearest: each step repeated); ZeroPadding1D(1) + a 'valid'
  Conv1D is ``nn.Conv1d(padding=1)``; Cropping1D is a slice; GlobalMaxPooling1D is ``nn.AdaptiveMaxPool1d(1)``
  then flatten;
- activations fused into the Keras layers are ``F.relu`` calls in ``forward``; the model returns **logits**.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ported_torch.layers1d import Conv1dSame


class Seq1DNet(nn.Module):
    def __init__(self, channels=4, filters=6, num_classes=3):
        super().__init__()
        f = filters
        self.conv_s2 = Conv1dSame(channels, f, 3, stride=2)
        self.dw = nn.Conv1d(f, 2 * f, 3, padding=1, groups=f)
        self.sep_depthwise = nn.Conv1d(2 * f, 4 * f, 3, padding=1, groups=2 * f, bias=False)
        self.sep_pointwise = nn.Conv1d(4 * f, 2 * f, 1)
        self.grouped = nn.Conv1d(2 * f, 2 * f, 3, padding=1, groups=3)
        self.tconv = nn.ConvTranspose1d(2 * f, f, 4, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv1d(f, f, 3, padding=1)
        self.gmp = nn.AdaptiveMaxPool1d(1)
        self.classifier = nn.Linear(f, num_classes)

    def forward(self, x):
        x = F.relu(self.conv_s2(x))
        x = self.dw(x)
        x = F.relu(self.sep_pointwise(self.sep_depthwise(x)))
        x = self.grouped(x)
        x = self.up(F.relu(self.tconv(x)))
        x = self.conv(x)[:, :, 1:-2]
        return self.classifier(self.gmp(x).flatten(1))


def seq1d_net(input_shape=(16, 4), filters=6, num_classes=3):
    return Seq1DNet(channels=input_shape[-1], filters=filters, num_classes=num_classes)
