"""The user's own training step: the reference trains with its model.compile(...) configuration, the port with
the user's optimizer factory and loss; a correct pair passes the step stage over 2 steps, and each planted
training-configuration bug is located and named (parity.diagnosis.training_config)."""
from __future__ import annotations

import numpy as np
import pytest

from parity.core.errors import UsageError, UserCodeError
from parity.harness import check
from parity.user.pair import spec_from_user_models
from tests.parity import user_training_models as M

STAGES = "forward_eval,forward_train,gradients,step"


def _run(keras_builder, port_optimizer=None, port_loss=None, steps=2):
    spec = spec_from_user_models(keras_builder, M.port)
    return check(spec, stages=STAGES, steps=steps, port_optimizer=port_optimizer, port_loss=port_loss)


def _cause(result):
    fd = result.first_divergence
    assert fd is not None, result
    assert fd.cause is not None, str(result)
    return fd.cause


@pytest.mark.parametrize("factory", [M.sgd_ok, M.sgd_ok_with_scheduler])
def test_correct_sgd_optimizer_and_loss_pass_two_steps(factory):
    r = _run(M.keras_sgd, factory, M.ce_ok)
    assert r.passed, str(r)
    step = r.stage("step")
    assert any("@step2" in t.path for t in step.tensors)
    assert any(t.path.endswith(".momentum@step2") for t in step.tensors)  # slots compared by name
    assert r.optimizer["kind"] == "user" and r.optimizer["reference"]["class"] == "SGD"


def test_correct_adamw_passes_two_steps():
    r = _run(M.keras_adamw_no_l2, M.adamw_ok, M.ce_ok)
    assert r.passed, str(r)


def test_correct_adam_passes_two_steps():
    r = _run(M.keras_adam, M.adam_ok, M.ce_ok)
    assert r.passed, str(r)
    assert any(t.path.endswith(".v@step2") for t in r.stage("step").tensors)
    assert any("epsilon placement" in a for a in r.stage("step").info["applied"])


@pytest.mark.parametrize("keras_builder, factory, loss, cause, path, words", [
    (M.keras_adam, M.adam_torch_eps, M.ce_ok, "adam_epsilon", None, "epsilon 1e-08 in the port"),
    (M.keras_sgd, M.sgd_no_weight_decay, M.ce_ok, "l2_weight_decay", "conv", "weight decay missing"),
    (M.keras_sgd, M.sgd_lambda_not_2lambda, M.ce_ok, "l2_weight_decay", "conv", "= lam, not 2*lam"),
    (M.keras_sgd, M.sgd_decay_everywhere, M.ce_ok, "weight_decay_unregularised", "conv", "a bias"),
    (M.keras_sgd, M.sgd_lr, M.ce_ok, "learning_rate", None, "learning rate 0.01 in the port"),
    (M.keras_sgd, M.sgd_momentum, M.ce_ok, "momentum", None, "momentum 0.8 in the port"),
    (M.keras_sgd, M.sgd_ok, M.ce_on_probabilities, "loss_on_probabilities", "loss", "probabilities"),
    (M.keras_sgd, M.sgd_ok, M.ce_sum, "loss_reduction", "loss", "reduces with sum"),
    (M.keras_adamw_no_l2, M.adam_coupled_decay, M.ce_ok, "optimizer_class", None, "Keras AdamW, the port with "
     "torch Adam"),
    (M.keras_adamw, M.adamw_ok, M.ce_ok, "l2_weight_decay", "conv", "AdamW has no coupled decay"),
    (M.keras_sgd, M.sgd_fc_lr, M.ce_ok, "learning_rate", "fc", "learning rate 0.005 in the port (param group 1)"),
    (M.keras_sgd, M.sgd_without_batchnorm, M.ce_ok, "parameter_not_optimized", "bn", "never updates it"),
    (M.keras_sgd_clipnorm, M.sgd_ok, M.ce_ok, "gradient_clipping", None, "clips gradients (clipnorm=0.001)"),
    (M.keras_sgd, M.sgd_no_nesterov, M.ce_ok, "nesterov", None, "Nesterov momentum off in the port"),
    (M.keras_sgd, M.sgd_decay_on_batchnorm, M.ce_ok, "weight_decay_unregularised", "bn", "a BatchNorm parameter"),
    (M.keras_sgd, M.sgd_ok, M.ce_label_smoothing, "label_smoothing", "loss", "label smoothing 0.1 in the port"),
    (M.keras_sgd_logits_as_probabilities, M.sgd_ok, M.ce_ok, "from_logits", "loss", "from_logits=False"),
])
def test_planted_training_bug_located_and_named(keras_builder, factory, loss, cause, path, words):
    r = _run(keras_builder, factory, loss)
    assert not r.passed
    c = _cause(r)
    assert c.cause == cause, str(r)
    assert words in c.message, c.message
    if path is not None:
        assert c.path == path, (c.path, str(r))
    stage = r.first_divergence.stage.name
    assert stage == ("gradients" if path == "loss" else "step"), str(r)


