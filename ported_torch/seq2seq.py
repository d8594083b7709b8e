"""PyTorch port of ``reference_keras/seq2seq.py``: ``_, (h, c) = encoder(src)``; ``decoder(tgt, (h, c))`` (Keras'
``initial_state=[h, c]`` is torch's ``(h_0, c_0)``), the decoder's last step -> Linear (logits: the softmax is
``F.cross_entropy``'s). LSTM ``bias_hh`` holds 0 and stays out of training (Keras has one bias).
``state``: ``"swapped"`` passes (c, h), ``"none"`` starts the decoder from zeros (planted bugs)."""
from __future__ import annotations

from torch import nn


class Seq2Seq(nn.Module):
    def __init__(self, src_len=7, tgt_len=5, features=4, units=6, num_classes=3, *, state="hc"):
        super().__init__()
        self.encoder = nn.LSTM(features, units, batch_first=True)
        self.decoder = nn.LSTM(features, units, batch_first=True)
        self.classifier = nn.Linear(units, num_classes)
        self.state = state
        for rnn in (self.encoder, self.decoder):
            for name, p in rnn.named_parameters():
                if name.startswith("bias_hh"):
                    p.requires_grad_(False)

    def forward(self, source, target):
        _, (h, c) = self.encoder(source)
        if self.state == "none":
            y, _ = self.decoder(target)
        else:
            y, _ = self.decoder(target, (c, h) if self.state == "swapped" else (h, c))
        return self.classifier(y[:, -1])


def seq2seq(**cfg) -> Seq2Seq:
    return Seq2Seq(**cfg)
