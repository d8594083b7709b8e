"""Small reference models and ports for the family tests (built lazily: frameworks import inside)."""
from __future__ import annotations


def keras_gru_reset_before(input_shape=(6, 4)):
    """Keras 2's GRU default (reset_after=False): torch nn.GRU cannot express it."""
    import keras

    x = keras.Input(input_shape)
    y = keras.layers.GRU(3, reset_after=False, name="gru")(x)
    return keras.Model(x, keras.layers.Dense(2, name="out")(y))


def keras_conv3d(input_shape=(4, 4, 4, 2)):
    import keras

    x = keras.Input(input_shape)
    y = keras.layers.Conv3D(3, 2, name="conv3d")(x)
    return keras.Model(x, keras.layers.Flatten(name="flat")(y))


def torch_small(**_):
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
