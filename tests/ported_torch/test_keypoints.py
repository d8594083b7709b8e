"""The facial-keypoints port: parameter counts, published inits, and a float64 forward equal to the Keras
twin at every tap after a weight copy that reorders fc1's rows (Keras HWC flatten -> torch CHW)."""
from __future__ import annotations

import parity.core.env  # noqa: F401

import math

import numpy as np
import pytest
import torch

from parity.pairs.keypoints import SPEC, taps
from ported_torch.inspect import param_counts
from ported_torch.keypoints import keypoints_cnn
from tests.ported_torch.pair_forward import build_float64, copy_weights, tap_diffs

CFG = SPEC.default_config
#: float64 after an exact weight copy: measured max |diff| 5.9e-16 (fc1) over the 16 taps, 1.3e-15 with Tanh.
FLOAT64_ATOL = 1e-12


def test_param_counts_both_sides():
    ref, port = build_float64(SPEC, CFG)
    assert ref.count_params() == param_counts(port)["total"] == SPEC.published_params["total"] == 2_755_102
    assert param_counts(port)["buffers"] == 0
    assert [t.ref for t in taps(CFG)] == [lay.name for lay in ref.layers[1:]]
    assert ref.get_layer("sandwich4_relu").output.shape[1:] == (6, 6, 256)


def test_published_inits():
    torch.manual_seed(0)
    m = keypoints_cnn()
    fan_in = 128 * 9
    assert m.sandwich4.conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)  # kaiming_normal
    assert m.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 9216), rel=0.02)
    assert m.fc2.weight.std().item() == pytest.approx(math.sqrt(2 / (256 + 30)), rel=0.05)  # xavier_normal
    assert isinstance(m.flatten, torch.nn.Flatten)
    assert not any(isinstance(x, torch.nn.ReLU) and x.inplace for x in m.modules())


@pytest.mark.parametrize("final_tanh", [False, True])
def test_float64_forward_equals_reference_at_every_tap(final_tanh):
    cfg = SPEC.config(final_tanh=final_tanh)
    ref, port = build_float64(SPEC, cfg)
    assert copy_weights(SPEC, cfg, ref, port).ok
    x = np.random.default_rng(0).uniform(*SPEC.input_range, (SPEC.default_batch, *cfg["input_shape"]))
    diffs = tap_diffs(SPEC, cfg, ref, port, x)
    assert len(diffs) == 16 + final_tanh
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= FLOAT64_ATOL, (worst, diffs[worst])


def test_fc1_rows_must_be_reordered():
    """Without flatten_chw the converter transposes fc1 only: the CHW-flattening port then reads every input
    of fc1 from the wrong place and diverges from fc1 on, while everything before it still agrees."""
    import dataclasses

    bad_taps = [dataclasses.replace(t, flatten_chw=None) if t.path == "fc1" else t for t in taps(CFG)]
    bad = dataclasses.replace(SPEC, taps=lambda c: bad_taps)
    ref, port = build_float64(SPEC, CFG)
    copy_weights(bad, CFG, ref, port)
    x = np.random.default_rng(1).uniform(0.0, 1.0, (2, *CFG["input_shape"]))
    diffs = tap_diffs(SPEC, CFG, ref, port, x)
    assert diffs["flatten"] <= FLOAT64_ATOL and diffs["fc1"] > 1e-3
