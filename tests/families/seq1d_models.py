"""A tiny 1-D model of any length for ``parity check --reference ... --port ... --input-shape L,4`` (user mode):
a SeparableConv1D, a stride-2 'same' Conv1D, UpSampling1D and GlobalMaxPooling1D, and its torch port written the
natural way (channels-first, TF 'same' through ``ported_torch.layers1d.Conv1dSame``)."""
from __future__ import annotations


def keras_tiny_seq(input_shape=(None, 4)):
    import keras
    from keras import layers

    x_in = keras.Input(tuple(input_shape))
    x = layers.SeparableConv1D(8, 3, padding="same", activation="relu", name="sep")(x_in)
    x = layers.Conv1D(8, 4, strides=2, padding="same", name="down")(x)
    x = layers.UpSampling1D(3, name="up")(x)
    x = layers.GlobalMaxPooling1D(name="gmp")(x)
    return keras.Model(x_in, layers.Dense(2, name="fc")(x))


def torch_tiny_seq(**_):
    import torch.nn.functional as F
    from torch import nn

    from ported_torch.layers1d import Conv1dSame

    class TinySeq(nn.Module):
        def __init__(self):
            super().__init__()
            self.depthwise = nn.Conv1d(4, 4, 3, padding=1, groups=4, bias=False)
            self.pointwise = nn.Conv1d(4, 8, 1)
            self.down = Conv1dSame(8, 8, 4, stride=2)
            self.up = nn.Upsample(scale_factor=3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = F.relu(self.pointwise(self.depthwise(x)))
            x = self.up(self.down(x))
            return self.fc(x.amax(dim=-1))

    return TinySeq()
