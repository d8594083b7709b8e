"""A seq2seq encoder-decoder (two inputs): ``LSTM(return_state=True)`` encodes the source, its ``[h, c]`` start
the decoder ``LSTM(initial_state=[h, c])`` reading the target sequence; the decoder's last step -> Dense -> softmax.
Keras 3 defaults (recurrent_activation 'sigmoid', one bias). The states list is [h, c]
(keras/src/layers/rnn/lstm.py); torch's nn.LSTM takes (h_0, c_0)
(``parity.core.families.recurrent.KERAS_LSTM_STATES``)."""
from __future__ import annotations


def seq2seq(src_len=7, tgt_len=5, features=4, units=6, num_classes=3):
    """Build the reference model (inputs ``source`` (N, src_len, F) and ``target`` (N, tgt_len, F))."""
    import keras
    from keras import layers

    src = keras.Input((src_len, features), name="source")
    tgt = keras.Input((tgt_len, features), name="target")
    _, h, c = layers.LSTM(units, return_state=True, name="encoder")(src)
    y = layers.LSTM(units, name="decoder")(tgt, initial_state=[h, c])
    y = layers.Dense(num_classes, name="classifier")(y)
    return keras.Model([src, tgt], layers.Activation("softmax", name="predictions")(y), name="seq2seq")
