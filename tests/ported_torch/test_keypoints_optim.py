"""The keypoints optimizer, SGD(lr 0.01, momentum 0.9, Nesterov, weight_decay 1e-6), on both sides, with
small float64 tensors and fixed gradients (no model: the optimizer rules alone), through the SGD adapter of
:mod:`parity.optim.adapters` (what the harness uses):

(a) torch's coupled decay applied on the Keras side as g += wd*w makes the steps equal;
(b) Keras' own SGD(weight_decay=wd) is decoupled: after one Nesterov step it differs from torch by exactly
    lr * mu * wd * w (parity.pairs.keypoints.KEYPOINTS_WEIGHT_DECAY);
(c) after an lr change at the second step, Keras' Nesterov (momentum carries the old lr) and torch's part ways
    by -mu^2 * (lr1 - lr2) * b_1 (parity.pairs.keypoints.KERAS_NESTEROV_RULE);
(d) Keras applies momentum 0.9 as float32(0.9) even on float64 variables, which is why the adapter gives torch
    ``float32_rounded(mu)``: a torch SGD with the exact 0.9 is off by (mu - f32(mu)) * lr * b_0.
"""
from __future__ import annotations

import parity.core.env  # noqa: F401

import numpy as np
import pytest

from parity.core.conventions import float32_rounded
from parity.optim.adapters import ParamRef, get_adapter
from parity.pairs.keypoints import KEYPOINTS_SGD_LR, KEYPOINTS_SGD_MOMENTUM, KEYPOINTS_WEIGHT_DECAY, SPEC
from tests.keras_dtype import keras_float64

SHAPES = {"fc2.weight": ("fc2", "kernel", (3, 4)), "fc2.bias": ("fc2", "bias", (4,))}
#: float64, a handful of multiply-adds per element: agreement to rounding (measured <= 7e-18 abs).
EXACT = 1e-15
#: The momentum Keras' SGD multiplies by (python float -> float32 tensor -> variable dtype).
KERAS_MU = float32_rounded(KEYPOINTS_SGD_MOMENTUM)


@pytest.fixture(autouse=True)
def float64_keras():
    """Keras stores the learning rate as a floatx variable: in float32, 0.01 is 0.0099999998 (2e-9 off)."""
    with keras_float64():
        yield


def _init():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=shape) for k, (_, _, shape) in SHAPES.items()}


def _grad(w: np.ndarray, step: int) -> np.ndarray:
    """A fixed, weight-dependent gradient (both sides see the same w while they agree)."""
    return 0.5 * w + np.cos(np.arange(w.size).reshape(w.shape) + step)


def run_keras(spec, steps: int, native_keras_decay: bool = False):
    """Weights and (Keras-convention) slots after ``steps`` steps. ``native_keras_decay``: what a user would
    write, ``keras.optimizers.SGD(weight_decay=wd)`` with raw gradients, instead of the adapter's g += wd*w."""
    import keras

    adapter = get_adapter("sgd")
    w0 = _init()
    variables = [keras.Variable(w0[k], name=var) for k, (_, var, _) in SHAPES.items()]
    refs = [ParamRef(k, layer, var, "dense") for k, (layer, var, _) in SHAPES.items()]
    if native_keras_decay:
        opt = keras.optimizers.SGD(learning_rate=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                                   weight_decay=spec.weight_decay)
    else:
        opt = adapter.keras_optimizer(spec, refs)
    for step in range(steps):
        grads = [_grad(np.asarray(v.numpy()), step) for v in variables]
        if native_keras_decay:
            opt.learning_rate = spec.lr_at(step)
        else:
            grads = adapter.keras_prepare(spec, step, opt, grads, variables, refs)
        opt.apply_gradients(zip(grads, variables))
    slots = adapter.keras_slots(opt, variables, refs)
    return {k: np.asarray(v.numpy()) for k, v in zip(SHAPES, variables)}, slots


