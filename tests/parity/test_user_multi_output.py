"""A Keras reference with several outputs (``outputs=[a, b]`` or a dict): each output tapped and compared, the
port's forward returning a tuple in the Keras order or a dict keyed by the output names, targets per output,
the loss summed as Keras sums it (``loss_weights`` from ``model.compile``) on both sides; the user's own
``--port-loss`` receives (outputs, targets) as tuples. Planted multi-output bugs are located and named."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.cli import main
from parity.harness import check
from parity.user.pair import compare, spec_from_user_models
from tests.parity import user_multi_output_models as M

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

MOD = "tests.parity.user_multi_output_models"
STAGES = "structure,forward_eval,forward_train,gradients,step,isolated"


def _run(ref, port, steps=2, **kw):
    return check(spec_from_user_models(ref, port), stages=STAGES, steps=steps, **kw)


def _cause(result):
    fd = result.first_divergence
    assert fd is not None and fd.cause is not None, str(result)
    return fd.cause


@pytest.mark.parametrize("ref, port", [(M.keras_two_heads, M.port), (M.keras_two_heads_list, M.port),
                                       (M.keras_two_heads, M.port_dict), (M.keras_two_heads_dict_outputs, M.port_dict),
                                       (M.keras_two_heads_dict_outputs, M.port),
                                       (M.keras_two_heads_uncompiled, M.port)])
def test_a_correct_two_output_port_passes_every_stage(ref, port):
    r = _run(ref, port)
    assert r.passed, str(r)
    fwd = {t.path for t in r.stage("forward_eval").tensors}
    assert {"cls", "reg", "parity_outputs"} <= fwd  # each output tapped, and the outputs as returned
    grads = {t.path for t in r.stage("gradients").tensors}
    assert {"loss", "reg:grad", "cls:weight.grad", "reg:weight.grad"} <= grads
    assert any("@step2" in t.path for t in r.stage("step").tensors)


def test_loss_weights_from_compile_are_honoured():
    """The reference's loss is Keras' own compiled total (1.0 * ce + 0.5 * mse), read back from Keras."""
    from parity.backends.keras_side import keras_dtype, run_reference

    spec = spec_from_user_models(M.keras_two_heads, M.port)
    assert [(p.name, w, wt, n) for p, w, wt, n in spec.loss.parts] == [
        ("categorical_crossentropy", M.CLASSES, 1.0, "cls"), ("mse", M.BOXES, 0.5, "reg")]
    run = run_reference(spec, config={}, dtype="float64", seed=0, batch=4, optimizer=spec.optimizer, steps=1,
                        stages={"gradients"})
    x, y = run.inputs[0], run.labels[0]
    with keras_dtype("float64"):
        m = M.keras_two_heads()
        for layer in m.layers:
            if layer.name in run.weights:
                layer.set_weights([run.weights[layer.name][v.name.split("/")[-1].split(":")[0]]
                                   for v in layer.weights])
        total = m.evaluate(x, [y[:, :M.CLASSES], y[:, M.CLASSES:]], verbose=0, batch_size=4)
    total = total[0] if isinstance(total, list) else total
    assert abs(run.loss - total) <= 1e-6 * abs(total), (run.loss, total)
    unweighted = spec.loss.parts[0][2] == spec.loss.parts[1][2]
    assert not unweighted


def test_compare_on_live_objects_passes(float64):
    km = M.keras_two_heads()
    tm = M.port_dict()
    r = compare(km, tm, stages="structure,forward_eval,forward_train,gradients,step")
    assert r.passed, r.summary_line()


def test_cli_check_passes_with_exit_0(tmp_path, capsys):
    code = main(["check", "--reference", f"{MOD}:keras_two_heads", "--port", f"{MOD}:port", "--out",
                 str(tmp_path / "r"), "-q"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out[-5:]
    assert out[-1].startswith("PASSED keras_two_heads-vs-port"), out[-1]


def test_cli_check_with_the_user_s_training_step(tmp_path, capsys):
    args = ["check", "--reference", f"{MOD}:keras_two_heads", "--port", f"{MOD}:port", "--port-optimizer",
            f"{MOD}:sgd_ok", "--steps", "2", "-q"]
    assert main([*args, "--port-loss", f"{MOD}:loss_ok", "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASSED")
    # a planted bug in the user's loss: the compiled loss_weights ignored
    assert main([*args, "--port-loss", f"{MOD}:loss_unweighted", "--out", str(tmp_path / "b")]) == 1
    last = capsys.readouterr().out.strip().splitlines()
    line = next(x for x in last if x.startswith("FAILED"))
    assert "first divergence at gradients loss" in line and "loss_weights ignored" in line, line


def test_the_user_s_loss_receives_outputs_and_targets_as_tuples():
    seen = {}

    def loss(outputs, targets):
        seen["outputs"] = [tuple(o.shape) for o in outputs]
        seen["targets"] = [(tuple(t.shape), str(t.dtype)) for t in targets]
        return M.loss_ok(outputs, targets)

    r = _run(M.keras_two_heads, M.port, port_optimizer=M.sgd_ok, port_loss=loss)
    assert r.passed, str(r)
    assert seen["outputs"] == [(4, M.CLASSES), (4, M.BOXES)]
    assert seen["targets"] == [((4,), "torch.int64"), ((4, M.BOXES), "torch.float64")]


def test_outputs_in_the_wrong_order_are_named_not_a_crash():
    r = _run(M.keras_two_heads, M.port_wrong_order)
    assert not r.passed
    errors = " ".join(e for st in r.stages for e in st.errors)
    assert "expected the port's outputs in the Keras model's order: cls (3), reg (2)" in errors, errors
    assert "return them in the Keras model's order" in errors


def test_outputs_of_equal_widths_in_the_wrong_order_are_named():
    assert _run(M.keras_equal_heads, M.port_equal_heads).passed
    r = _run(M.keras_equal_heads, M.port_equal_heads_wrong_order)
    c = _cause(r)
    assert c.cause == "outputs_order", str(r)
    assert "(reg, cls), the Keras model's order is (cls, reg)" in c.message


def test_softmax_before_cross_entropy_on_one_output_is_named():
    r = _run(M.keras_two_heads, M.port_softmax_head)
    c = _cause(r)
    assert c.cause == "double_softmax", str(r)
    assert "on output 'cls'" in c.message
    assert r.first_divergence.stage.name == "forward_eval"


def test_loss_weights_ignored_in_the_port_loss_are_named():
    r = _run(M.keras_two_heads, M.port, port_optimizer=M.sgd_ok, port_loss=M.loss_unweighted)
    c = _cause(r)
    assert c.cause == "loss_weights" and c.path == "loss", str(r)
    assert "cls x 1, reg x 0.5" in c.message and "0.5 * loss_reg" in c.fix


def test_loss_option_is_refused_for_several_outputs(capsys):
    code = main(["check", "--reference", f"{MOD}:keras_two_heads", "--port", f"{MOD}:port", "--loss", "mse", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "expected no --loss for a model with several outputs" in err
