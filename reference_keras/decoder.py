"""A transformer decoder block (causal self-attention, post-norm) with a classification head: Keras
``MultiHeadAttention(...)(x, x, use_causal_mask=True)`` -> residual -> LayerNormalization -> Dense -> gelu ->
Dense -> residual -> LayerNormalization -> mean over time -> Dense -> softmax. Input: (N, seq_len, d_model)
embeddings. Keras 3 builds the causal mask itself (lower-triangular, True = attend:
keras/src/layers/attention/multi_head_attention.py ``_compute_causal_mask``); masked scores never reach the
softmax's sum (``where(mask, scores, -1e9)``, keras/src/layers/activations/softmax.py), so a float64 port that
masks with -inf, -1e9 or ``is_causal=True`` agrees to rounding."""
from __future__ import annotations

from reference_keras.transformer import attention_block


def decoder_block(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3):
    """Build the reference model (returns probabilities): the encoder block of reference_keras/transformer.py with
    ``use_causal_mask=True``."""
    return attention_block(seq_len, d_model, num_heads, ff_dim, num_classes, causal=True, name="decoder_block")
