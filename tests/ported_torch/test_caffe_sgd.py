"""Caffe's SGD solver on both sides against a numpy transcription of sgd_solver.cpp, over two steps with an
lr change (lr_policy "step"), per-parameter lr_mult / decay_mult and a frozen (lr_mult 0) layer; the naive
torch.optim.SGD config agrees on step 1 and parts ways after the lr change; the "caffe_sgd" adapter the
harness uses drives both sides to the same weights and slots."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest
import torch

from parity.optim.adapters import ParamRef, get_adapter
from parity.core.spec import OptimizerSpec
from ported_torch.optim import CaffeSGD

LRS = (1e-2, 1e-3)                       # the solver's step policy, compressed: gamma 0.1 after step 1
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4       # solver.prototxt
#: (layer, var) -> shape, lr_mult, decay_mult as in tracker.prototxt: fc weights 10/1, biases 20/0, convs 0.
PARAMS = {("fc6", "kernel"): ((5, 3), 10.0, 1.0), ("fc6", "bias"): ((3,), 20.0, 0.0),
          ("conv1", "kernel"): ((4, 2), 0.0, 1.0), ("conv1", "bias"): ((2,), 0.0, 0.0)}
LR_MULT = {"fc6:kernel": 10.0, "fc6:bias": 20.0, "conv1": 0.0}
DECAY_MULT = {"fc6:bias": 0.0, "conv1:bias": 0.0}   # weights: the default decay_mult 1
#: numpy, torch and Keras evaluate the same expression in the same order: measured bit-identical; 1e-15
#: relative allows one rounding difference.
RTOL = 1e-15


def initial(seed=0):
    rng = np.random.default_rng(seed)
    weights = {k: rng.standard_normal(shape) for k, (shape, _, _) in PARAMS.items()}
    grads = [{k: rng.standard_normal(shape) for k, (shape, _, _) in PARAMS.items()} for _ in LRS]
    return weights, grads


def caffe_sgd_numpy(weights, grads):
    """sgd_solver.cpp: Regularize (diff += wd * decay_mult * w), ComputeUpdateValue (history = local_rate * diff +
    momentum * history), Update (w -= history). Returns the weights and histories after each step."""
    w = {k: v.copy() for k, v in weights.items()}
    hist = {k: np.zeros_like(v) for k, v in weights.items()}
    out = []
    for lr, g in zip(LRS, grads):
        for k, (_, lr_mult, decay_mult) in PARAMS.items():
            diff = g[k] + WEIGHT_DECAY * decay_mult * w[k]
            hist[k] = MOMENTUM * hist[k] + lr * lr_mult * diff
            w[k] = w[k] - hist[k]
        out.append(({k: v.copy() for k, v in w.items()}, {k: v.copy() for k, v in hist.items()}))
    return out


def torch_run(weights, grads, make_optimizer, set_lr):
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items()}
    opt = make_optimizer(params)
    out = []
    for step, (lr, g) in enumerate(zip(LRS, grads)):
        set_lr(opt, lr)
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k].copy())
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return out, opt, params


def caffe_groups(params):
    return [{"params": [p], "lr_mult": PARAMS[k][1], "decay_mult": PARAMS[k][2]} for k, p in params.items()]


def set_base_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def assert_close(got, want, what):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=1e-300, err_msg=f"{what} {k}")


def test_torch_caffe_sgd_is_the_numpy_solver():
    weights, grads = initial()
    want = caffe_sgd_numpy(weights, grads)
    got, opt, params = torch_run(weights, grads, lambda ps: CaffeSGD(caffe_groups(ps), lr=LRS[0], momentum=MOMENTUM,
                                                                     weight_decay=WEIGHT_DECAY), set_base_lr)
    for step in range(len(LRS)):
        assert_close(got[step], want[step][0], f"step {step + 1}")
    assert_close({k: opt.state[p]["momentum_buffer"].numpy() for k, p in params.items()}, want[-1][1], "history")
    np.testing.assert_array_equal(got[-1][("conv1", "kernel")], weights[("conv1", "kernel")])  # lr_mult 0: frozen


def test_naive_torch_sgd_agrees_until_the_lr_changes():
    """torch.optim.SGD with lr*lr_mult and wd*decay_mult per group: buf = mu*buf + g; w -= lr*buf. Same first
    step; after the lr drop it applies the *new* lr to the whole buffer, Caffe keeps the old lr inside history."""
    weights, grads = initial()
    want = caffe_sgd_numpy(weights, grads)

    def naive(ps):
        groups = [{"params": [p], "lr": LRS[0] * PARAMS[k][1], "weight_decay": WEIGHT_DECAY * PARAMS[k][2],
                   "lr_mult": PARAMS[k][1]} for k, p in ps.items()]
        return torch.optim.SGD(groups, lr=LRS[0], momentum=MOMENTUM)

    def set_lr(opt, lr):
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]

    got, _, _ = torch_run(weights, grads, naive, set_lr)
    assert_close(got[0], want[0][0], "step 1")
    k = ("fc6", "kernel")
    step2 = np.abs(want[1][0][k] - weights[k]).max()
    assert np.abs(got[1][k] - want[1][0][k]).max() > 0.1 * step2  # mu*(lr1-lr2)*lr_mult*g1: not a rounding


def test_keras_caffe_sgd_is_the_numpy_solver():
    keras = pytest.importorskip("keras")
    from reference_keras.optimizers import CaffeSGD as KerasCaffeSGD

    weights, grads = initial()
    want = caffe_sgd_numpy(weights, grads)
    layers = {name: keras.layers.Dense(shape[1], name=name, dtype="float64")
              for (name, var), (shape, _, _) in PARAMS.items() if var == "kernel"}
    for (name, var), (shape, _, _) in PARAMS.items():
        if var == "kernel":
            layers[name].build((None, shape[0]))
    variables = {(name, v.name): v for name, layer in layers.items() for v in layer.weights}
    for k, v in variables.items():
        v.assign(weights[k])
    assert variables[("fc6", "kernel")].path == "fc6/kernel"
    # built while floatx is float32: the lr variable must still be float64 (float32(1e-3) is 4.7e-8 relative off)
    assert keras.config.floatx() == "float32"
    opt = KerasCaffeSGD(learning_rate=LRS[0], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, lr_mult=LR_MULT,
                        decay_mult=DECAY_MULT)
    assert opt.learning_rate.dtype == "float64"
    order = list(variables)
    for step, (lr, g) in enumerate(zip(LRS, grads)):
        opt.learning_rate = lr
        opt.apply_gradients([(g[k], variables[k]) for k in order])
        assert_close({k: v.numpy() for k, v in variables.items()}, want[step][0], f"step {step + 1}")
    hist = {k: opt.momentums[opt._get_variable_index(variables[k])].numpy() for k in order}
    assert_close(hist, want[-1][1], "history")


def test_adapter_drives_both_sides_to_the_same_weights_and_slots():
    keras = pytest.importorskip("keras")
    import parity.pairs.goturn  # noqa: F401  (registers the pair and, with it, the caffe_sgd adapter)
    from weight_converters.keras import var_to_torch

    adapter = get_adapter("caffe_sgd")
    spec = OptimizerSpec(kind="caffe_sgd", lr=LRS[0], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                         lr_mult={"fc6:kernel": 10.0, "fc6:bias": 20.0}, decay_mult={"fc6:bias": 0.0},
                         lr_schedule=LRS)
    rng = np.random.default_rng(1)
    dense = keras.layers.Dense(3, name="fc6", dtype="float64")
    dense.build((None, 5))
    linear = torch.nn.Linear(5, 3).double()
    kernel, bias = rng.standard_normal((5, 3)), rng.standard_normal(3)
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
        linear.bias.copy_(torch.from_numpy(bias))
    variables = [dense.kernel, dense.bias]
    refs = [ParamRef("fc6.weight", "fc6", "kernel", "dense"), ParamRef("fc6.bias", "fc6", "bias", "dense")]
    port_refs = [ParamRef(r.key, r.layer, r.var, r.kind, p) for r, p in zip(refs, (linear.weight, linear.bias))]
    k_opt = adapter.keras_optimizer(spec, refs)
    t_opt = adapter.torch_optimizer(spec, port_refs, {})
    for step in range(len(LRS)):
        g_kernel, g_bias = rng.standard_normal((5, 3)), rng.standard_normal(3)
        k_grads = adapter.keras_prepare(spec, step, k_opt, [g_kernel, g_bias], variables, refs)
        k_opt.apply_gradients(zip(k_grads, variables))
        adapter.torch_prepare(spec, step, t_opt)
        linear.weight.grad, linear.bias.grad = torch.from_numpy(g_kernel.T.copy()), torch.from_numpy(g_bias)
        t_opt.step()
        np.testing.assert_allclose(linear.weight.detach().numpy(), dense.kernel.numpy().T, rtol=RTOL, atol=1e-300)
        np.testing.assert_allclose(linear.bias.detach().numpy(), dense.bias.numpy(), rtol=RTOL, atol=1e-300)
    k_slots = adapter.keras_slots(k_opt, variables, refs)
    t_slots = adapter.torch_slots(spec, len(LRS) - 1, t_opt, port_refs)
    assert set(k_slots) == set(t_slots) == {"fc6.weight", "fc6.bias"} and adapter.slot_names == ("momentum",)
    for r in refs:
        np.testing.assert_allclose(t_slots[r.key]["momentum"], var_to_torch(r.kind, r.var, k_slots[r.key]["momentum"]),
                                   rtol=RTOL, atol=1e-300)
    assert [g["lr"] for g in t_opt.param_groups] == [LRS[-1]] * 2 and t_opt.param_groups[1]["lr_mult"] == 20.0
    with pytest.raises(ValueError, match="caffe_sgd: expected nesterov=False"):
        adapter.keras_optimizer(spec.replace(nesterov=True), refs)
