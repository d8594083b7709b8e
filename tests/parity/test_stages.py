"""The stages over one check context (parity.stages): what the harness and the diagnosis rely on."""
from __future__ import annotations

import ast
import pathlib
import re
from types import SimpleNamespace

import pytest

from parity import harness
from parity.core.spec import TolerancePolicy
from parity.pairs import registry
from parity.stages import onnx as onnx_leg
from parity.stages import train
from parity.stages.context import TOLERANCE_STAGES, CheckContext, resolve_tolerances

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ctx(**kw) -> CheckContext:
    spec = registry.get("minixception")
    base = dict(spec=spec, stages={"forward_eval"}, dtype="float64", device="cpu", seed=0, batch=2,
                optimizer=None, steps=1, store=None)
    return CheckContext(**(base | kw))


def test_probe_dict_carries_what_the_diagnosis_reads():
    spec = registry.get("minixception")
    taps = spec.taps(spec.config())
    ref = SimpleNamespace(taps=taps, store=None)
    ctx = _ctx(ref=ref, ts="torch side", final="final", calls={"": 1})
    d = ctx.as_probe_dict()
    assert d["reference_run"] is ref and d["torch_side"] == "torch side" and d["spec"] is spec
    assert d["taps"] == taps and d["final"] == "final" and d["loss"] == spec.loss.name
    assert d["output_path"] == "predictions"  # the tap whose port module is the whole model
    assert ctx.tap_by_ref[taps[0].ref] is taps[0]
    assert ctx.path_of_layer == {t.ref: t.path for t in taps}
    # every key a diagnosis rule reads from it (``po.get("...")``) is there
    read = set()
    for p in (ROOT / "parity" / "diagnosis").rglob("*.py"):
        read |= set(re.findall(r'\bpo(?:\.get\(|\[)"(\w+)"', p.read_text()))
    assert {"reference_run", "torch_side", "final", "output_path"} <= read <= set(d)


def test_tolerances_are_resolved_for_every_stage_name():
    spec = registry.get("minixception")
    tol = resolve_tolerances(spec, "float32")
    assert set(tol) == set(TOLERANCE_STAGES)
    assert tol["gradients"] == spec.tolerance.for_stage("float32", "gradients")


def test_a_check_looks_the_tolerance_policy_up_once(monkeypatch):
    pytest.importorskip("keras")
    calls = []
    real = TolerancePolicy.for_stage

    def counting(self, dtype, stage):
        calls.append(stage)
        return real(self, dtype, stage)

    monkeypatch.setattr(TolerancePolicy, "for_stage", counting)
    spec = registry.get("minixception")
    r = harness.check(spec, stages="forward_eval,isolated", config=dict(spec.fast_config))
    assert r.passed
    assert sorted(calls) == sorted(TOLERANCE_STAGES)  # once per stage name, by the harness, not by each stage


def test_optional_legs_run_before_training():
    """The ONNX leg compares with the reference's eval outputs of the loaded weights: it runs before the
    training stages update the port."""
    assert harness.PIPELINE.index(onnx_leg.run) < harness.PIPELINE.index(train.run)


def _functions():
    for p in [ROOT / "parity" / "harness.py", *sorted((ROOT / "parity" / "stages").glob("*.py"))]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{p.relative_to(ROOT)}:{node.name}", node


def test_stage_functions_are_short_and_take_the_context():
    """No stage grows back into one long function with a long argument list."""
    long = [f"{name} ({n.end_lineno - n.lineno + 1} lines)" for name, n in _functions()
            if n.end_lineno - n.lineno + 1 > 60]
    wide = [f"{name} ({len(n.args.args)} positional)" for name, n in _functions() if len(n.args.args) > 7]
    assert not long and not wide, long + wide
