"""Embedding(mask_zero=True) feeding an LSTM/GRU/Bidirectional (issue 12): the inputs are post-padded token ids
(POST_PADDED_TOKENS), a port that packs them (MASK_ZERO_AS_PACKING) passes float64 every stage, in the builder
pair (textmask) and in user mode (parity.compare with nn.LSTM/nn.GRU fed a PackedSequence by the parent's
forward); ports that step over the padding are found at the recurrent layer and named mask_zero_ignored; a
mask_zero Embedding feeding another layer is refused in one line."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.core.data import make_batch
from tests.planted_ports import assert_found_and_named

V, D, H, C, L = 30, 6, 5, 3, 10


def test_mask_zero_batches_are_post_padded_with_varied_lengths():
    x, _ = make_batch(0, 0, 8, (L,), ("onehot", C), (0, V), "float64", integer=True, post_padded=True)
    lengths = (x != 0).sum(1)
    assert lengths[0] == L and lengths.min() >= 1 and len(set(lengths.tolist())) > 2
    for row, n in zip(x, lengths):  # ids in [1, V) then only zeros: no hole, no leading pad
        assert (row[:n] >= 1).all() and (row[:n] < V).all() and (row[n:] == 0).all()


def test_textmask_pair_passes_every_stage_float64():
    pytest.importorskip("keras")
    from parity.harness import check

    r = check("textmask")
    assert r.passed, r.findings
    assert {"structure", "forward_eval", "forward_train", "gradients", "step", "isolated"} <= {s.name for s in r.stages}
    assert {"encoder:weight_ih_l0_reverse.grad", "embedding:weight.grad"} <= {t.path for t in r.stage("gradients").tensors}


@pytest.mark.parametrize("name", ["tm_mask_ignored", "tm_pre_padding_lengths", "tm_padding_idx_no_pack"])
def test_port_stepping_over_padding_is_found_at_the_rnn_and_named(name):
    pytest.importorskip("keras")
    assert_found_and_named(name)


def _keras(cell="lstm", bidi=True, pool=False):
    import keras
    from keras import layers

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        t = keras.Input((L,), dtype="int32")
        x = layers.Embedding(V, D, mask_zero=True)(t)
        if pool:  # a masked mean: a consumer of the mask that is not recurrent
            x = layers.GlobalAveragePooling1D()(x)
        else:
            rnn = {"lstm": layers.LSTM, "gru": layers.GRU}[cell](H)
            x = (layers.Bidirectional(rnn, name="encoder") if bidi else rnn)(x)
        return keras.Model(t, layers.Dense(C, activation="softmax")(x))
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


def _port(cell="lstm", bidi=True, pack=True, pool=False):
    """A user's port: the parent packs the post-padded ids, nn.LSTM/nn.GRU gets a PackedSequence, h_n is the
    last step (forward's at each row's length, backward's at step 0)."""
    import torch
    from torch import nn

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](D, H, batch_first=True, bidirectional=bidi)
            self.fc = nn.Linear(D if pool else H * (2 if bidi else 1), C)
            if cell == "lstm":  # Keras' one bias per direction: bias_hh holds 0, out of training
                for n, p in self.rnn.named_parameters():
                    if n.startswith("bias_hh"):
                        p.requires_grad_(False)

        def forward(self, tokens):
            if pool:
                return self.fc(self.emb(tokens).mean(1))
            x = self.emb(tokens)
            if pack:
                x = nn.utils.rnn.pack_padded_sequence(x, (tokens != 0).sum(1).cpu(), batch_first=True,
                                                      enforce_sorted=False)
                _, h = self.rnn(x)
                h = h[0] if isinstance(h, tuple) else h
                return self.fc(torch.cat([h[-2], h[-1]], 1) if bidi else h[-1])
            out, _ = self.rnn(x)  # the bug: the padding stepped over
            return self.fc(torch.cat([out[:, -1, :H], out[:, 0, H:]], 1) if bidi else out[:, -1])

    return Port().double()


@pytest.mark.parametrize("cell, bidi", [("lstm", True), ("gru", True), ("lstm", False)])
def test_user_packed_port_passes_every_stage_float64(cell, bidi):
    pytest.importorskip("keras")
    import parity

    r = parity.compare(_keras(cell, bidi), _port(cell, bidi))
    assert r.passed, r.findings
    assert {"forward_eval", "gradients", "step", "isolated"} <= {s.name for s in r.stages if s.passed}


def test_user_port_without_packing_is_named_mask_zero_ignored():
    pytest.importorskip("keras")
    import parity

    r = parity.compare(_keras(), _port(pack=False), stages=("structure", "forward_eval", "isolated"))
    assert not r.passed
    assert any((f.cause, f.path) == ("mask_zero_ignored", "encoder") for f in r.findings), r.findings


def test_mask_zero_feeding_a_non_recurrent_layer_is_refused_in_one_line():
    pytest.importorskip("keras")
    import parity
    from parity.core.errors import UsageError

    with pytest.raises(UsageError) as e:
        parity.compare(_keras(pool=True), _port(pool=True), stages=("structure", "forward_eval"))
    line = str(e.value)
    assert "\n" not in line and line.startswith("expected an Embedding(mask_zero=True)") and "GlobalAveragePooling1D" in line


@pytest.mark.parametrize("bidi", [True, False])
def test_stacked_packed_sequences_pass_float64(bidi):
    """LSTM(return_sequences=True) -> LSTM under the mask, the port passing the PackedSequence on: the first
    layer's sequence compared as Keras' (Bidirectional: zeros at masked steps; one direction: its last unmasked
    output repeated), its gradient zero there (the next layer skips those steps)."""
    pytest.importorskip("keras")
    import keras
    from keras import layers
    from torch import nn

    import parity

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.l1 = nn.LSTM(D, H, batch_first=True, bidirectional=bidi)
            self.l2 = nn.LSTM(H * (2 if bidi else 1), H, batch_first=True)
            self.fc = nn.Linear(H, C)
            for n, p in list(self.l1.named_parameters()) + list(self.l2.named_parameters()):
                if n.startswith("bias_hh"):
                    p.requires_grad_(False)

        def forward(self, tokens):
            packed = nn.utils.rnn.pack_padded_sequence(self.emb(tokens), (tokens != 0).sum(1).cpu(),
                                                       batch_first=True, enforce_sorted=False)
            seq, _ = self.l1(packed)
            _, (h, _c) = self.l2(seq)
            return self.fc(h[-1])

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        t = keras.Input((L,), dtype="int32")
        x = layers.Embedding(V, D, mask_zero=True)(t)
        first = layers.LSTM(H, return_sequences=True)
        x = (layers.Bidirectional(first, name="seq") if bidi else first)(x)
        x = layers.LSTM(H, name="last")(x)
        r = parity.compare(keras.Model(t, layers.Dense(C, activation="softmax")(x)), Port().double())
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    assert r.passed, r.findings
    assert any(t.path.endswith(":grad") and not t.path.startswith(("embedding", "dense"))
               for t in r.stage("gradients").tensors)
