"""Ports of the layer-family pairs written in another style than ``ported_torch`` (user mode, automatic
alignment): a plain ``nn.LSTM`` with the last step taken in the parent's forward (textclf), a time-major
``nn.GRU`` read from ``h_n`` (textgru), ``F.scaled_dot_product_attention`` with ``nn.Sequential``/``ModuleList``
blocks (transformer), ``nn.Sequential`` U-Net blocks with ``F.interpolate`` (encdec), one ``nn.Sequential``
1-D CNN and one padding with ``F.pad`` before its Conv1d (seqconv), a transposed conv cropped in the parent's
forward (encdec); and the attention's projections in an ``nn.ModuleList`` (``*_modulelist_projections``: aligned
by structure, tests/families/test_attention_masks.py)."""
from __future__ import annotations


def text_classifier_plain(seq_len=12, vocab=50, embed_dim=8, units=6, num_classes=4, **_):
    import torch
    from torch import nn

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, embed_dim)
            self.rnn = nn.LSTM(embed_dim, units, batch_first=True, bidirectional=True)
            for name, p in self.rnn.named_parameters():  # Keras has one bias: bias_hh stays 0, out of training
                if name.startswith("bias_hh"):
                    p.requires_grad_(False)
            self.fc = nn.Linear(2 * units, num_classes)

        def forward(self, tokens):
            out, _ = self.rnn(self.emb(tokens))
            h = out.shape[-1] // 2
            return self.fc(torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1))

    return Plain()


def text_gru_time_major(seq_len=12, vocab=50, embed_dim=8, units=6, num_classes=4, **_):
    """The GRU classifier written time-major: ``nn.GRU(batch_first=False)`` fed ``x.transpose(0, 1)``, the
    Bidirectional output read from ``h_n`` (forward's and backward's final states), other attribute names."""
    import torch
    from torch import nn

    class TimeMajorGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, embed_dim)
            self.gru = nn.GRU(embed_dim, units, bidirectional=True)  # (L, N, C); both biases train (reset_after)
            self.head = nn.Linear(2 * units, num_classes)

        def forward(self, tokens):
            _, h_n = self.gru(self.tok(tokens).transpose(0, 1))  # h_n (2, N, H): [forward, backward]
            return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))

    return TimeMajorGRU()


