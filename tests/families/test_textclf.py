"""The pairs beyond 2-D CNNs (textclf: Bidirectional LSTM, textgru: Bidirectional GRU, transformer: attention,
layer normalisation, gelu; encdec: transposed conv, up-sampling, skips) pass every stage in float64, and the planted bugs of their families are found at their
layer and named, through the check the CLI runs."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from benchmarks import mutations as M
from parity.core.data import make_batch
from tests.planted_ports import assert_found_and_named


def test_token_batches_are_integer_ids_in_range():
    x, y = make_batch(0, 0, 8, (12,), ("onehot", 4), (0, 50), "float64", integer=True)
    assert x.dtype == np.int64 and x.shape == (8, 12) and x.min() >= 0 and x.max() < 50 and y.shape == (8, 4)


@pytest.mark.parametrize("pair", ["textclf", "textgru", "transformer", "encdec", "seqconv"])
def test_pair_passes_every_stage_float64(pair):
    pytest.importorskip("keras")
    from parity.harness import check

    r = check(pair)
    assert r.passed, r.findings
    names = {st.name for st in r.stages}
    assert {"structure", "forward_eval", "forward_train", "gradients", "step", "isolated"} <= names
    grads = {t.path for t in r.stage("gradients").tensors}
    if pair == "seqconv":  # channels-first activations compared channels-last, their gradients too
        assert {"conv1:grad", "conv1:weight.grad", "pool1:grad"} <= grads
    elif pair == "encdec":  # the transposed conv's kernel (in, out, kh, kw) is compared
        assert {"up1:weight.grad", "up1:bias.grad"} <= grads
    elif pair == "transformer":  # every attention projection is compared (per-head kernels converted)
        assert {f"attention:{p}_proj.weight.grad" for p in "qkv"} | {"attn_norm:weight.grad"} <= grads
    else:  # both directions' kernels are compared (Bidirectional variables forward/... and backward/...)
        assert {"encoder:weight_ih_l0.grad", "encoder:weight_ih_l0_reverse.grad", "embedding:weight.grad"} <= grads


RECURRENT = [m.name for m in M.CATALOGUE if m.pair in ("textclf", "textgru", "transformer", "encdec", "seqconv")]


@pytest.mark.parametrize("name", RECURRENT)
def test_planted_recurrent_bug_is_found_where_it_is_and_named(name):
    pytest.importorskip("keras")
    assert_found_and_named(name)
