"""PyTorch port of ``reference_keras/decoder.py`` (a post-norm causal decoder block + classifier), the usual torch
way: ``nn.MultiheadAttention(batch_first=True)`` (packed ``in_proj_weight`` = [q; k; v]) given
``attn_mask=torch.triu(ones, 1).bool()``: in torch a boolean ``attn_mask`` is True where attention is NOT allowed,
the opposite of Keras' ``attention_mask`` (``parity.core.families.attention.KERAS_MASK_POLARITY``). Keras'
float32-rounded 1/sqrt(key_dim) is matched by pre-scaling the query rows of ``in_proj`` (see
:class:`KerasScaledMHA`); ``nn.LayerNorm(eps=1e-3)``; exact-erf GELU; the model returns **logits**.

Keyword arguments exist so a user's variant (or a planted bug) is built through the public constructor:
``mask`` is ``"bool"`` (triu, True = masked), ``"float"`` (-inf above the diagonal) or ``None`` (no mask)."""
from __future__ import annotations

import torch
from torch import nn

from parity.core.families.normalization import KERAS_LAYERNORM_EPSILON
from ported_torch.transformer import GlobalAvgPool1d, KerasGELU


def causal_mask(length: int, kind: str | None = "bool", device=None, dtype=torch.float32):
    """torch's ``attn_mask`` for causal self-attention: bool True above the diagonal (= NOT allowed), or a float
    mask with -inf there and 0 elsewhere; ``None`` for no mask."""
    if kind is None:
        return None
    upper = torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), diagonal=1)
    if kind == "bool":
        return upper
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(upper, float("-inf"))


class DecoderClassifier(nn.Module):
    def __init__(self, seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, *, mask="bool",
                 ln_eps=KERAS_LAYERNORM_EPSILON):
        super().__init__()
        self.mask = mask
        self.attention = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.ffn_in = nn.Linear(d_model, ff_dim)
        self.ffn_gelu = KerasGELU()
        self.ffn_out = nn.Linear(ff_dim, d_model)
        self.ffn_norm = nn.LayerNorm(d_model, eps=ln_eps)
        self.pool = GlobalAvgPool1d()
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, x):
        m = causal_mask(x.shape[1], self.mask, x.device, x.dtype)
        a, _ = self.attention(x, x, x, attn_mask=m, need_weights=False)
        x = self.attn_norm(x + a)
        x = self.ffn_norm(x + self.ffn_out(self.ffn_gelu(self.ffn_in(x))))
        return self.classifier(self.pool(x))


def decoder_block(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, **kw):
    return DecoderClassifier(seq_len, d_model, num_heads, ff_dim, num_classes, **kw)
