"""PyTorch port of ``reference_keras/decoder.py`` (a post-norm causal decoder block + classifier). Keras'
``MultiHeadAttention(...)(x, x, use_causal_mask=True)`` attends where its lower-triangular mask is True
(``parity.core.families.attention.KERAS_MASK_POLARITY``); the port may write that attention three ways, all
correct (``attention=``):

- ``"packed"`` (default): ``nn.MultiheadAttention(batch_first=True)`` (packed ``in_proj_weight`` = [q; k; v])
  given ``attn_mask=torch.triu(ones, 1).bool()``: a torch boolean ``attn_mask`` is True where attention is NOT
  allowed, the opposite of Keras; or ``mask="float"``: -inf above the diagonal, 0 elsewhere (``mask="causal"``, the default, is
  ``"bool"`` here). torch scales by the
  exact 1/sqrt(head_dim), Keras by its float32 rounding (``keras_attention_scale``): equal for key_dim 4;
- ``"sdpa"``: q/k/v/out ``nn.Linear`` and ``F.scaled_dot_product_attention(q, k, v, is_causal=True,
  scale=keras_attention_scale(k))``;
- ``"masked_fill"``: the scores written out, ``scores.masked_fill(tril == 0, fill)`` with ``fill`` -inf or -1e9
  (``mask_fill=``): Keras replaces masked scores by -1e9 before its softmax (keras/src/layers/activations/
  softmax.py), which exp() sends to exactly 0 in float32 and float64 alike, as -inf does.

``nn.LayerNorm(eps=1e-3)``; exact-erf GELU with TF's float32 1/sqrt(2); the model returns **logits**. Keyword
arguments exist so a user's variant (or a planted bug) is built through the public constructor: ``mask=None``
(no mask); ``"packed"``: ``mask="tril"`` (Keras' polarity given to torch), ``mask="triu0"`` (the diagonal
masked too); ``"masked_fill"``: ``mask="inverted"`` (``masked_fill(tril == 1, ...)``), ``mask="triu0"``,
``mask_after_softmax=True`` (``masked_fill`` style: the probabilities zeroed after the softmax)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parity.core.families.attention import keras_attention_scale
from parity.core.families.normalization import KERAS_LAYERNORM_EPSILON
from ported_torch.transformer import GlobalAvgPool1d, KerasGELU

#: what Keras puts in a masked score before its softmax (keras/src/layers/activations/softmax.py
#: ``_large_negative_number``: -1e9 unless float16)
KERAS_MASKED_SCORE = -1e9


def causal_mask(length: int, kind: str | None = "bool", device=None, dtype=torch.float32):
    """torch's ``attn_mask`` for causal self-attention: ``"bool"``: True above the diagonal (= NOT allowed);
    ``"float"``: -inf there, 0 elsewhere; ``None``: no mask. ``"tril"`` (True on and below the diagonal: Keras'
    polarity, wrong for torch) and ``"triu0"`` (the diagonal masked too) are bugs, kept for the planted ones."""
    if kind is None:
        return None
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    if kind == "tril":
        return torch.tril(ones)
    if kind == "triu0":
        return torch.triu(ones)
    upper = torch.triu(ones, diagonal=1)
    if kind == "bool":
        return upper
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(upper, float("-inf"))


class CausalSelfAttention(nn.Module):
    """Hand-written causal self-attention: q_proj/k_proj/v_proj/out_proj Linear layers, heads head-major."""

    def __init__(self, d_model, num_heads, *, style="sdpa", mask="causal", mask_fill=float("-inf"),
                 mask_after_softmax=False, scale=None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.style, self.mask, self.mask_fill, self.after = style, mask, mask_fill, mask_after_softmax
        self.scale = keras_attention_scale(self.head_dim) if scale is None else scale
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        n, length, _ = x.shape
        q, k, v = (p(x).view(n, length, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.style == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=self.mask == "causal", scale=self.scale)
        else:
            scores = (q * self.scale) @ k.transpose(-2, -1)
            tril = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device))
            keep = {"causal": tril, "inverted": ~tril, "triu0": torch.tril(tril, -1)}.get(self.mask)
            if keep is not None and not self.after:
                scores = scores.masked_fill(keep == 0, self.mask_fill)
            weights = torch.softmax(scores, dim=-1)
            if keep is not None and self.after:
                weights = weights.masked_fill(keep == 0, 0.0)
            o = weights @ v
        return self.out_proj(o.transpose(1, 2).reshape(n, length, -1))


class DecoderClassifier(nn.Module):
    def __init__(self, seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, *, attention="packed",
                 mask="causal", ln_eps=KERAS_LAYERNORM_EPSILON, **attention_kw):
        super().__init__()
        if attention == "packed":
            self.mask = "bool" if mask == "causal" else mask
            self.attention = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        else:
            self.attention = CausalSelfAttention(d_model, num_heads, style=attention, mask=mask, **attention_kw)
        self.attn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.ffn_in = nn.Linear(d_model, ff_dim)
        self.ffn_gelu = KerasGELU()
        self.ffn_out = nn.Linear(ff_dim, d_model)
        self.ffn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.pool = GlobalAvgPool1d()
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, x):
        if isinstance(self.attention, nn.MultiheadAttention):
            a, _ = self.attention(x, x, x, attn_mask=causal_mask(x.shape[1], self.mask, x.device, x.dtype),
                                  need_weights=False)
        else:
            a = self.attention(x)
        x = self.attn_norm(x + a)
        x = self.ffn_norm(x + self.ffn_out(self.ffn_gelu(self.ffn_in(x))))
        return self.classifier(self.pool(x))


def decoder_block(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, **kw):
    """nn.MultiheadAttention with a boolean triu ``attn_mask`` (``mask="float"``: an additive -inf one)."""
    return DecoderClassifier(seq_len, d_model, num_heads, ff_dim, num_classes, **kw)


def decoder_sdpa(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, **kw):
    """q/k/v/out Linear + ``F.scaled_dot_product_attention(is_causal=True)``."""
    return DecoderClassifier(seq_len, d_model, num_heads, ff_dim, num_classes, attention="sdpa", **kw)


def decoder_masked_fill(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, **kw):
    """Scores written out, ``masked_fill(tril == 0, -inf)`` (``mask_fill=KERAS_MASKED_SCORE``: -1e9 as Keras)."""
    return DecoderClassifier(seq_len, d_model, num_heads, ff_dim, num_classes, attention="masked_fill", **kw)
