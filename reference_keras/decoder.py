"""A transformer decoder block (causal self-attention, post-norm) with a classification head: Keras
``MultiHeadAttention(...)(x, x, use_causal_mask=True)`` -> residual -> LayerNormalization -> Dense -> gelu ->
Dense -> residual -> LayerNormalization -> mean over time -> Dense -> softmax. Input: (N, seq_len, d_model)
embeddings. Keras 3 builds the causal mask itself (lower-triangular, True = attend:
keras/src/layers/attention/multi_head_attention.py ``_compute_causal_mask``); masked scores never reach the
softmax's sum (``where(mask, scores, -1e9)``, keras/src/layers/activations/softmax.py), so a float64 port that
masks with -inf, -1e9 or ``is_causal=True`` agrees to rounding."""
from __future__ import annotations


def decoder_block(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3):
    """Build the reference model (returns probabilities)."""
    import keras
    from keras import layers

    x_in = keras.Input((seq_len, d_model), name="embeddings")
    a = layers.MultiHeadAttention(num_heads, d_model // num_heads, name="attention")(x_in, x_in,
                                                                                     use_causal_mask=True)
    x = layers.Add(name="attn_residual")([x_in, a])
    x = layers.LayerNormalization(name="attn_norm")(x)
    f = layers.Dense(ff_dim, name="ffn_in")(x)
    f = layers.Activation("gelu", name="ffn_gelu")(f)
    f = layers.Dense(d_model, name="ffn_out")(f)
    x = layers.Add(name="ffn_residual")([x, f])
    x = layers.LayerNormalization(name="ffn_norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(num_classes, name="classifier")(x)
    out = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(x_in, out, name="decoder_block")
