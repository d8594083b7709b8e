"""PyTorch port of ``reference_keras/encdec.py`` (a two-level U-Net with a classification head):

- 3x3 stride-1 'same' convs are ``padding=1`` (TF pads (1, 1): symmetric);
- ``Conv2DTranspose(k=3, s=2, padding='same')`` crops (k - s) // 2 = 0 at the start of the full output: no
  ``ConvTranspose2d(padding, output_padding)`` does that, so ``ConvTranspose2dSame`` crops by hand
  (``parity.core.families.upsampling.CONV_TRANSPOSE_SAME``); ``padding=1, output_padding=1`` is one pixel off;
- ``UpSampling2D(2)`` is ``nn.Upsample(scale_factor=2, mode='nearest')``;
- ``Concatenate()`` on Keras' last (channel) axis is ``torch.cat(dim=1)``, in the same order;
- the model returns **logits**: the reference's softmax belongs to ``F.cross_entropy``.
"""
from __future__ import annotations

import torch
from torch import nn

from parity.core.families.upsampling import same_transpose_crop
from ported_torch.layers import GlobalAvgPool2d


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """``ConvTranspose2d`` with Keras/TF 'same': output = input * stride, the first (k - s) // 2 rows/columns
    of the full transposed output cropped."""

    def forward(self, x):
        out = super().forward(x)
        (ph, _), (pw, _) = (same_transpose_crop(self.kernel_size[i], self.stride[i]) for i in (0, 1))
        h, w = x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1]
        return out[..., ph:ph + h, pw:pw + w]


class Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class ConvReLU(nn.Conv2d):
    """``Conv2D(..., activation='relu')``: Keras fuses the activation into the layer (one output to compare)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def _conv(cin, cout):
    return ConvReLU(cin, cout, 3, padding=1)


class EncoderDecoder(nn.Module):
    def __init__(self, input_shape=(16, 16, 3), width=8, num_classes=3, *, transpose=None, upsample=None,
                 skip_order="keras"):
        super().__init__()
        c = input_shape[-1]
        self.skip_order = skip_order
        self.enc1 = _conv(c, width)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = _conv(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.bottleneck = _conv(2 * width, 2 * width)
        self.up2 = upsample or nn.Upsample(scale_factor=2, mode="nearest")
        self.skip2 = Concat()
        self.dec2 = _conv(4 * width, 2 * width)
        self.up1 = transpose or ConvTranspose2dSame(2 * width, width, 3, stride=2)
        self.skip1 = Concat()
        self.dec1 = _conv(2 * width, width)
        self.gap = GlobalAvgPool2d()
        self.classifier = nn.Linear(width, num_classes)

    def _cat(self, cat, up, skip):
        return cat(skip, up) if self.skip_order == "reversed" else cat(up, skip)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        b = self.bottleneck(self.pool2(e2))
        d2 = self.dec2(self._cat(self.skip2, self.up2(b), e2))
        d1 = self.dec1(self._cat(self.skip1, self.up1(d2), e1))
        return self.classifier(self.gap(d1))


def encoder_decoder(**cfg) -> EncoderDecoder:
    return EncoderDecoder(**cfg)
