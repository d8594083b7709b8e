"""Diagnosis rules on their own (no framework): structure rules over layer configs, and the numeric rules
that name a cause from the divergence pattern of a result (which stage first, which tensors, which ratio).
The numeric probes that need the run's arrays are exercised by the planted-bug tests."""
from __future__ import annotations

from parity import diagnosis
from parity.core.results import CheckResult, Finding, StageResult, TensorDiff
from parity.core.spec import Tap


def td(path, ok=True, ref=1.0, port=None, index=(0,)):
    port = ref if port is None else port
    return TensorDiff(path=path, shape=(4,), max_abs=abs(ref - port), scale=abs(ref) or 1.0, allowed=1e-10, rtol=1e-10,
                      mismatched=0 if ok else 4, numel=4, index=index, ref_value=ref, port_value=port)


def row(path, kind, ref, port, cls="X"):
    return {"path": path, "kind": kind, "reference": f"{ref} ({cls})", "port": f"{port} ({cls})", "status": "ok"}


def make(stages, findings=(), optimizer=None, batch=8, rows=()):
    st = [StageResult("structure", rows=list(rows))] + list(stages)
    return CheckResult(pair="p", dtype="float64", device="cpu", seed=0, batch=batch,
                       optimizer=optimizer or {"kind": "sgd", "lr": 0.01}, config={}, stages=st,
                       findings=list(findings))


def causes(findings):
    return [(f.cause, f.path) for f in findings if f.severity == "error"]


# --- structure rules -----------------------------------------------------------------------------------------------
def test_bn_eps_and_momentum():
    tap = Tap("b/bn", "b_bn", "b.bn", "batchnorm")
    f = diagnosis.structure_findings(tap, {"epsilon": 1e-3, "momentum": 0.99}, {"eps": 1e-5, "momentum": 0.1,
                                                                                "affine": True})
    assert [x.cause for x in f] == ["bn_eps", "bn_momentum"]
    assert f[0].message == "BatchNorm eps 1e-05 in the port, 0.001 in the reference"
    assert f[0].fix == "set eps=0.001 (Keras default)"
    assert f[1].fix == "set momentum=0.01 (torch m = 1 - Keras m)"


def test_missing_batchnorm():
    tap = Tap("b/bn", "b_bn", "b.bn", "batchnorm")
    f = diagnosis.structure_findings(tap, {"class": "BatchNormalization", "epsilon": 1e-3, "momentum": 0.99,
                                           "trainable_params": 32, "non_trainable_params": 32},
                                     {"class": "Identity", "params": 0, "buffers": 0})
    assert [x.cause for x in f] == ["missing_bn"]
    assert f[0].message == ("BatchNorm missing in the port: the module is a Identity (no running statistics, no "
                            "gamma/beta)")
    assert f[0].fix == "use nn.BatchNorm2d(C, eps=0.001, momentum=0.01) here"


def test_lrn_alpha_multiplied_by_size():
    tap = Tap("t/norm1", "t_norm1", "t.norm1", "lrn")
    f = diagnosis.structure_findings(tap, {"alpha": 1e-4, "beta": 0.75, "size": 5, "k": 1.0},
                                     {"alpha": 5e-4, "beta": 0.75, "size": 5, "k": 1.0})
    assert [x.cause for x in f] == ["lrn"]
    assert "LRN alpha 0.0005 in the port, 0.0001 expected (= alpha x size 5" in f[0].message


def test_pool_rounding_from_the_reference_output_size():
    tap = Tap("t/pool1", "t_pool1", "t.pool1", "maxpool")
    ref = {"pool_size": [3, 3], "strides": [2, 2], "padding": "valid", "input_shape": [18, 18, 96],
           "output_shape": [9, 9, 96]}
    port = {"kernel_size": 3, "stride": 2, "padding": 0, "ceil_mode": False}
    f = diagnosis.structure_findings(tap, ref, port)
    assert [x.cause for x in f] == ["pool_rounding"]
    assert f[0].fix == "use ceil_mode=True"
    assert diagnosis.structure_findings(tap, ref, dict(port, ceil_mode=True)) == []


def test_symmetric_conv_padding_on_a_stride2_conv():
    tap = Tap("conv2", "conv2", "down", "conv2d")
    ref = {"padding": "same", "kernel_size": [3, 3], "strides": [2, 2], "input_shape": [16, 16, 8], "use_bias": True}
    f = diagnosis.structure_findings(tap, ref, {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                "has_bias": True, "dilation": [1, 1], "groups": 1})
    assert [x.cause for x in f] == ["conv_padding"]
    assert f[0].message == ("conv padding=(1, 1) (symmetric) where TF 'same' pads [(0, 1), (0, 1)] (before, after) on "
                            "a 16x16 input")


def test_activation_and_dropout_rate():
    f = diagnosis.structure_findings(Tap("a", "a", "a", "activation"), {"class": "Activation", "activation": "relu"},
                                     {"activation": "relu6"})
    assert [(x.cause, x.fix) for x in f] == [("activation", "use nn.ReLU()")]
    f = diagnosis.structure_findings(Tap("d", "d", "d", "dropout"), {"rate": 0.0}, {"p": 0.5})
    assert [x.cause for x in f] == ["dropout_rate"]


