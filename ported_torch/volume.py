"""PyTorch port of ``reference_keras/volume.py`` (a small 3-D CNN), written the natural torch way:

- the port reads torch's (N, C, D, H, W); parity moves the reference's (N, D, H, W, C) there;
- a 3x3x3 stride-1 'same' Conv3D is ``nn.Conv3d(padding=1)`` (symmetric, as TF pads an odd kernel at stride 1);
- the stride-2 'same' Conv3D and the 3x3x3/2 'same' MaxPooling3D pad the extra cell after on even sizes:
  ``ported_torch.layers3d.Conv3dSame`` / ``MaxPool3dSame`` (``parity.core.families.conv3d.TF_SAME_3D``);
- activations fused into the Keras layers are ``F.relu`` calls in ``forward``; the model returns **logits**
  (the reference's softmax belongs to ``F.cross_entropy``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ported_torch.layers3d import Conv3dSame, MaxPool3dSame


class VolumeCNN(nn.Module):
    def __init__(self, in_channels=1, filters=4, num_classes=3, pooling=False):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, filters, 3, padding=1)
        self.conv2 = Conv3dSame(filters, 2 * filters, 3, stride=2)
        self.pool = MaxPool3dSame(3, 2) if pooling else None
        self.avgpool = nn.AvgPool3d((1, 2, 2)) if pooling else None
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(2 * filters, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        if self.pool is not None:
            x = self.avgpool(self.pool(x))
        return self.classifier(self.gap(x).flatten(1))


def volume_cnn(input_shape=(8, 16, 16, 1), filters=4, num_classes=3, pooling=False):
    return VolumeCNN(in_channels=input_shape[-1], filters=filters, num_classes=num_classes, pooling=pooling)


def volume_cnn_pooled(**kw):
    return volume_cnn(pooling=True, **kw)
