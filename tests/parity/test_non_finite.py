"""NaN or Inf in either side's tensor never passes: the comparison fails the tensor and says which side holds how
many, and the diagnosis names the cause ``non_finite`` where the values first appear, on which side, ranked
before every other finding and without other rules guessing from the NaNs (a NaN makes two eval forwards
"differ", which used to read as "dropout left on in eval")."""
from __future__ import annotations

import math

import numpy as np
import pytest

from parity import diagnosis
from parity.core.results import CheckResult, Finding, StageResult
from parity.core.spec import StageTolerance
from parity.core.tensors import NON_FINITE_KEYS, non_finite_counts, tensor_diff

TOL = StageTolerance(1e-10)


# --- the comparison ------------------------------------------------------------------------------------------
def _arrays(ref_bad=(), port_bad=(), value=np.nan):
    ref, port = np.ones((2, 3, 4)), np.ones((2, 3, 4))
    for i in ref_bad:
        ref.flat[i] = value
    for i in port_bad:
        port.flat[i] = value
    return ref, port


def test_nan_on_both_sides_at_the_same_element_fails_and_says_both():
    d = tensor_diff("x", *_arrays(ref_bad=(5, 7), port_bad=(5, 7)), TOL)
    assert not d.passed and math.isnan(d.max_abs) and d.mismatched == 2
    assert d.index == (0, 1, 1)  # the first non-finite element (flat 5)
    assert d.note == "non-finite values on both sides: reference 2 NaN, port 2 NaN (of 24 elements)"
    assert non_finite_counts(d) == (2, 2)


def test_inf_in_the_port_only_fails_and_says_port():
    d = tensor_diff("x", *_arrays(port_bad=(3,), value=np.inf), TOL)
    assert not d.passed and d.mismatched == 1
    assert d.note == "non-finite values in the port only: port 1 Inf (of 24 elements)"
    assert d.extra == dict(zip(NON_FINITE_KEYS, (0, 1)))


def test_inf_equal_on_both_sides_fails_and_finite_mismatches_still_count():
    ref, port = _arrays(ref_bad=(0,), port_bad=(0,), value=-np.inf)
    port.flat[10] = 2.0  # a finite mismatch elsewhere
    d = tensor_diff("x", ref, port, TOL, note="caller's note")
    assert not d.passed and d.mismatched == 2
    assert d.note == "non-finite values on both sides: reference 1 Inf, port 1 Inf (of 24 elements); caller's note"


def test_finite_tensors_compare_as_before():
    ref, port = _arrays()
    port.flat[4] = 1.5
    d = tensor_diff("x", ref, port, TOL)
    assert (d.max_abs, d.mismatched, d.index, d.note, d.extra) == (0.5, 1, (0, 1, 0), "", {})
    assert d.cosine is not None and non_finite_counts(d) is None


def test_counts_fall_back_to_the_values_at_the_index():
    d = tensor_diff("x", *_arrays(port_bad=(2,)), TOL)
    d.extra = {"onnx_ort": 0.0}  # a later stage replaced the extra columns
    assert non_finite_counts(d) == (0, 1)


# --- the diagnosis (pattern, no framework) -------------------------------------------------------------------
def _result(stages, findings=()):
    rows = [{"path": p, "kind": k, "reference": f"{p} (X)", "port": f"{p} (X)", "status": "ok"}
            for p, k in (("conv", "conv2d"), ("bn", "batchnorm"), ("relu", "activation"))]
    return CheckResult(pair="p", dtype="float64", device="cpu", seed=0, batch=4, optimizer={"kind": "sgd"},
                       config={}, stages=[StageResult("structure", rows=rows)] + list(stages),
                       findings=list(findings))


def _eval(bn, relu):
    ok = tensor_diff("conv", np.ones(4), np.ones(4), TOL)
    return StageResult("forward_eval", [ok, tensor_diff("bn", *bn, TOL), tensor_diff("relu", *relu, TOL)])


def test_non_finite_ranks_first_and_no_other_rule_guesses():
    nan_both = (np.array([1.0, np.nan, 1, 1]), np.array([1.0, np.nan, 1, 1]))
    eps = Finding("bn_eps", "bn", "BatchNorm eps 1e-05 in the port, 0.001 in the reference", "set eps=0.001",
                  stage="structure")
    r = _result([_eval(nan_both, nan_both), StageResult("isolated", [tensor_diff("bn", *nan_both, TOL)])], [eps])
    new = diagnosis.numeric_findings(r, {})
    assert new == []  # the cause went to the front of the result's findings
    first = r.findings[0]
    assert (first.cause, first.path, first.stage, first.severity) == ("non_finite", "bn", "forward_eval", "error")
    assert first.message.startswith("non-finite values (NaN/Inf) on both sides, first at bn in forward_eval")
    assert r.first_divergence.cause is first
    assert [f.cause for f in r.findings] == ["non_finite", "bn_eps"]