# --- numeric rules (pattern, no arrays) --------------------------------------------------------------------------
def test_loss_reduction_from_the_loss_ratio():
    r = make([StageResult("forward_eval", [td("a")]), StageResult("gradients", [td("loss", False, 0.5, 4.0)])])
    f = diagnosis.numeric_findings(r, {"loss": "categorical_crossentropy"})
    assert causes(f) == [("loss_reduction", "loss")]
    assert "the port reduces with sum over the batch, the reference with mean" in f[0].message


def test_running_var_only():
    r = make([StageResult("forward_eval", [td("bn")]),
              StageResult("forward_train", [td("bn"), td("bn:running_mean"),
                                            td("bn:running_var", False, 1.0, 0.9999)])],
             rows=[row("bn", "batchnorm", "bn", "bn")])
    assert causes(diagnosis.numeric_findings(r, {})) == [("running_var_bias", "bn")]


def test_batchnorm_in_eval_mode_during_training():
    r = make([StageResult("forward_eval", [td("conv"), td("bn")]),
              StageResult("forward_train", [td("conv"), td("bn", False, 1.0, 2.0)])],
             rows=[row("conv", "conv2d", "conv", "c"), row("bn", "batchnorm", "bn", "b")])
    f = diagnosis.numeric_findings(r, {})
    assert causes(f) == [("train_eval_mode", "bn")]
    assert f[0].message.startswith("BatchNorm bn normalises with its running statistics during training")


def test_dropout_like_difference_in_training_only():
    r = make([StageResult("forward_eval", [td("flat"), td("fc1")]),
              StageResult("forward_train", [td("flat"), td("fc1", False, 1.0, 2.0)])],
             rows=[row("flat", "flatten", "flat", "f"), row("fc1", "dense", "fc1", "h")])
    assert causes(diagnosis.numeric_findings(r, {})) == [("train_eval_mode", "fc1")]


def test_module_right_in_isolation_wrong_in_the_forward():
    r = make([StageResult("forward_eval", [td("conv"), td("bn", False, 1.0, 2.0)]),
              StageResult("isolated", [td("conv"), td("bn")])],
             rows=[row("conv", "conv2d", "conv", "c"), row("bn", "batchnorm", "bn", "b")])
    f = diagnosis.numeric_findings(r, {})
    assert causes(f) == [("forward_wiring", "bn")]
    assert "bn computes correctly in isolation but receives a different input" in f[0].message


def test_flatten_divergence_is_an_order_problem():
    r = make([StageResult("forward_eval", [td("pool"), td("flatten", False, 1.0, 2.0)]),
              StageResult("isolated", [td("pool"), td("flatten", False, 1.0, 2.0)])],
             rows=[row("pool", "maxpool", "pool", "p"), row("flatten", "flatten", "flatten", "f")])
    assert causes(diagnosis.numeric_findings(r, {})) == [("flatten_order", "flatten")]


def test_l2_only_on_regularised_kernels():
    r = make([StageResult("gradients", [td("loss"), td("c1:weight.grad")]),
              StageResult("step", [td("c1:weight.update", False, 1.0, 1.1), td("c2:weight.update"),
                                   td("c1:weight.momentum", False, 1.0, 1.1)])],
             optimizer={"kind": "sgd", "lr": 0.01, "l2": {"base_conv1": 0.01}},
             rows=[row("c1", "conv2d", "base_conv1", "c1"), row("c2", "conv2d", "base_conv2", "c2")])
    f = diagnosis.numeric_findings(r, {})
    assert causes(f) == [("l2_weight_decay", "c1")]
    assert f[0].message.startswith("Keras l2(0.01) on base_conv1 adds 2*lam*w = 0.02*w to the gradient")


def test_adam_without_the_run_is_the_generic_optimizer_cause():
    r = make([StageResult("gradients", [td("loss")]), StageResult("step", [td("c1:weight.update", False, 1.0, 1.1)])],
             optimizer={"kind": "adam", "lr": 1e-3})
    assert causes(diagnosis.numeric_findings(r, {})) == [("optimizer", "c1")]


def test_shared_module_findings_are_consolidated():
    shared = [Finding("shared_module", p, f"port module for {p} called 8x in one forward (shared weights)",
                      "create one module per block", stage="structure")
              for p in ("mid/b5/sep1", "mid/b5/sep1/bn", "mid/b5/add")]
    rows = [row("mid/b5/sep1", "separable_conv2d", "b5_sep1", "middle.0.sep1"),
            row("mid/b5/sep1/bn", "batchnorm", "b5_sep1_bn", "middle.0.sep1_bn"),
            row("mid/b5/add", "add", "b5_add", "middle.0.add")]
    r = make([StageResult("forward_eval", [td("mid/b5/sep1", False, 1.0, 2.0)])], findings=shared, rows=rows)
    diagnosis.numeric_findings(r, {})
    f = [x for x in r.findings if x.cause == "shared_module"]
    assert len(f) == 1 and f[0].path == "mid/b5/sep1"
    assert f[0].message.startswith("port module middle.0 runs 8x in one forward: 8 positions share one set of weights")
    assert f[0].fix == "create one module per position: nn.ModuleList([Block() for _ in range(8)]) (not [Block()] * 8)"
    assert r.cause_for("mid/b5/sep1").cause == "shared_module"


