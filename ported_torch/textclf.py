"""PyTorch port of ``reference_keras/textclf.py`` (Embedding -> Bidirectional LSTM/GRU, last step -> Linear):

- ``nn.LSTM``/``nn.GRU`` with ``batch_first=True`` (Keras gives (N, L, C)) and ``bidirectional=True``;
- Keras' ``return_sequences=False`` is the forward direction's last step and the backward direction's step 0
  (it read the sequence reversed): ``LastStep`` returns ``[out[:, -1, :H], out[:, 0, H:]]``, the
  ``merge_mode='concat'`` order;
- one Keras bias per direction (LSTM) is ``bias_ih``; ``bias_hh`` holds 0 and stays out of training
  (``parity.core.families.recurrent.ONE_BIAS``), else the effective bias moves twice per step;
- the model returns **logits**: the reference's softmax belongs to ``F.cross_entropy``;
- ``mask_zero=True`` (Keras skips token-0 steps): the encoder is called with ``lengths = (tokens != 0).sum(1)``
  and packs the post-padded sequence (``pack_padded_sequence(..., enforce_sorted=False)``); the last step is
  ``h_n`` (forward at each row's last valid step, backward at step 0)
  (``parity.core.families.embedding.MASK_ZERO_AS_PACKING``).

Keyword arguments exist so a user's variant (or a planted bug) is built through the public constructor.
"""
from __future__ import annotations

import torch
from torch import nn


def _last_step_class(base):
    class LastStep(base):
        """``nn.LSTM``/``nn.GRU`` returning what Keras' ``Bidirectional(..., return_sequences=False)`` returns."""

        def __init__(self, *args, last="keras", train_bias_hh=False, **kw):
            super().__init__(*args, **kw)
            self.last = last
            if not train_bias_hh and self.mode != "GRU":  # GRU (reset_after) has two real biases
                for name, p in self.named_parameters():
                    if name.startswith("bias_hh"):
                        p.requires_grad_(False)

        def forward(self, x, lengths=None):
            if lengths is not None:
                if self.last == "pre_padded":  # the bug: valid steps taken as the last `length` ones
                    steps = x.shape[1]
                    idx = (torch.arange(steps, device=x.device)[None, :] + (steps - lengths)[:, None]) % steps
                    x = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                _, state = super().forward(packed)
                hn = state[0] if isinstance(state, tuple) else state  # (2, N, H), in the batch's order
                return torch.cat([hn[-2], hn[-1]], dim=-1)
            out, _ = super().forward(x)
            h = self.hidden_size
            if self.last == "sequence_end":  # the classic mistake: both halves at the last step
                return out[:, -1]
            return torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)

    LastStep.__name__ = f"LastStep{base.__name__}"
    return LastStep


LastStepLSTM = _last_step_class(nn.LSTM)
LastStepGRU = _last_step_class(nn.GRU)


class TextClassifier(nn.Module):
    def __init__(self, seq_len=12, vocab=50, embed_dim=8, units=6, num_classes=4, cell="lstm", *,
                 batch_first=True, last="keras", train_bias_hh=False, padding_idx=None, mask_zero=False,
                 pack=True):
        super().__init__()
        self.mask_zero, self.pack = mask_zero, pack  # pack=False with mask_zero: the mask ignored (a bug)
        rnn = {"lstm": LastStepLSTM, "gru": LastStepGRU}[cell]
        self.embedding = nn.Embedding(vocab, embed_dim, padding_idx=padding_idx)
        self.encoder = rnn(embed_dim, units, batch_first=batch_first, bidirectional=True, last=last,
                           train_bias_hh=train_bias_hh)
        self.classifier = nn.Linear(2 * units, num_classes)

    def forward(self, tokens):
        if self.mask_zero and self.pack:
            return self.classifier(self.encoder(self.embedding(tokens), (tokens != 0).sum(1)))
        return self.classifier(self.encoder(self.embedding(tokens)))


def text_classifier(**cfg) -> TextClassifier:
    return TextClassifier(**cfg)
