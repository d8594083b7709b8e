"""PyTorch port of ``reference_keras/transformer.py`` (a post-norm transformer encoder block + classifier):

- attention written out with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers, heads split
  head-major (``weight_converters/attention.py``), scores scaled like Keras: 1/sqrt(key_dim) rounded to float32
  (``parity.core.families.attention.keras_attention_scale``);
- ``nn.LayerNorm(eps=1e-3)``: Keras' LayerNormalization default, not torch's 1e-5
  (``parity.core.families.normalization.KERAS_LAYERNORM_EPSILON``);
- GELU in the exact erf form (Keras' ``"gelu"``), not ``approximate="tanh"``, with TensorFlow's float32-rounded
  1/sqrt(2) (``KerasGELU``) so float64 agrees to rounding;
- the model returns **logits**: the reference's softmax belongs to ``F.cross_entropy``.

Keyword arguments exist so a user's variant (or a planted bug) is built through the public constructor.
"""
from __future__ import annotations

import torch
from torch import nn

from parity.core.families.activations import TF_GELU_INV_SQRT2
from parity.core.families.attention import keras_attention_scale
from parity.core.families.normalization import KERAS_LAYERNORM_EPSILON
from ported_torch.layers import Add


class MultiHeadSelfAttention(nn.Module):
    """Keras ``MultiHeadAttention(num_heads, key_dim)`` called as ``mha(query, value)`` (key = value)."""

    def __init__(self, d_model, num_heads, *, scale=None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        # Keras scales by 1/sqrt(key_dim) rounded to float32 (even in a float64 model): keras_attention_scale
        self.scale = keras_attention_scale(self.head_dim) if scale is None else scale
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x):
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)  # (N, h, L, k)

    def forward(self, query, value=None, key=None):
        value = query if value is None else value
        key = value if key is None else key
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        weights = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.out_proj(out)


class KerasGELU(nn.GELU):
    """``nn.GELU()`` (exact erf form) with TensorFlow's 1/sqrt(2) constant, which a float64 Keras model takes
    rounded to float32 (``parity.core.families.activations.TF_GELU_INV_SQRT2``): equal to nn.GELU in float32,
    equal to Keras to ~1e-16 in float64 (nn.GELU: ~5e-9)."""

    def forward(self, x):
        if self.approximate != "none":
            return super().forward(x)
        return 0.5 * x * torch.erfc(-x * TF_GELU_INV_SQRT2)


class GlobalAvgPool1d(nn.Module):
    """``keras.layers.GlobalAveragePooling1D``: mean over the time axis of (N, L, C)."""

    def forward(self, x):
        return x.mean(dim=1)


class TransformerClassifier(nn.Module):
    def __init__(self, seq_len=10, d_model=16, num_heads=2, ff_dim=32, num_classes=3, *,
                 ln_eps=KERAS_LAYERNORM_EPSILON, gelu_approximate="none", attention_scale=None, norm_first=False):
        super().__init__()
        self.norm_first = norm_first
        self.attention = MultiHeadSelfAttention(d_model, num_heads, scale=attention_scale)
        self.attn_residual = Add()
        self.attn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.ffn_in = nn.Linear(d_model, ff_dim)
        self.ffn_gelu = KerasGELU(approximate=gelu_approximate)
        self.ffn_out = nn.Linear(ff_dim, d_model)
        self.ffn_residual = Add()
        self.ffn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.pool = GlobalAvgPool1d()
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, x):
        if self.norm_first:  # the pre-norm block (another common layout): not the reference's
            x = self.attn_residual(x, self.attention(self.attn_norm(x)))
            x = self.ffn_residual(x, self.ffn_out(self.ffn_gelu(self.ffn_in(self.ffn_norm(x)))))
        else:
            x = self.attn_norm(self.attn_residual(x, self.attention(x)))
            x = self.ffn_norm(self.ffn_residual(x, self.ffn_out(self.ffn_gelu(self.ffn_in(x)))))
        return self.classifier(self.pool(x))


def transformer_block(**cfg) -> TransformerClassifier:
    return TransformerClassifier(**cfg)
