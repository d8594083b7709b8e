"""PyTorch ports of ``reference_keras/rnn_variants.py``: Keras ``go_backwards=True`` is ``rnn(x.flip(1))`` with
the output used as it is (Keras does not flip a go_backwards layer's outputs back; see
``parity.core.families.recurrent.KERAS_GO_BACKWARDS``); an LSTM's ``bias_hh`` (Keras has one bias) stays 0 and
frozen. Keyword arguments exist so a planted bug is built through the public constructor."""
from __future__ import annotations

import torch
from torch import nn


class BackwardsRNN(nn.Module):
    """Keras ``GRU/LSTM(go_backwards=True)`` [-> per-step Dense -> mean over time] -> Dense (logits)."""

    def __init__(self, cell="gru", features=5, units=6, num_classes=3, *, sequence=False, flip_input=True,
                 flip_output=False):
        super().__init__()
        base = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        if flip_output:
            class OutputFlippedBack(base):
                def forward(self, x):
                    out, state = super().forward(x)
                    return torch.flip(out, dims=[1]), state

            base = OutputFlippedBack
        self.flip_input, self.sequence = flip_input, sequence
        self.rnn = base(features, units, batch_first=True)
        if cell == "lstm":  # Keras' one bias: bias_hh is torch's alone, 0 and frozen
            self.rnn.bias_hh_l0.requires_grad_(False)
        if sequence:
            self.per_step = nn.Linear(units, 4)
        self.classifier = nn.Linear(4 if sequence else units, num_classes)

    def forward(self, x):
        out, _ = self.rnn(torch.flip(x, dims=[1]) if self.flip_input else x)  # go_backwards: read from the end
        if self.sequence:
            return self.classifier(self.per_step(out).mean(dim=1))  # Keras' step order, as computed
        return self.classifier(out[:, -1])


def backwards_gru(seq_len=10, features=5, units=6, num_classes=3, **kw) -> BackwardsRNN:
    return BackwardsRNN("gru", features, units, num_classes, **kw)


def backwards_lstm_sequence(seq_len=10, features=5, units=6, num_classes=3, **kw) -> BackwardsRNN:
    return BackwardsRNN("lstm", features, units, num_classes, sequence=True, **kw)
