"""A small 1-D network over sequences that uses every 1-D layer Keras has beyond the plain Conv1D. Input (N, L, C)
= (N, 16, 4) by default.

- :func:`seq1d_net`: a stride-2 'same' Conv1D (TF pads the extra step on the right on an even length), a
  DepthwiseConv1D (depth_multiplier 2), a SeparableConv1D, a grouped Conv1D (groups=3), a 'same' Conv1DTranspose
  (kernel 4, stride 2), UpSampling1D, ZeroPadding1D + a 'valid' Conv1D, Cropping1D, GlobalMaxPooling1D, Dense,
  softmax. Runs in float32 and float64.
- :func:`seq1d_any_length`: the same on any sequence length (``parity check --input-shape L,4``).
"""
from __future__ import annotations

INPUT_SHAPE = (16, 4)


def seq1d_net(input_shape=INPUT_SHAPE, filters=6, num_classes=3):
    import keras
    from keras import layers

    x_in = keras.Input(tuple(input_shape), name="sequence")
    x = layers.Conv1D(filters, 3, strides=2, padding="same", activation="relu", name="conv_s2")(x_in)
    x = layers.DepthwiseConv1D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.SeparableConv1D(2 * filters, 3, depth_multiplier=2, padding="same", activation="relu", name="sep")(x)
    x = layers.Conv1D(2 * filters, 3, groups=3, padding="same", name="grouped")(x)
    x = layers.Conv1DTranspose(filters, 4, strides=2, padding="same", activation="relu", name="tconv")(x)
    x = layers.UpSampling1D(2, name="up")(x)
    x = layers.ZeroPadding1D(1, name="pad")(x)
    x = layers.Conv1D(filters, 3, name="conv")(x)
    x = layers.Cropping1D((1, 2), name="crop")(x)
    x = layers.GlobalMaxPooling1D(name="gmp")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(x_in, out, name="seq1d_net")


def seq1d_any_length(**kw):
    """Any length with four channels: the length comes from ``--input-shape L,4``."""
    return seq1d_net(input_shape=(None, 4), **kw)
