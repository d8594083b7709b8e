"""A small 1-D CNN over sequences (a temporal convolutional classifier): causal Conv1D, max-pooling, a dilated
'same' Conv1D with an even kernel, global average pooling over time, Dense, softmax. Input (N, L, C)."""
from __future__ import annotations


def sequence_cnn(seq_len=32, channels=4, filters=8, num_classes=3):
    import keras
    from keras import layers

    x_in = keras.Input((seq_len, channels), name="signal")
    x = layers.Conv1D(filters, 5, padding="causal", activation="relu", name="conv1")(x_in)
    x = layers.MaxPooling1D(2, name="pool1")(x)
    x = layers.Conv1D(2 * filters, 4, padding="same", dilation_rate=2, activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(x_in, out, name="sequence_cnn")