def test_unexplained_is_a_warning_and_attach_stages_sets_the_stage():
    r = make([StageResult("forward_eval", [td("x", False, 1.0, 2.0)])])
    f = diagnosis.numeric_findings(r, {})
    assert [(x.cause, x.severity) for x in f] == [("unexplained", "warning")]
    s = Finding("bn_eps", "x", "m", "fix", stage="structure")
    r.findings.append(s)
    diagnosis.attach_stages(r)
    assert s.stage == "forward_eval" and s.evidence == "forward_eval: max|Δ| 1"


# --- the rule table ----------------------------------------------------------------------------------------------
def test_rules_registered_from_outside_are_read_generically():
    """A layer family adds its rules to the table; the entry points run them without naming them."""
    from parity.diagnosis import registry

    def reshape_rule(tap, ref, port):
        return [Finding("toy_reshape", tap.path, f"order {port['order']} vs {ref['order']}", "fix", stage="structure")]

    def forward_rule(run, stage, diff):
        hit = run.kind(diff.path) == "reshape"
        return [Finding("toy_forward", diff.path, "toy", "fix", stage=stage.name)] if hit else []

    registry.structure_rule("reshape", family="toy")(reshape_rule)
    registry.stage_rule("forward_eval", family="toy", order=20)(forward_rule)
    try:
        f = diagnosis.structure_findings(Tap("r", "r", "r", "reshape"), {"order": "C"}, {"order": "F"})
        assert [(x.cause, x.message) for x in f] == [("toy_reshape", "order F vs C")]
        r = make([StageResult("forward_eval", [td("r", False, 1.0, 2.0)])], rows=[row("r", "reshape", "r", "r")])
        assert causes(diagnosis.numeric_findings(r, {})) == [("toy_forward", "r")]
        assert registry.families()["toy"] == ["reshape_rule", "forward_rule"]
    finally:
        registry.unregister(reshape_rule)
        registry.unregister(forward_rule)
    assert "toy" not in registry.families()
    assert diagnosis.structure_findings(Tap("r", "r", "r", "reshape"), {"order": "C"}, {"order": "F"}) == []


def test_every_layer_family_config_rule_is_a_structure_rule():
    from parity.core.families import FAMILIES
    from parity.diagnosis import registry

    with_rules = {name for name, fam in FAMILIES.items() if fam.rules}
    assert with_rules and with_rules <= set(registry.families())
    f = diagnosis.structure_findings(Tap("a", "a", "a", "activation"), {"class": "LeakyReLU", "negative_slope": 0.3},
                                     {"class": "LeakyReLU", "negative_slope": 0.01})
    assert [(x.cause, x.stage) for x in f] == [("leaky_relu_slope", "structure")]


def test_numeric_findings_reads_an_object_with_the_run_fields():
    class Outputs:
        loss = "categorical_crossentropy"
        final = [[0.25, 0.75], [0.5, 0.5]]
        output_path = "pred"

    r = make([StageResult("forward_eval", [td("pred", False, 1.0, 2.0)])])
    assert causes(diagnosis.numeric_findings(r, Outputs())) == [("double_softmax", "pred")]


def test_a_user_pairs_alignment_travels_on_the_spec():
    """The diagnosis puts the spec's alignment table and its unaligned layers into the result."""
    from types import SimpleNamespace

    rows = [SimpleNamespace(status="ok", ref="c", port="c", kind="conv2d", note="", ref_class="Conv2D",
                            port_class="Conv2d"),
            SimpleNamespace(status="unaligned-ref", ref="drop", port=None, kind="dropout", note="",
                            ref_class="Dropout", port_class=None)]
    al = SimpleNamespace(rows=rows, ref_nodes=[SimpleNamespace(name="drop", weighted=False)], traced_with="fx",
                         table=lambda: [{"ref": "c", "port": "c", "status": "ok"}],
                         incomplete=lambda: None)  # parity.user.align.Alignment's interface: nothing left
    r = make([StageResult("forward_eval", [td("c")])])
    diagnosis.numeric_findings(r, {"spec": SimpleNamespace(alignment=al)})
    assert r.stage("structure").info["alignment"] == [{"ref": "c", "port": "c", "status": "ok"}]
    assert [(f.cause, f.path, f.severity) for f in r.findings] == [("unaligned", "drop", "info")]
    r2 = make([StageResult("forward_eval", [td("c")])])
    diagnosis.numeric_findings(r2, {"spec": SimpleNamespace(alignment=None)})
    assert "alignment" not in r2.stage("structure").info and r2.findings == []
