"""A seq2seq encoder LSTM(return_state=True) whose [h, c] start a decoder LSTM (initial_state=): the two-input
port ``_, (h, c) = encoder(src); decoder(tgt, (h, c))`` passes float64 every stage (user mode), and a port that
swaps the states or does not pass them is found at the decoder and named rnn_initial_state."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

from tests.planted_ports import assert_found_and_named


def test_seq2seq_port_passes_every_stage_float64():
    pytest.importorskip("keras")
    import keras

    import parity
    from ported_torch.seq2seq import seq2seq as port
    from reference_keras.seq2seq import seq2seq as reference

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:  # the global policy stays float64 during the check (parity's input-unpacking layers follow it)
        r = parity.compare(reference(), port().double())
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    assert r.passed, r.findings
    assert {"structure", "forward_eval", "forward_train", "gradients", "step", "isolated"} <= {
        s.name for s in r.stages if s.passed}
    grads = {t.path for t in r.stage("gradients").tensors}
    assert {"encoder:weight_hh_l0.grad", "decoder:weight_hh_l0.grad"} <= grads  # the states carry the gradient


@pytest.mark.parametrize("name", ["s2_states_swapped", "s2_states_not_passed"])
def test_decoder_state_bug_found_at_the_decoder_and_named(name):
    pytest.importorskip("keras")
    assert_found_and_named(name)
