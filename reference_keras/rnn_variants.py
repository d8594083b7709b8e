"""Recurrent variants: a unidirectional GRU / LSTM with ``go_backwards=True`` (the layer reads the sequence from
its end), checked as user pairs against ``ported_torch/rnn_variants.py``.

Keras' ``go_backwards=True`` (keras/src/layers/rnn/rnn.py ``RNN.call`` -> ``backend.rnn(go_backwards=True)``)
reverses the input in time and returns the outputs in the order it computed them: with ``return_sequences=True``
step 0 is the state after reading x[L-1], *not* flipped back (only ``Bidirectional`` flips its backward half)."""
from __future__ import annotations


def backwards_gru(seq_len=10, features=5, units=6, num_classes=3):
    """GRU(go_backwards=True), last step -> Dense -> softmax."""
    import keras
    from keras import layers

    x_in = keras.Input((seq_len, features), name="signal")
    x = layers.GRU(units, go_backwards=True, name="rnn")(x_in)
    x = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(x_in, layers.Activation("softmax", name="predictions")(x), name="backwards_gru")


def backwards_lstm_sequence(seq_len=10, features=5, units=6, num_classes=3):
    """LSTM(go_backwards=True, return_sequences=True) -> per-step Dense -> mean over time -> Dense -> softmax."""
    import keras
    from keras import layers

    x_in = keras.Input((seq_len, features), name="signal")
    x = layers.LSTM(units, go_backwards=True, return_sequences=True, name="rnn")(x_in)
    x = layers.Dense(4, name="per_step")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(x_in, layers.Activation("softmax", name="predictions")(x), name="backwards_lstm")