def transformer_sdpa(seq_len=10, d_model=16, num_heads=2, ff_dim=32, num_classes=3, **_):
    """The transformer block with ``F.scaled_dot_product_attention`` (Keras' float32-rounded 1/sqrt(key_dim) as
    its ``scale``) between ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers (the attention converter's
    names), heads split with ``unflatten``, the two LayerNorms in a ``ModuleList``, the MLP an ``nn.Sequential``
    with a GELU module written as an erf (TensorFlow's float32 1/sqrt(2)), other attribute names throughout."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    head = d_model // num_heads
    scale = float(np.float32(1.0 / math.sqrt(head)))  # Keras: 1/sqrt(key_dim) as a float32 constant
    inv_sqrt2 = float(np.float32(1.0 / math.sqrt(2.0)))

    class ErfGelu(nn.Module):
        def forward(self, x):
            return 0.5 * x * (1.0 + torch.erf(x * inv_sqrt2))

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
            self.out_proj = nn.Linear(d_model, d_model)

        def forward(self, x):
            q, k, v = (p(x).unflatten(-1, (num_heads, head)).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
            return self.out_proj(o.transpose(1, 2).flatten(2))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.sa = SelfAttention()
            self.lns = nn.ModuleList(nn.LayerNorm(d_model, eps=1e-3) for _ in range(2))
            self.mlp = nn.Sequential(nn.Linear(d_model, ff_dim), ErfGelu(), nn.Linear(ff_dim, d_model))
            self.logits = nn.Linear(d_model, num_classes)

        def forward(self, x):
            x = self.lns[0](x + self.sa(x))
            x = self.lns[1](x + self.mlp(x))
            return self.logits(x.mean(dim=1))

    return Encoder()


def transformer_modulelist_projections(seq_len=10, d_model=16, num_heads=2, ff_dim=32, num_classes=3, **_):
    """:func:`transformer_sdpa` with the projections in a ``ModuleList`` (``proj.0/1/2``) and the output one
    named ``wo``: correct; aligned by structure (``parity.core.families.attention.unit_roles``: the container's
    order is query, key, value), tests/families/test_attention_masks.py."""
    import numpy as np
    import torch.nn.functional as F
    from torch import nn

    m = transformer_sdpa(seq_len, d_model, num_heads, ff_dim, num_classes)
    head = d_model // num_heads
    scale = float(np.float32(head ** -0.5))

    class ListAttention(nn.Module):
        def __init__(self, sa):
            super().__init__()
            self.proj = nn.ModuleList([sa.q_proj, sa.k_proj, sa.v_proj])
            self.wo = sa.out_proj

        def forward(self, x):
            q, k, v = (p(x).unflatten(-1, (num_heads, head)).transpose(1, 2) for p in self.proj)
            return self.wo(F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2))

    m.sa = ListAttention(m.sa)
    return m


def encoder_decoder_sequential(input_shape=(16, 16, 3), width=8, num_classes=3, **_):
    """The U-Net with ``nn.Sequential`` conv + ``nn.ReLU`` blocks in a ``ModuleList``, ``F.max_pool2d`` and
    ``F.interpolate`` calls, ``torch.cat`` skips, the mean over (H, W) in the parent's forward, and TF 'same' of
    the stride-2 transposed conv as the full output cropped to in * stride inside a ConvTranspose2d subclass."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    c = input_shape[-1]

    class CroppedConvTranspose2d(nn.ConvTranspose2d):
        def forward(self, x):  # k=3, s=2, 'same': TF crops (k - s) // 2 = 0 at the start, the extra row at the end
            return super().forward(x)[..., : x.shape[-2] * self.stride[0], : x.shape[-1] * self.stride[1]]

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.ModuleList([block(c, width), block(width, 2 * width), block(2 * width, 2 * width)])
            self.dec_a = block(4 * width, 2 * width)
            self.tconv = CroppedConvTranspose2d(2 * width, width, 3, stride=2)
            self.dec_b = block(2 * width, width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            e1 = self.down[0](x)
            e2 = self.down[1](F.max_pool2d(e1, 2))
            b = self.down[2](F.max_pool2d(e2, 2))
            d2 = self.dec_a(torch.cat([F.interpolate(b, scale_factor=2, mode="nearest"), e2], dim=1))
            d1 = self.dec_b(torch.cat([self.tconv(d2), e1], dim=1))
            return self.fc(d1.mean(dim=(2, 3)))

    return UNet()


def encoder_decoder_parent_crop(input_shape=(16, 16, 3), width=8, num_classes=3, **_):
    """:func:`encoder_decoder_sequential` with a plain ``nn.ConvTranspose2d`` whose output the parent's forward
    crops (``self.tconv(d2)[..., :2H, :2W]``): compared on Keras' 'same' window (a ``crop[...]`` port transform)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    m = encoder_decoder_sequential(input_shape, width, num_classes)
    t = m.tconv
    m.tconv = nn.ConvTranspose2d(t.in_channels, t.out_channels, 3, stride=2)

    def forward(x):
        e1 = m.down[0](x)
        e2 = m.down[1](F.max_pool2d(e1, 2))
        b = m.down[2](F.max_pool2d(e2, 2))
        d2 = m.dec_a(torch.cat([F.interpolate(b, scale_factor=2, mode="nearest"), e2], dim=1))
        u1 = m.tconv(d2)[..., : 2 * d2.shape[-2], : 2 * d2.shape[-1]]
        return m.fc(m.dec_b(torch.cat([u1, e1], dim=1)).mean(dim=(2, 3)))

    m.forward = forward
    return m


def sequence_cnn_sequential(seq_len=32, channels=4, filters=8, num_classes=3, **_):
    """The 1-D CNN as one ``nn.Sequential`` (conv, ``nn.ReLU`` module, ``nn.MaxPool1d``, conv, ``nn.ReLU``) on
    (N, C, L) from ``x.permute(0, 2, 1)``: the causal pad inside a Conv1d subclass of its own (``F.pad`` left,
    exposing ``causal_pad`` as :mod:`parity.core.families.conv1d` reads it), torch's ``padding='same'`` for the
    dilated even kernel, and the mean over time taken on (N, C, L) in the parent's forward."""
    import torch.nn.functional as F
    from torch import nn

    class LeftPadConv1d(nn.Conv1d):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.causal_pad = (self.kernel_size[0] - 1) * self.dilation[0]

        def forward(self, x):
            return super().forward(F.pad(x, (self.causal_pad, 0)))

    class TCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                LeftPadConv1d(channels, filters, 5), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(filters, 2 * filters, 4, dilation=2, padding="same"), nn.ReLU())
            self.linear = nn.Linear(2 * filters, num_classes)

        def forward(self, x):
            return self.linear(self.features(x.permute(0, 2, 1)).mean(dim=-1))

    return TCN()


def sequence_cnn_functional_pad(seq_len=32, channels=4, filters=8, num_classes=3, *, pad=(4, 0), **_):
    """The causal pad as ``F.pad`` in the parent's forward before a padding-0 Conv1d, ``F.relu`` and
    ``F.max_pool1d`` calls (``pad=(2, 2)``: the symmetric-pad bug)."""
    import torch.nn.functional as F
    from torch import nn

    class TCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(channels, filters, 5)
            self.c2 = nn.Conv1d(filters, 2 * filters, 4, dilation=2, padding="same")
            self.linear = nn.Linear(2 * filters, num_classes)

        def forward(self, x):
            x = F.relu(self.c1(F.pad(x.permute(0, 2, 1), pad)))  # causal: (k - 1) * dilation on the left
            x = F.relu(self.c2(F.max_pool1d(x, 2)))
            return self.linear(x.mean(dim=-1))

    return TCN()


def text_gru_batch_first_missing(units=6, **cfg):
    """:func:`text_gru_time_major` without the transpose, read as if batch-first: ``nn.GRU(batch_first=False)``
    fed Keras' (N, L, C) (the classic bug: N is taken for time)."""
    import torch

    m = text_gru_time_major(units=units, **cfg)

    def forward(tokens):
        out, _ = m.gru(m.tok(tokens))
        return m.head(torch.cat([out[:, -1, :units], out[:, 0, units:]], dim=-1))

    m.forward = forward
    return m


def text_gru_reference(**cfg):
    """The textgru reference (``reference_keras.textclf`` with a GRU), for ``--reference`` on the command line."""
    from reference_keras.textclf import text_classifier

    return text_classifier(**{**cfg, "cell": "gru"})


def sequence_cnn_symmetric_pad(**cfg):
    """Planted bug: ``F.pad(x, (2, 2))`` before the Conv1d for Keras' causal padding (left 4)."""
    return sequence_cnn_functional_pad(**cfg, pad=(2, 2))
