"""mini_XCEPTION (Arriaga, Ploeger, Valdenegro 2017, "Real-time Convolutional Neural Networks for Emotion and
Gender Classification"), exactly as published in oarriaga/face_classification @b861d21b,
``src/models/cnn.py::mini_XCEPTION`` (Keras 2.0.5), rebuilt with Keras 3 and stable layer names.

Published facts (oarriaga/face_classification ``src/models/cnn.py``, ``mini_XCEPTION``): input 64x64x1 scaled to [-1, 1]; 7 classes -> 58,423
parameters, 56,951 trainable, 1,472 non-trainable (BN moving statistics); 2 classes -> 52,658.
Spatial 64 -> 62 -> 60 -> 30 -> 15 -> 8 -> 4.

One deviation forced by Keras 3, with no numerical effect on the published model: Keras 2 silently
ignored ``kernel_regularizer`` on ``SeparableConv2D`` and Keras 3 rejects it, so (as in the original's
actual behaviour) only the two base convs carry ``l2(0.01)``.
"""
from __future__ import annotations

from parity.core.conventions import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, MINIXCEPTION_L2

#: Filters of the four residual modules (cnn.py: ``for filters in [16, 32, 64, 128]`` unrolled).
MODULE_FILTERS = (16, 32, 64, 128)
BASE_FILTERS = 8


def mini_xception(input_shape=(64, 64, 1), num_classes=7, l2_regularization=MINIXCEPTION_L2):
    """Build the reference model (returns probabilities: the last layer is ``Activation('softmax')``)."""
    import keras
    from keras import layers

    reg = keras.regularizers.L2(l2_regularization)

    def bn(name):
        return layers.BatchNormalization(epsilon=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM, name=name)

    img = keras.Input(input_shape, name="image")
    x = layers.Conv2D(BASE_FILTERS, 3, strides=1, kernel_regularizer=reg, use_bias=False, name="base_conv1")(img)
    x = bn("base_bn1")(x)
    x = layers.Activation("relu", name="base_relu1")(x)
    x = layers.Conv2D(BASE_FILTERS, 3, strides=1, kernel_regularizer=reg, use_bias=False, name="base_conv2")(x)
    x = bn("base_bn2")(x)
    x = layers.Activation("relu", name="base_relu2")(x)

    for i, filters in enumerate(MODULE_FILTERS, start=1):
        b = f"block{i}"
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False,
                                 name=f"{b}_residual_conv")(x)
        residual = bn(f"{b}_residual_bn")(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{b}_sepconv1")(x)
        x = bn(f"{b}_sepconv1_bn")(x)
        x = layers.Activation("relu", name=f"{b}_sepconv1_relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{b}_sepconv2")(x)
        x = bn(f"{b}_sepconv2_bn")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{b}_pool")(x)
        x = layers.Add(name=f"{b}_add")([x, residual])

    x = layers.Conv2D(num_classes, 3, padding="same", name="head_conv")(x)
    x = layers.GlobalAveragePooling2D(name="head_gap")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(img, out, name="mini_XCEPTION")
