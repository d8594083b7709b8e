"""A Keras GRU (reset_after=True) has two trained biases, bias (2, 3H): bias[0] is torch's bias_ih, bias[1] its
bias_hh. Both are compared (gradient, update, optimizer slots) and both train in the port; before, bias_hh was
neither compared nor in the port's optimizer, so a correct GRU port FAILED from the second step on and a frozen
or detached bias_hh went unseen."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from tests.planted_ports import assert_found_and_named
from weight_converters import recurrent as R
from weight_converters.keras import companion_vars, var_to_torch


def test_gru_bias_rows_convert_to_bias_ih_and_bias_hh_with_gates_swapped():
    h = 2
    b = np.arange(2 * 3 * h, dtype=np.float64).reshape(2, 3 * h)  # rows: input, recurrent; gates z, r, h
    (key, var), = companion_vars("gru", "backward/bias")
    assert key == "bias_hh_l0_reverse" and var == "backward/bias" and var.row == 1
    assert var_to_torch("gru", "backward/bias", b).tolist() == [2, 3, 0, 1, 4, 5]  # r, z, n of row 0
    assert var_to_torch("gru", var, b).tolist() == [8, 9, 6, 7, 10, 11]  # row 1
    assert companion_vars("lstm", "forward/bias") == [] and companion_vars("gru", "forward/kernel") == []
    assert R.RowVar("bias", 1) in {"bias": 0}  # the reference's values are found under the Keras name


def test_correct_gru_port_passes_several_steps_with_bias_hh_compared():
    pytest.importorskip("keras")
    from parity.harness import check

    r = check("textgru", steps=3)  # failed before: bias_hh (Keras bias[1]) was not trained by the port
    assert r.passed, r.findings
    grads = {t.path for t in r.stage("gradients").tensors}
    assert {"encoder:bias_hh_l0.grad", "encoder:bias_hh_l0_reverse.grad"} <= grads
    step = {t.path for t in r.stage("step").tensors}
    assert {"encoder:bias_hh_l0.update@step1", "encoder:bias_hh_l0.momentum@step3"} <= step


@pytest.mark.parametrize("name", ["tg_bias_hh_frozen", "tg_bias_hh_detached"])
def test_bias_hh_bug_seen_only_in_its_gradient_is_found_and_named(name):
    pytest.importorskip("keras")
    o = assert_found_and_named(name)
    assert "bias_hh" in o.cause_message
