"""Keras go_backwards=True (one direction) is checked, no longer refused: a correct port (``rnn(x.flip(1))``,
outputs as computed) passes every stage in float64, the port's module fed the reversed sequence in isolation; a
port that ignores go_backwards, or flips the outputs back like Bidirectional, is found at the layer and named
``go_backwards``. stateful, return_state (but a plain LSTM's) and Bidirectional(go_backwards) stay refused in one line."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

import parity
from parity.core.families import refusal
from tests.keras_dtype import keras_float64
from tests.planted_ports import assert_found_and_named

PAIRS = [("backwards_gru", (4, 6)), ("backwards_lstm_sequence", (4, 10, 6))]


@pytest.mark.parametrize("name,rnn_shape", PAIRS)
def test_correct_go_backwards_port_passes_float64(name, rnn_shape):
    pytest.importorskip("keras")
    import ported_torch.rnn_variants as P
    import reference_keras.rnn_variants as R

    with keras_float64():
        ref = getattr(R, name)()
    r = parity.compare(ref, getattr(P, name)())
    assert r.passed, r.findings
    fwd = {t.path: t for t in r.stage("forward_eval").tensors}
    iso = {t.path: t for t in r.stage("isolated").tensors}
    assert fwd["rnn"].shape == rnn_shape and iso["rnn"].passed  # fed x.flip(1) in isolation
    assert {"rnn:weight_ih_l0.grad", "rnn:weight_hh_l0.grad"} <= {t.path for t in r.stage("gradients").tensors}


@pytest.mark.parametrize("name", ["rb_go_backwards_ignored", "rb_go_backwards_output_flipped_back"])
def test_go_backwards_bug_found_at_the_layer_and_named(name):
    pytest.importorskip("keras")
    o = assert_found_and_named(name)
    assert "go_backwards" in o.cause_message or "reversed" in o.cause_message


def test_remaining_recurrent_variants_refused_in_one_line():
    for cls, cfg in (("GRU", {"units": 4, "return_state": True}), ("LSTM", {"units": 4, "stateful": True}),
                     ("Bidirectional", {"layer": {"class_name": "LSTM", "config": {"units": 4, "return_state": True}}})):
        msg = refusal(cls, cfg)
        assert msg and "return_state" in msg and "\n" not in msg
    assert refusal("LSTM", {"units": 4, "return_state": True}) is None  # a seq2seq encoder: test_return_state.py
    msg = refusal("Bidirectional", {"layer": {"class_name": "GRU", "config": {"units": 4, "go_backwards": True}}})
    assert msg and "go_backwards" in msg
    assert refusal("GRU", {"units": 4, "go_backwards": True}) is None
