"""A transformer encoder block (post-norm, as in "Attention Is All You Need" and the Keras code examples'
``TransformerBlock``) with a classification head: self-attention -> residual -> LayerNormalization -> Dense
-> gelu -> Dense -> residual -> LayerNormalization -> mean over time -> Dense -> softmax. Keras 3 defaults
(LayerNormalization epsilon 1e-3, ``"gelu"`` = the exact erf form, attention scaled by 1/sqrt(key_dim))."""
from __future__ import annotations


def transformer_block(seq_len=10, d_model=16, num_heads=2, ff_dim=32, num_classes=3):
    """Build the reference model (returns probabilities). Input: (N, seq_len, d_model) embeddings."""
    return attention_block(seq_len, d_model, num_heads, ff_dim, num_classes, causal=False,
                           name="transformer_block")


def attention_block(seq_len, d_model, num_heads, ff_dim, num_classes, *, causal, name):
    """The post-norm block shared by the encoder (``causal=False``) and the decoder (``use_causal_mask=True``,
    reference_keras/decoder.py) references."""
    import keras
    from keras import layers

    x_in = keras.Input((seq_len, d_model), name="embeddings")
    a = layers.MultiHeadAttention(num_heads, d_model // num_heads, name="attention")(x_in, x_in,
                                                                                     use_causal_mask=causal)
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
    return keras.Model(x_in, out, name=name)