def test_without_user_options_the_training_configuration_is_said_to_be_parity_s_own():
    spec = spec_from_user_models(M.keras_sgd, M.port)
    r = check(spec, stages=STAGES, steps=1)
    assert r.passed, str(r)
    assert "parity's own" in r.optimizer["training_configuration"]
    assert any(f.cause == "training_configuration" and f.severity == "info" for f in r.findings)


def test_user_factory_that_raises_is_the_user_s_error():
    with pytest.raises(UserCodeError, match="sgd_raises raised RuntimeError: no optimizer today"):
        _run(M.keras_sgd, M.sgd_raises, M.ce_ok, steps=1)


def test_uncompiled_reference_is_refused_with_one_line():
    with pytest.raises(UsageError, match=r"compiled with model.compile\(optimizer=..., loss=...\)"):
        _run(M.keras_uncompiled, M.sgd_ok, M.ce_ok, steps=1)


def _cli(*argv):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__)), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "parity.cli", "check", "--reference",
                           "user_training_models:keras_sgd", "--port", "user_training_models:port", *argv, "-q",
                           "--out", os.path.join(os.environ.get("TMPDIR", "/tmp"), "parity-user-training")],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_port_optimizer_missing_function_exits_2_before_any_framework():
    p = _cli("--port-optimizer", "user_training_models:nope")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "--port-optimizer user_training_models:nope" in p.stderr


def test_cli_port_optimizer_that_raises_exits_2_naming_it():
    p = _cli("--port-optimizer", "user_training_models:sgd_raises", "--port-loss", "user_training_models:ce_ok",
             "--stages", "gradients,step")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "--port-optimizer user_training_models:sgd_raises raised RuntimeError: no optimizer today" in p.stderr