def run_torch(spec, steps: int, exact_momentum: bool = False):
    """Weights, slots (Keras convention) and the momentum buffers after each step. ``exact_momentum``: a plain
    ``torch.optim.SGD(momentum=0.9)`` instead of the adapter's float32-rounded momentum."""
    import torch

    adapter = get_adapter("sgd")
    w0 = _init()
    params = {k: torch.nn.Parameter(torch.from_numpy(w0[k].copy())) for k in SHAPES}
    refs = [ParamRef(k, layer, var, "dense", params[k]) for k, (layer, var, _) in SHAPES.items()]
    if exact_momentum:
        opt = torch.optim.SGD(list(params.values()), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                              weight_decay=spec.weight_decay)
    else:
        opt = adapter.torch_optimizer(spec, refs, {})
    buffers = []
    for step in range(steps):
        adapter.torch_prepare(spec, step, opt)
        for p in params.values():
            p.grad = torch.from_numpy(_grad(p.detach().numpy(), step))
        opt.step()
        buffers.append({k: opt.state[p]["momentum_buffer"].numpy().copy() for k, p in params.items()})
    weights = {k: p.detach().numpy().copy() for k, p in params.items()}
    return weights, adapter.torch_slots(spec, steps - 1, opt, refs), buffers


def test_spec_is_the_published_optimizer():
    o = SPEC.optimizer
    assert (o.kind, o.lr, o.momentum, o.nesterov, o.weight_decay) == (
        "sgd", KEYPOINTS_SGD_LR, KEYPOINTS_SGD_MOMENTUM, True, KEYPOINTS_WEIGHT_DECAY) == ("sgd", 0.01, 0.9, True, 1e-6)


def test_a_coupled_decay_on_both_sides_steps_equal():
    spec = SPEC.optimizer
    wk, sk = run_keras(spec, steps=3)
    wt, st, _ = run_torch(spec, steps=3)
    for k in SHAPES:
        assert np.abs(wk[k] - wt[k]).max() <= EXACT
        # Keras m == -lr * torch buffer while lr is constant
        assert np.abs(sk[k]["momentum"] - st[k]["momentum"]).max() <= EXACT


def test_b_keras_native_weight_decay_is_decoupled():
    spec = SPEC.optimizer
    wk, _ = run_keras(spec, steps=1, native_keras_decay=True)
    wt, _, _ = run_torch(spec, steps=1)
    w0 = _init()
    for k in SHAPES:
        # torch decays by lr*(1+mu)*wd*w through the buffer, Keras by lr*wd*w outside it
        predicted = spec.lr * KERAS_MU * spec.weight_decay * w0[k]
        assert np.abs(predicted).max() > 1e-9  # ~9e-9 * |w|: small, but far above float64 rounding
        # rtol: Keras also rounds wd to float32 (1e-6 -> 9.99999997e-07, 2.5e-9 relative)
        np.testing.assert_allclose(wk[k] - wt[k], predicted, rtol=1e-5, atol=0)


def test_c_lr_change_separates_keras_and_torch_nesterov():
    lr1, lr2 = KEYPOINTS_SGD_LR, KEYPOINTS_SGD_LR / 10
    spec = SPEC.optimizer.replace(lr_schedule=(lr1, lr2))
    wk1, _ = run_keras(spec, steps=1)
    wt1, _, _ = run_torch(spec, steps=1)
    for k in SHAPES:  # first step (lr1): equal
        assert np.abs(wk1[k] - wt1[k]).max() <= EXACT
    wk, sk = run_keras(spec, steps=2)
    wt, st, bufs = run_torch(spec, steps=2)
    for k in SHAPES:
        b1 = bufs[0][k]  # torch buffer after the first step: g_0 + wd * w_0
        predicted = -KERAS_MU**2 * (lr1 - lr2) * b1
        assert np.abs(predicted).max() > 1e-3
        np.testing.assert_allclose(wk[k] - wt[k], predicted, rtol=1e-9, atol=1e-15)
        # the slots, in Keras' convention: m_2 vs -lr2 * b_2 differ by -mu * (lr1 - lr2) * b_1
        np.testing.assert_allclose(sk[k]["momentum"] - st[k]["momentum"], -KERAS_MU * (lr1 - lr2) * b1,
                                   rtol=1e-9, atol=1e-15)


def test_d_keras_momentum_is_float32_even_in_float64():
    spec = SPEC.optimizer
    wk, _ = run_keras(spec, steps=1)
    wt, _, bufs = run_torch(spec, steps=1, exact_momentum=True)
    for k in SHAPES:
        predicted = (spec.momentum - KERAS_MU) * spec.lr * bufs[0][k]  # b_0 = g + wd*w
        assert 1e-12 < np.abs(predicted).max() < 1e-9
        # atol: the difference of two O(1) float64 weights carries ~1e-16 of rounding
        np.testing.assert_allclose(wk[k] - wt[k], predicted, rtol=1e-6, atol=1e-15)
