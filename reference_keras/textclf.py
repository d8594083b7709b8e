"""A small text classifier, the most common shape of a Keras NLP model: token ids -> Embedding ->
Bidirectional(LSTM) (last step, merge_mode 'concat') -> Dense -> softmax. Keras 3 defaults throughout
(LSTM recurrent_activation 'sigmoid', one bias per direction; Embedding mask_zero=False)."""
from __future__ import annotations


def text_classifier(seq_len=12, vocab=50, embed_dim=8, units=6, num_classes=4, cell="lstm", mask_zero=False):
    """Build the reference model (returns probabilities: the last layer is ``Activation('softmax')``).
    ``cell``: ``"lstm"`` or ``"gru"`` (GRU with Keras 3's reset_after=True). ``mask_zero``: token 0 is padding,
    the Bidirectional RNN skips it (the ``textmask`` pair)."""
    import keras
    from keras import layers

    rnn = {"lstm": layers.LSTM, "gru": layers.GRU}[cell]
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab, embed_dim, mask_zero=mask_zero, name="embedding")(tokens)
    x = layers.Bidirectional(rnn(units), merge_mode="concat", name="encoder")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(tokens, out, name="text_classifier")