def test_compare_takes_the_user_s_optimizer_and_loss():
    import parity
    from parity.backends.keras_side import keras_dtype

    with keras_dtype("float64"):
        keras_model = M.keras_sgd()
    port = M.port()
    ok = parity.compare(keras_model, port, stages=STAGES, steps=2, port_optimizer=M.sgd_ok, port_loss=M.ce_ok())
    assert ok.passed, str(ok)
    bad = parity.compare(keras_model, port, stages=STAGES, steps=2, port_optimizer=M.sgd_lr, port_loss=M.ce_ok())
    assert _cause(bad).cause == "learning_rate", str(bad)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_model_brings_its_training_configuration(tmp_path, suffix):
    """A saved reference is loaded with compile=False; its optimizer and loss come from the file, read as data."""
    import warnings

    path = str(tmp_path / f"ref{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' "HDF5 is legacy" notice
        model = M.keras_adam()
        # a trained model's conv bias is not its zero init (a zero bias under a BatchNorm gets only rounding noise
        # as its gradient, which Adam's normalisation turns into lr-sized steps of either sign: a separate matter)
        model.get_layer("conv").bias.assign([0.1, -0.2, 0.3, -0.4])
        model.save(path)
    spec = spec_from_user_models(path, M.port)
    ok = check(spec, stages=STAGES, steps=2, port_optimizer=M.adam_ok, port_loss=M.ce_ok)
    assert ok.passed, str(ok)
    assert ok.optimizer["reference"]["class"] == "Adam" and ok.optimizer["reference"]["epsilon"] == 1e-7
    spec = spec_from_user_models(path, M.port)
    bad = check(spec, stages=STAGES, steps=2, port_optimizer=M.adam_torch_eps, port_loss=M.ce_ok)
    assert _cause(bad).cause == "adam_epsilon", str(bad)


def test_cli_says_whose_training_configuration_was_compared():
    own = _cli("--stages", "gradients,step")
    assert own.returncode == 0, own.stderr[-2000:]
    assert "training configuration: parity's own (not yours)" in own.stdout
    yours = _cli("--stages", "gradients,step", "--port-optimizer", "user_training_models:sgd_ok", "--port-loss",
                 "user_training_models:ce_ok")
    assert yours.returncode == 0, yours.stdout[-3000:]
    assert "training configuration: yours: the reference's model.compile(...) configuration" in yours.stdout
    assert yours.stdout.strip().splitlines()[-1].startswith("PASSED")


def test_user_loss_that_raises_or_does_not_reduce_is_the_user_s_error():
    with pytest.raises(UserCodeError, match="loss_raises raised ValueError: shapes do not match"):
        _run(M.keras_sgd, M.sgd_ok, M.loss_raises, steps=1)
    with pytest.raises(UsageError, match=r"expected a loss returning a scalar torch tensor. Received: Tensor\(4,\)"):
        _run(M.keras_sgd, M.sgd_ok, M.loss_per_sample, steps=1)


# -- float32 over several steps with the user's optimizer: the resync sets the user's slots too ---------------------
@pytest.mark.parametrize("keras_builder, factory, slot", [(M.keras_sgd, M.sgd_ok, "momentum_buffer"),
                                                          (M.keras_adam, M.adam_ok, "exp_avg")])
def test_user_adapter_sets_the_slots_it_reports(keras_builder, factory, slot):
    """``UserAdapter.torch_state_from_slot`` inverts ``torch_slots`` (SGD: ``m = -lr * buf`` with the lr the
    user's group used), so the float32 multi-step resync can set the user's optimizer state."""
    torch = pytest.importorskip("torch")
    from parity.optim.adapters import ParamRef
    from parity.optim.user import UserAdapter, UserOptimizerSpec, build_port_training, compiled_training

    cfg, _ = compiled_training(keras_builder())
    spec = UserOptimizerSpec.from_keras(cfg, factory)
    module = M.port()
    p = next(module.parameters())
    r = ParamRef("w", "conv", "kernel", "conv", p)
    opt = build_port_training(spec, module, [r], {})
    for k in range(2):
        for q in module.parameters():
            q.grad = torch.sin(q.detach() * (k + 2))
        opt.step()
    slots = UserAdapter().torch_slots(spec, 1, opt, [r])["w"]
    assert slots
    for name, value in slots.items():
        key, held = UserAdapter().torch_state_from_slot(spec, 1, name, value, opt=opt, param=p)
        np.testing.assert_allclose(held, opt.state[p][key].detach().numpy(), rtol=1e-6, atol=0)  # float32 port
    assert slot in opt.state[p]


def test_user_optimizer_float32_three_steps_resyncs_its_slots():
    spec = spec_from_user_models(M.keras_sgd, M.port)
    r = check(spec, stages="gradients,step", steps=3, dtype="float32", port_optimizer=M.sgd_ok, port_loss=M.ce_ok)
    assert r.passed, str(r)
    info = r.stage("step").info["resynced"]
    assert "weights and optimizer slots were set" in info and "cannot set" not in info, info
