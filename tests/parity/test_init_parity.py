"""Initialisation parity (parity.diagnosis.initialisation): Keras initialiser configs against fresh torch weights."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import math

import numpy as np
import pytest

from parity.diagnosis.initialisation import (compare_tensor, identify_torch, init_findings, keras_distribution, keras_fans,
                                torch_fans)

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def test_keras_formulas():
    d = keras_distribution({"class_name": "GlorotUniform", "config": {}}, (3, 3, 32, 64))
    assert d["dist"] == "uniform" and math.isclose(d["bound"], math.sqrt(6 / (9 * 32 + 9 * 64)))
    d = keras_distribution({"class_name": "HeNormal", "config": {}}, (3, 3, 32, 64))
    assert d["dist"] == "truncated" and math.isclose(d["std"], math.sqrt(2 / 288))
    assert math.isclose(d["trunc_std"], math.sqrt(2 / 288) / 0.87962566103423978)
    assert keras_distribution("zeros", (8,))["value"] == 0.0
    # depthwise kernels: Keras counts fans like a conv, torch from the (C, 1, kh, kw) weight
    assert keras_fans((3, 3, 16, 1)) == (144, 9) and torch_fans((16, 1, 3, 3)) == (9, 144)


@pytest.mark.parametrize("init, name", [
    (lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)), "kaiming_uniform(a=sqrt(5)) (torch default)"),
    (nn.init.xavier_uniform_, "xavier_uniform"),
    (nn.init.kaiming_normal_, "kaiming_normal(relu) (no truncation)"),
    (nn.init.xavier_normal_, "xavier_normal"),
])
def test_torch_initialisers_are_recognised(init, name):
    torch.manual_seed(0)
    w = torch.empty(64, 32, 3, 3)
    init(w)
    assert identify_torch(w.numpy())[0] == name


def test_he_normal_truncated_vs_kaiming_normal_plain():
    torch.manual_seed(0)
    w = torch.empty(64, 32, 3, 3)
    nn.init.kaiming_normal_(w)
    f = compare_tensor("c", "weight", {"class_name": "HeNormal", "config": {}}, (3, 3, 32, 64), w.numpy())
    assert f is not None and f.cause == "init" and f.severity == "warning"
    assert "reference he_normal (truncated)" in f.message and "kaiming_normal(relu) (no truncation)" in f.message
    s = math.sqrt(2 / 288) / 0.87962566103423978
    assert f.fix == f"nn.init.trunc_normal_(m.weight, std={s:.6g}, a={-2 * s:.6g}, b={2 * s:.6g})"
    nn.init.xavier_uniform_(w)
    glorot = {"class_name": "GlorotUniform", "config": {}}
    assert compare_tensor("c", "weight", glorot, (3, 3, 32, 64), w.numpy()) is None


def test_user_cnn_defaults_differ_and_a_keras_style_init_matches():
    pytest.importorskip("keras")
    from parity.user.align import align
    from benchmarks import user_models

    km = user_models.keras_cnn()
    torch.manual_seed(0)
    tm = user_models.torch_cnn()
    taps = align(km, tm).taps
    found = {(f.path, f.message.split(" init")[0]) for f in init_findings(km, tm, taps)}
    assert ("conv2", "weight") in found and ("conv2", "bias") in found and ("fc1", "bias") in found
    f = next(f for f in init_findings(km, tm, taps) if f.path == "fc1" and f.message.startswith("weight"))
    assert f.message.startswith("weight init: reference glorot_uniform (U(+-0.144)), port kaiming_uniform(a=sqrt(5)) "
                                "(torch default)")
    assert f.fix == "nn.init.xavier_uniform_(m.weight)"
    for m in tm.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    assert init_findings(km, tm, taps) == []


def test_bias_message():
    b = np.random.default_rng(0).uniform(-0.1, 0.1, 32)
    f = compare_tensor("fc", "bias", {"class_name": "Zeros", "config": {}}, (32,), b)
    assert f.message.startswith("bias init: reference zeros, port uniform(+-1/sqrt(fan_in)) (torch default)")
    assert f.fix == "nn.init.zeros_(m.bias)"


def test_the_check_reports_init_differences_as_warnings():
    pytest.importorskip("keras")
    from parity import harness

    r = harness.check("keypoints", stages="structure")
    init = [f for f in r.initialisation if f.cause == "init"]
    assert not [f for f in r.findings if f.cause == "init"]  # not evidence of a divergence: its own list
    assert r.passed and init and all(f.severity == "warning" for f in init)
    assert any(f.path == "fc2" and "xavier_normal" in f.message for f in init)
