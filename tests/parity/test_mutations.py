"""The planted-bug catalogue (benchmarks.mutations): its shape, a fast subset run through the harness with each
mutation's reduced stage list (detected, first layer, cause), and the multi-step trajectory of a bug that
grows against a correct port that stays at rounding level. The whole catalogue runs in
``benchmarks/mutation_suite.py``."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import importlib

import pytest

from benchmarks import mutations as M
from parity.pairs import registry
from parity.core.spec import resolve
from tests.planted_ports import assert_found_and_named

KNOWN_CAUSES = {
    "bn_eps", "bn_momentum", "bn_affine", "missing_bn", "running_var_bias", "train_eval_mode", "symmetric_pool",
    "conv_bias", "layer_order", "forward_wiring", "activation", "stride", "dilation", "kernel_size", "groups",
    "double_softmax", "init_after_load", "l2_weight_decay", "adam_epsilon", "loss_reduction", "label_smoothing",
    "flatten_order", "dense_layout", "lrn", "pool_rounding", "dropout_rate", "shared_module", "conv_padding",
    "lr_mult", "lr_in_momentum",
    # the recurrent and embedding families (parity.core.families.recurrent, embedding)
    "batch_first", "rnn_last_step", "rnn_bias_duplicated", "rnn_bias_dropped", "rnn_gate_order", "rnn_two_biases",
    "padding_idx", "layernorm_eps", "gelu_approximate", "attention_scale", "attention_qkv_order",
    "attention_head_layout", "conv_transpose_same", "upsample_mode", "conv_transpose_flipped", "rnn_forget_bias",
    "bidirectional", "gru_bias_swapped", "layernorm_affine", "layernorm_axes", "activation_definition",
    "attention_heads", "causal_padding", "gru_bias_hh_frozen", "go_backwards",
    # the 3-D convolution family (parity.core.families.conv3d)
    "conv_layout", "pool_padding",
    # the 1-D convolution family's depthwise channel order (parity.core.families.conv1d)
    "depthwise_channel_order",
    # the attention family's causal masks (parity.core.families.attention)
    "attention_causal_mask_missing", "attention_mask_polarity", "attention_mask_after_softmax",
    "attention_causal_offset",
    # the recurrent family's masks and states (parity.core.families.recurrent)
    "mask_zero_ignored", "rnn_initial_state",
}


def test_catalogue_shape():
    names = [m.name for m in M.CATALOGUE]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert {m.cause for m in M.CATALOGUE} <= KNOWN_CAUSES
    assert len({m.cause for m in M.CATALOGUE}) >= 20
    for m in M.CATALOGUE:
        assert m.pair in registry.names() or m.pair == "user" or m.user is not None, m.name
        if m.port is not None:
            assert callable(resolve(m.port)), m.name
        if m.user is not None:
            for target in m.user:
                mod, _, fn = target.partition(":")
                assert callable(getattr(importlib.import_module(mod), fn))


FAST = ["mx_bn_eps_1e5", "mx_bn_momentum_torch_default", "mx_symmetric_pool", "mx_missing_bn", "mx_running_var_biased",
        "mx_l2_as_lambda", "mx_relu_before_bn", "mx_dropout_in_eval",
        "xc_shared_middle"]  # shared modules are counted in the eval forward (parity.stages.structure)


@pytest.mark.parametrize("name", FAST)
def test_planted_bug_is_found_where_it_is_and_named(name):
    pytest.importorskip("keras")
    assert_found_and_named(name)


# --- multi-step trajectory ------------------------------------------------------------------------------------
STEPS = 4


def _series(port=None):
    from parity.harness import check

    r = check("minixception", stages="step", steps=STEPS, port=port)
    traj = r.stage("trajectory")
    assert traj is not None and traj.info["steps"] == list(range(1, STEPS + 1))
    return r, traj.info["series"]


def test_trajectory_of_a_correct_port_stays_at_rounding_level():
    pytest.importorskip("keras")
    r, series = _series()
    assert r.passed, r.summary_line()
    assert max(max(v) for v in series.values()) < 1e-12


def test_trajectory_of_a_train_mode_bug_grows():
    """BatchNorm eps 1e-5 changes the train-mode normalisation: weights part after step 1 and drift further."""
    pytest.importorskip("keras")
    r, series = _series("benchmarks.mutations:mx_bn_eps_1e5")
    assert not r.passed
    worst = max(series.values(), key=lambda v: v[-1])
    assert worst[-1] > 1e-6
    assert all(b >= a * 0.9 for a, b in zip(worst, worst[1:])), worst  # monotone up to 10 % jitter
    assert worst[-1] > 2 * worst[0]


def test_trajectory_of_a_momentum_bug_grows():
    """A BatchNorm momentum bug changes running statistics, never the weights (train-mode BN normalises with
    batch statistics): the trajectory tracks the running statistics too."""
    pytest.importorskip("keras")
    r, series = _series("tests.planted_ports:bn_momentum_torch_default")
    worst = max(series.values(), key=lambda v: v[-1])
    assert worst[-1] > 1e-6 and worst[-1] > 2 * worst[0]


@pytest.mark.parametrize("name", ["gt_lr_mult_dropped", "gt_torch_sgd_lr_step", "gt_fc6_reshaped"])
def test_goturn_solver_and_loader_bugs_are_found_where_they_are_and_named(name):
    """GOTURN's optimizer bugs through the harness: the solver's lr_mult lost (frozen convs train: first
    divergence at target/conv1's update) and torch SGD for Caffe SGD across an lr step (updates agree at step
    1 and part at step 2, at fc6: the convs are frozen); and the fc6 kernel reshaped instead of transposed."""
    pytest.importorskip("keras")
    m = next(x for x in M.CATALOGUE if x.name == name)
    o = M.run_mutation(m, stages="ci")
    assert o.error is None, o.error
    assert o.detected and (o.stage, o.path, o.cause) == (m.stage, m.path, m.cause), o


def test_goturn_caffe_sgd_across_an_lr_step_passes():
    """The port's own setting (ported_torch.optim.CaffeSGD with the solver's multipliers) agrees across the
    same lr step where torch SGD parts (the test above)."""
    pytest.importorskip("keras")
    from parity.harness import check

    spec = registry.get("goturn")
    r = check("goturn", config=dict(spec.fast_config), optimizer="caffe_sgd_lr_step", steps=2,
              stages="structure,forward_eval,forward_train,gradients,step")
    assert r.passed, r.summary_line()
    assert any(t.path.endswith("weight.update@step2") for t in r.stage("step").tensors)
