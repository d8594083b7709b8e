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
