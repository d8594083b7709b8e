"""User-model mode: ``parity.compare`` on live objects and ``parity check --reference mod:fn --port mod:fn``
on builders, with the automatic alignment, the inferred loss, and an extra layer on either side."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.user.pair import compare, infer_loss, parse_input_shape, spec_from_user_models

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from benchmarks import user_models  # noqa: E402




def test_compare_passes_and_leaves_both_models_as_found(float64):
    km = user_models.keras_cnn()
    tm = user_models.torch_cnn()
    tm.train()
    k_before = [w.numpy().copy() for w in km.weights]
    t_before = {k: v.clone() for k, v in tm.state_dict().items()}
    result = compare(km, tm, seed=1)
    assert result.passed, result.summary_line()
    assert [s.name for s in result.stages] == ["structure", "forward_eval", "forward_train", "gradients", "step",
                                              "isolated"]
    table = result.stage("structure").info["alignment"]
    assert [r["status"] for r in table] == ["aligned"] * 13
    assert {r["ref"]: r["port"] for r in table}["fc1"] == "hidden"
    # as found: Keras weights, torch weights, dtype, mode
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(k_before, km.weights))
    assert all(torch.equal(t_before[k], v) for k, v in tm.state_dict().items())
    assert next(tm.parameters()).dtype == torch.float32 and tm.training


@pytest.mark.parametrize("ref_fn, port_fn, extra", [
    ("keras_cnn_extra_linear", "torch_cnn", ("noop", None, "unaligned-ref")),
    ("keras_cnn", "torch_cnn_extra_identity", (None, "extra", "unaligned-port")),
])
def test_an_extra_layer_on_either_side_still_passes(float64, ref_fn, port_fn, extra):
    result = compare(getattr(user_models, ref_fn)(), getattr(user_models, port_fn)())
    assert result.passed, result.summary_line()
    rows = [(r["ref"], r["port"], r["status"]) for r in result.stage("structure").info["alignment"]]
    assert extra in rows
    f = next(f for f in result.findings if f.cause == "unaligned")
    assert f.severity == "info" and f.path == (extra[0] or extra[1])


def test_an_extra_dropout_in_the_port_fails_in_training_with_its_cause(float64):
    result = compare(user_models.keras_cnn(), user_models.torch_cnn_extra_dropout(),
                     stages="structure,forward_eval,forward_train")
    assert not result.passed
    stage, diff = result.first_divergence
    assert (stage.name, diff.path) == ("forward_train", "fc1")
    assert result.stage("forward_eval").passed
    assert result.cause_for(diff.path).cause == "train_eval_mode"
    unaligned = next(f for f in result.findings if f.cause == "unaligned")
    assert unaligned.path == "drop" and unaligned.severity == "warning"


def test_compare_refuses_a_dtype_the_keras_model_does_not_have():
    from parity.core.errors import UsageError

    km = user_models.keras_cnn()  # float32
    with pytest.raises(UsageError,
                       match=r"compare\(dtype='float64'\): expected the Keras model's own dtype \(float32\)"):
        compare(km, user_models.torch_cnn(), dtype="float64")


def test_compare_float32_uses_the_float32_policy():
    result = compare(user_models.keras_cnn(), user_models.torch_cnn(), stages="structure,forward_eval")
    assert result.dtype == "float32" and result.passed, result.summary_line()


def test_loss_is_inferred_from_the_reference(float64):
    assert infer_loss(user_models.keras_cnn()).name == "categorical_crossentropy"
    spec = spec_from_user_models("benchmarks.user_models:keras_sequential", "benchmarks.user_models:torch_sequential")
    assert (spec.loss.name, spec.target({})) == ("mse", ("regression", user_models.SEQ_OUTPUTS))
    assert infer_loss(user_models.keras_sequential(), "categorical_crossentropy").reference_from_logits


def test_cli_check_with_user_builders(tmp_path, capsys):
    from parity.cli import main

    out = tmp_path / "rep"
    rc = main(["check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
               "--out", str(out), "-q", "--stages", "structure,forward_eval,forward_train,gradients"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0, lines[-1]
    assert lines[-1].startswith("PASSED keras_cnn-vs-torch_cnn [float64, cpu, batch 4]")
    assert (out / "report.html").exists()
    import json

    report = json.loads((out / "report.json").read_text())
    structure = next(s for s in report["stages"] if s["name"] == "structure")
    assert len(structure["info"]["alignment"]) == 13


def test_cli_check_with_a_pin_and_a_planted_bug(tmp_path, capsys):
    from parity.cli import main

    rc = main(["check", "--reference", "benchmarks.user_models:keras_cnn", "--port",
               "benchmarks.user_models:torch_cnn_symmetric_pad", "--align", "conv2=down", "--out", str(tmp_path), "-q",
               "--stages", "structure,forward_eval"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1
    assert last.startswith("FAILED: first divergence at forward_eval conv2 ")
    assert "cause: conv padding=(1, 1) (symmetric) where TF 'same' pads [(0, 1), (0, 1)]" in last


def test_cli_usage_errors_are_one_line(capsys):
    from parity.cli import main

    rc = main(["check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
               "--align", "conv9=down", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("parity: error: --align conv9=down: expected a layer of the reference model.")
    rc = main(["check", "--reference", "benchmarks.user_models:nope", "--port", "benchmarks.user_models:torch_cnn", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("parity: error: --reference benchmarks.user_models:nope: expected an importable "
                                      "MODULE:FUNCTION building a Keras model.")


def test_input_shape_parsing():
    from parity.core.errors import UsageError

    assert parse_input_shape("64,64,1") == [(None, (64, 64, 1))]
    assert parse_input_shape((8, 8, 3)) == [(None, (8, 8, 3))]
    assert parse_input_shape("20") == [(None, (20,))]
    assert parse_input_shape(["target=227,227,3", "image=227,227,3"]) == [("target", (227, 227, 3)),
                                                                          ("image", (227, 227, 3))]
    with pytest.raises(UsageError, match=r"--input-shape: expected a per-sample shape of positive integers in the "
                                         r"Keras model's layout \(e\.g\. 20, 12,8 or 64,64,1\), optionally named "
                                         r"\(image=64,64,1\)\. Received: '64,0'\."):
        parse_input_shape("64,0")


def test_input_shape_for_a_model_without_one(float64):
    """A Keras model with free spatial dimensions is cloned onto the given input shape (same names, weights)."""
    from keras import layers

    inp = keras.Input((None, None, 3))
    x = layers.Conv2D(4, 3, name="c")(inp)
    x = layers.GlobalAveragePooling2D(name="g")(x)
    km = keras.Model(inp, layers.Dense(2, name="d")(x))
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                             torch.nn.Linear(4, 2))
    result = compare(km, tm, input_shape="10,10,3", stages="structure,forward_eval,forward_train,gradients")
    assert result.passed, result.summary_line()
    rows = {r["ref"]: (r["port"], r["status"]) for r in result.stage("structure").info["alignment"] if r["ref"]}
    assert rows["g"] == ("1", "aligned")  # AdaptiveAvgPool2d(1) + Flatten == GlobalAveragePooling2D
    fused = next(r for r in result.stage("structure").info["alignment"] if r["port"] == "2")
    assert fused["status"] == "fused" and fused["ref"] is None


def test_conv_bias_before_batchnorm_is_not_a_false_alarm(float64):
    """The gradient of a conv bias feeding a BatchNorm is analytically 0; both frameworks return ~1e-16 noise.
    It is judged relative to its layer's largest gradient (parity.core.tensors.layer_scale_floor), with a note."""
    from keras import layers

    km = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(3, 3, name="c"), layers.BatchNormalization(name="b"),
                           layers.Flatten(name="f"), layers.Dense(2, name="d")])
    from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS

    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3),
                             torch.nn.BatchNorm2d(3, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS),
                             torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2))
    result = compare(km, tm, stages="structure,forward_eval,forward_train,gradients,step")
    assert result.passed, result.summary_line()
    bias = next(t for t in result.stage("gradients").tensors if t.path.endswith(":bias.grad") and t.path.startswith("c"))
    kernel = next(t for t in result.stage("gradients").tensors if t.path == bias.path.replace("bias", "weight"))
    assert bias.scale == kernel.scale and "analytically zero" in bias.note


