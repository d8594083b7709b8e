"""Ports of the sequence pairs written in another style than ``ported_torch``: plain ``nn.LSTM`` with the last
step taken in the parent's forward (the usual hand-written text classifier)."""
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


def transformer_functional(seq_len=10, d_model=16, num_heads=2, ff_dim=32, num_classes=3, **_):
    """The transformer block with the attention written in ``F.*`` calls over a ``ModuleList`` of projections
    (wq, wk, wv), a ``ModuleDict`` MLP, ``F.layer_norm``-backed nn.LayerNorm(eps=1e-3) and ``F.gelu`` with
    TensorFlow's float32-rounded 1/sqrt(2) written as an erf."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    head = d_model // num_heads
    scale = float(np.float32(1.0 / math.sqrt(head)))  # Keras: 1/sqrt(key_dim) as a float32 constant
    inv_sqrt2 = float(np.float32(1.0 / math.sqrt(2.0)))

    class Gelu(nn.Module):
        def forward(self, x):
            return 0.5 * x * (1.0 + torch.erf(x * inv_sqrt2))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(3))  # query, key, value
            self.wo = nn.Linear(d_model, d_model)

        def forward(self, x):
            n, length, _ = x.shape
            q, k, v = (p(x).reshape(n, length, num_heads, head).permute(0, 2, 1, 3) for p in self.proj)
            w = F.softmax(torch.matmul(q * scale, k.transpose(2, 3)), dim=-1)
            return self.wo(torch.matmul(w, v).permute(0, 2, 1, 3).reshape(n, length, d_model))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = Attention()
            self.norms = nn.ModuleList(nn.LayerNorm(d_model, eps=1e-3) for _ in range(2))
            self.mlp = nn.Sequential(nn.Linear(d_model, ff_dim), Gelu(), nn.Linear(ff_dim, d_model))
            self.out = nn.Linear(d_model, num_classes)

        def forward(self, x):
            x = self.norms[0](x + self.mha(x))
            x = self.norms[1](x + self.mlp(x))
            return self.out(x.mean(dim=1))

    return Block()


def encoder_decoder_sequential(input_shape=(16, 16, 3), width=8, num_classes=3, **_):
    """The U-Net with ``nn.Sequential`` conv+ReLU blocks, ``F.max_pool2d``/``F.interpolate`` calls, and the
    transposed conv's TF 'same' crop done by slicing the full output in the parent's forward."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    c = input_shape[-1]

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.ModuleList([block(c, width), block(width, 2 * width), block(2 * width, 2 * width)])
            self.dec_a = block(4 * width, 2 * width)
            self.tconv = nn.ConvTranspose2d(2 * width, width, 3, stride=2)
            self.dec_b = block(2 * width, width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            e1 = self.down[0](x)
            e2 = self.down[1](F.max_pool2d(e1, 2))
            b = self.down[2](F.max_pool2d(e2, 2))
            d2 = self.dec_a(torch.cat([F.interpolate(b, scale_factor=2, mode="nearest"), e2], dim=1))
            h, w = d2.shape[-2] * 2, d2.shape[-1] * 2
            u1 = self.tconv(d2)[..., :h, :w]  # 'same', k=3, s=2: TF crops 0 at the start, the extra at the end
            d1 = self.dec_b(torch.cat([u1, e1], dim=1))
            return self.fc(d1.mean(dim=(2, 3)))

    return UNet()


def sequence_cnn_functional(seq_len=32, channels=4, filters=8, num_classes=3, **_):
    """The 1-D CNN with the causal pad as ``F.pad`` before a padding-0 Conv1d, ``F.relu`` and ``F.max_pool1d``
    calls, torch's ``padding='same'`` for the dilated even kernel, and the mean over time on (N, C, L)."""
    import torch.nn.functional as F
    from torch import nn

    class TCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(channels, filters, 5)
            self.c2 = nn.Conv1d(filters, 2 * filters, 4, dilation=2, padding="same")
            self.linear = nn.Linear(2 * filters, num_classes)

        def forward(self, x):
            x = F.relu(self.c1(F.pad(x.permute(0, 2, 1), (4, 0))))  # causal: (k - 1) * dilation on the left
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
