"""A small 3-D CNN over volumes (a video clip or a CT patch). Input (N, D, H, W, C) = (N, 8, 16, 16, 1) by default.

- :func:`volume_cnn`: a 'same' Conv3D, a stride-2 'same' Conv3D (TF pads the extra cell after on every even
  axis), global average pooling, Dense, softmax. Runs in float32 and float64.
- :func:`volume_cnn_pooled`: the same with a 'same' 3x3x3/2 MaxPooling3D (asymmetric on even sizes too) and an
  AveragePooling3D before the global pooling. float32 only: TensorFlow's MaxPool3D / AvgPool3D kernels take
  half, bfloat16 and float, not double (a float64 check refuses it up front:
  ``parity.core.families.conv3d.TF_POOL3D_DTYPES``)."""
from __future__ import annotations

INPUT_SHAPE = (8, 16, 16, 1)


def volume_cnn(input_shape=INPUT_SHAPE, filters=4, num_classes=3, pooling=False):
    import keras
    from keras import layers

    x_in = keras.Input(tuple(input_shape), name="volume")
    x = layers.Conv3D(filters, 3, padding="same", activation="relu", name="conv1")(x_in)
    x = layers.Conv3D(2 * filters, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    if pooling:
        x = layers.MaxPooling3D(3, strides=2, padding="same", name="pool")(x)
        x = layers.AveragePooling3D((1, 2, 2), name="avgpool")(x)
    x = layers.GlobalAveragePooling3D(name="gap")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(x_in, out, name="volume_cnn")


def volume_cnn_pooled(**kw):
    return volume_cnn(pooling=True, **kw)


def volume_cnn_any_size(**kw):
    """Any (D, H, W) with one channel: the volume's size comes from ``--input-shape D,H,W,1``."""
    return volume_cnn(input_shape=(None, None, None, 1), **kw)
