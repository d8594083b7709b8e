"""A small encoder-decoder for images (a two-level U-Net): conv encoder with max-pooling, a bottleneck, a
decoder that up-samples with UpSampling2D (nearest) and Conv2DTranspose (stride 2, 'same'), skip
concatenations, and a classification head (global average pooling -> Dense -> softmax)."""
from __future__ import annotations


def encoder_decoder(input_shape=(16, 16, 3), width=8, num_classes=3):
    import keras
    from keras import layers

    def conv(f, name):
        return layers.Conv2D(f, 3, padding="same", activation="relu", name=name)

    img = keras.Input(input_shape, name="image")
    e1 = conv(width, "enc1")(img)                                    # H
    e2 = conv(2 * width, "enc2")(layers.MaxPooling2D(2, name="pool1")(e1))   # H/2
    b = conv(2 * width, "bottleneck")(layers.MaxPooling2D(2, name="pool2")(e2))  # H/4
    u2 = layers.UpSampling2D(2, name="up2")(b)                       # H/2, nearest
    d2 = conv(2 * width, "dec2")(layers.Concatenate(name="skip2")([u2, e2]))
    u1 = layers.Conv2DTranspose(width, 3, strides=2, padding="same", name="up1")(d2)  # H
    d1 = conv(width, "dec1")(layers.Concatenate(name="skip1")([u1, e1]))
    x = layers.GlobalAveragePooling2D(name="gap")(d1)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(img, out, name="encoder_decoder")
