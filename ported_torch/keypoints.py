"""PyTorch facial-keypoints CNN, as published (one ``Net`` of the Udacity facial-keypoints project, udacity/P1_Facial_Keypoints
``models.py``, which each student fills with a net of their own), faithful to
``reference_keras/keypoints.py``:

``conv_sandwich`` = ``nn.Conv2d(3x3, stride 1, padding=1)`` -> ``nn.MaxPool2d(2, 2)`` -> ``nn.ReLU``, four times
(32, 64, 128, 256 filters; 96 -> 48 -> 24 -> 12 -> 6), ``nn.Flatten`` (CHW order, as the published model:
the converter reorders the Keras fc1 kernel rows from HWC, ``parity.core.conventions.TORCH_FLATTEN_ORDER``),
fc1 256*6*6 -> 256, ReLU, fc2 -> 30, optional Tanh (``final_tanh=True``).

For a 3x3 stride-1 conv, torch ``padding=1`` *is* TF 'same' (pad_total 2, split 1/1), so no ``Conv2dSame``.
ReLUs are modules, never inplace (tapped tensors).

Initialisation (``init="published"``, the default): ``kaiming_normal_`` on conv and fc1 weights,
``xavier_normal_`` on fc2's, biases left at torch's default (uniform +-1/sqrt(fan_in)). Keras' defaults
differ (``glorot_uniform`` kernels, zero biases); ``init="torch"`` keeps torch's own defaults
(``kaiming_uniform_(a=sqrt(5))``). Parity copies weights, so this matters for training from scratch only.
"""
from __future__ import annotations

from torch import nn

SANDWICH_FILTERS = (32, 64, 128, 256)
NUM_OUTPUTS = 30
FC1_UNITS = 256
#: Conv padding that equals TF 'same' for a 3x3 stride-1 kernel (parity.core.conventions.TF_SAME_PADDING).
SAME_PADDING_3X3 = 1


class ConvSandwich(nn.Module):
    """conv 3x3 pad 1 -> max-pool 2/2 -> ReLU (the published order: pool *before* the ReLU)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=1, padding=SAME_PADDING_3X3)
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.pool(self.conv(x)))


class KeypointsCNN(nn.Module):
    def __init__(self, in_channels=1, num_outputs=NUM_OUTPUTS, input_size=96, final_tanh=False, init="published"):
        super().__init__()
        chans = (in_channels,) + SANDWICH_FILTERS
        for i in range(len(SANDWICH_FILTERS)):
            setattr(self, f"sandwich{i + 1}", ConvSandwich(chans[i], chans[i + 1]))
        side = input_size // 2 ** len(SANDWICH_FILTERS)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(SANDWICH_FILTERS[-1] * side * side, FC1_UNITS)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(FC1_UNITS, num_outputs)
        self.tanh = nn.Tanh() if final_tanh else None
        if init == "published":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)
            nn.init.kaiming_normal_(self.fc1.weight)
            nn.init.xavier_normal_(self.fc2.weight)
        elif init != "torch":
            raise ValueError(f"KeypointsCNN: expected init 'published' or 'torch'. Received: {init!r}.")

    def forward(self, x):
        for i in range(len(SANDWICH_FILTERS)):
            x = getattr(self, f"sandwich{i + 1}")(x)
        x = self.fc2(self.fc1_relu(self.fc1(self.flatten(x))))
        return self.tanh(x) if self.tanh is not None else x


def keypoints_cnn(input_shape=(96, 96, 1), num_outputs=NUM_OUTPUTS, final_tanh=False, **kwargs):
    """Builder with the reference's signature (``input_shape`` is NHWC, as in Keras)."""
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"keypoints_cnn: expected a square input. Received: input_shape={tuple(input_shape)}.")
    return KeypointsCNN(in_channels=c, num_outputs=num_outputs, input_size=h, final_tanh=final_tanh, **kwargs)