def test_non_finite_in_the_port_only():
    r = _result([_eval((np.ones(4), np.array([1.0, 1, np.inf, 1])), (np.ones(4), np.ones(4)))])
    diagnosis.numeric_findings(r, {})
    f = r.findings[0]
    assert f.cause == "non_finite" and "in the port only, first at bn in forward_eval" in f.message
    assert "port 1 Inf" in f.evidence and "first at index (2,)" in f.evidence


def test_non_finite_after_a_finite_first_divergence_is_a_warning():
    r = _result([_eval((np.ones(4), np.full(4, 2.0)), (np.ones(4), np.array([np.nan, 1, 1, 1])))])
    new = diagnosis.numeric_findings(r, {})
    warn = [f for f in new if f.cause == "non_finite"]
    assert [(f.path, f.severity) for f in warn] == [("relu", "warning")]
    assert "in the port only, first at relu" in warn[0].message
    assert all(f.cause != "non_finite" for f in r.findings)


# --- through the check: a BatchNorm moving variance of -1 -----------------------------------------------------
NEGATIVE_VARIANCE = [
    # Keras layer,         channels, tap path: the first BatchNorm (the case that used to read as dropout left on
    # in eval) and one deep in the network
    ("base_bn1", 8, "base/bn1"),
    ("block2_sepconv1_bn", 32, "block2/sepconv1/bn"),
]


@pytest.mark.parametrize("layer,channels,path", NEGATIVE_VARIANCE, ids=[c[0] for c in NEGATIVE_VARIANCE])
def test_negative_moving_variance_fails_at_that_batchnorm_named_non_finite(layer, channels, path):
    """mini_XCEPTION (fast config) with one BatchNorm moving variance of -1, set directly in the reference run
    the check is given (a weights file with it is refused by the converter before any check)."""
    pytest.importorskip("keras")
    from parity.backends.keras_side import run_reference
    from parity.core.options import optimizer_spec
    from parity.harness import check
    from parity.pairs import registry

    spec = registry.get("minixception")
    var = np.full(channels, 1.0)
    var[5] = -1.0
    run = run_reference(spec, config=spec.config(**spec.fast_config), dtype="float64", seed=0, batch=4,
                        optimizer=optimizer_spec(spec, None), steps=1, stages={"structure", "forward_eval"},
                        weights={layer: {"moving_variance": var}})
    r = check("minixception", reference_run=run, stages="structure,forward_eval")
    assert not r.passed
    fd = r.first_divergence
    assert (fd.stage.name, fd.path) == ("forward_eval", path)
    assert fd.cause.cause == "non_finite" and fd.cause.path == path
    assert fd.cause.message == (f"non-finite values (NaN/Inf) on both sides, first at {path} in forward_eval: "
                                f"{layer}/moving_variance holds 1 negative value (min -1): sqrt(moving_variance + "
                                "epsilon) is NaN there")
    assert not [f for f in r.findings if f.cause == "train_eval_mode"]
    assert r.summary_line().startswith(f"FAILED: first divergence at forward_eval {path} max|Δ| nan")


def test_a_weights_file_that_overflows_fails_at_the_first_conv_named_non_finite(tmp_path, capsys):
    """A float64 Keras 3 weights file with finite values only (the converter accepts it) whose first conv kernel
    is 1e308: its outputs overflow to Inf on both sides. ``parity check --weights`` fails there, exit 1."""
    pytest.importorskip("keras")
    from parity.backends.keras_side import keras_dtype
    from parity.cli import main
    from parity.pairs import registry
    from reference_keras.minixception import mini_xception

    spec = registry.get("minixception")
    with keras_dtype("float64"):
        model = mini_xception(**spec.config(**spec.fast_config))
    kernel = next(w for w in model.get_layer("base_conv1").weights if "kernel" in w.name)
    kernel.assign(np.full(kernel.shape, 1e308))
    path = tmp_path / "overflow.weights.h5"
    model.save_weights(path)
    code = main(["check", "minixception", "--fast", "--weights", str(path), "--stages", "structure,forward_eval",
                 "-q", "--out", str(tmp_path / "report")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 1, last
    assert last.startswith("FAILED: first divergence at forward_eval base/conv1 max|Δ| nan"), last
    assert last.endswith("cause: non-finite values (NaN/Inf) on both sides, first at base/conv1 in forward_eval: "
                         "the outputs overflow the dtype's range (Inf) (base_conv1/kernel max |w| 1e+308)"), last