def test_a_wrong_bias_gradient_is_still_caught_next_to_a_batchnorm(float64):
    """The layer-scale floor must not hide a real bias bug: a port whose conv bias gradient is scaled (a hook
    multiplying it by 1e3, as a wrong custom backward would) fails the gradients stage at that tensor."""
    from keras import layers

    from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS

    km = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(3, 3, name="c"), layers.BatchNormalization(name="b"),
                           layers.Flatten(name="f"), layers.Dense(2, name="d")])
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3),
                             torch.nn.BatchNorm2d(3, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS),
                             torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2))
    tm[0].bias.register_hook(lambda g: g + 1e-3)  # a bias gradient that is not zero
    result = compare(km, tm, stages="structure,forward_eval,forward_train,gradients")
    assert not result.passed
    bad = [t.path for t in result.stage("gradients").tensors if not t.passed]
    assert bad == [next(t.path for t in result.stage("gradients").tensors if t.path.endswith(":bias.grad")
                        and t.path.startswith("c"))]


def test_fused_activation_is_compared_after_the_ports_activation(float64):
    """``Conv2D(..., activation="relu")`` in Keras, conv + nn.ReLU in the port: the port's ReLU is folded into
    the Keras layer (compared as relu(conv output))."""
    from keras import layers

    from parity.user.align import supported_transforms

    if "relu" not in supported_transforms():
        pytest.skip("parity.backends.torch_side.apply_transform does not apply activations yet")
    km = keras.Sequential([keras.Input((8, 8, 2)), layers.Conv2D(3, 3, activation="relu", name="c"),
                           layers.Flatten(name="f"), layers.Dense(4, name="d")])
    tm = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(108, 4))
    result = compare(km, tm, stages="structure,forward_eval,forward_train,gradients")
    assert result.passed, result.summary_line()
    rows = [(r["ref"], r["port"], r["status"]) for r in result.stage("structure").info["alignment"]]
    assert ("c", "0", "aligned") in rows and (None, "1", "fused") in rows
