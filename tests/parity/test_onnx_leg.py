"""``parity check --onnx``: onnxruntime as a third leg (the port's and the reference's ONNX exports)."""
from __future__ import annotations

import json

import pytest

from parity.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_check_onnx_minixception(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["check", "minixception", "--onnx", "--stages", "structure,forward_eval", "--out", str(out), "-q"])
    stdout, err = capsys.readouterr()
    assert rc == 0, stdout + err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("PASSED minixception [float64, cpu, batch 8]: 3 stages")
    report = json.loads((out / "report.json").read_text())
    onnx = next(s for s in report["stages"] if s["name"] == "onnx")
    assert onnx["passed"] and not onnx["skipped"]
    # onnxruntime's CPU provider has no float64 Conv: the leg says it ran in float32, and under which tolerance
    assert onnx["info"]["ort_dtype"] == "float32" and "float64" in onnx["info"]["why_float32"]
    (row,) = onnx["tensors"]
    assert row["path"] == "predictions" and row["rtol"] == 1e-4
    extra = row["extra"]
    # measured: ORT vs Keras ~3e-8 on the softmax output in float32; torch vs Keras ~1e-16 in float64
    assert extra["torch_max_abs"] < 1e-14
    assert extra["ort_torch_max_abs"] < 1e-6 and extra["ort_keras_max_abs"] < 1e-6
    assert extra["ort_torch_vs_ort_keras"] < 1e-6
    assert not [f for f in onnx["findings"] if f["cause"] == "exporter"]
    assert "onnx" in (out / "report.md").read_text()


def test_exporter_issue_is_a_warning_not_a_port_failure(monkeypatch):
    """A difference only the port's export shows (torch itself matches Keras) -> Finding(exporter, warning),
    and the stage still judges the port (which is right)."""
    import numpy as np

    from parity.stages import onnx as onnx_leg
    from parity.harness import check

    real_run = onnx_leg._run
    calls = {"n": 0}

    def broken_first_run(sess, x):  # the first session is the port's export: corrupt its output
        calls["n"] += 1
        out = real_run(sess, x)
        return out * 1.5 if calls["n"] == 1 else out

    monkeypatch.setattr(onnx_leg, "_run", broken_first_run)
    result = check("minixception", stages="forward_eval", onnx=True)
    st = result.stage("onnx")
    assert result.passed and st.passed
    (f,) = [f for f in st.findings if f.cause == "exporter"]
    assert f.severity == "warning" and "exporter issue, not a port issue" in f.message
    assert "exporter issue" in st.tensors[0].note
    assert st.tensors[0].extra["ort_torch_vs_torch"] > 1e-3
    assert np.isfinite(st.tensors[0].extra["ort_keras_max_abs"])


def test_onnx_with_every_stage_sees_the_loaded_port(tmp_path, capsys):
    """The ONNX leg compares the port with the reference's eval-mode output of the loaded weights: it must not
    see the port after the step stage has updated its weights and BatchNorm statistics (which made the
    correct port fail at rel 8.7e-2, torch vs Keras 1.8e-2)."""
    out = tmp_path / "rep"
    rc = main(["check", "minixception", "--fast", "--onnx", "--out", str(out), "-q"])
    stdout, err = capsys.readouterr()
    assert rc == 0, stdout + err
    assert stdout.strip().splitlines()[-1].startswith("PASSED minixception")
    report = json.loads((out / "report.json").read_text())
    ran = [s["name"] for s in report["stages"] if not s["skipped"]]
    assert ran == ["structure", "forward_eval", "forward_train", "gradients", "step", "isolated", "onnx"]
    (row,) = next(s for s in report["stages"] if s["name"] == "onnx")["tensors"]
    assert row["passed"] and row["extra"]["torch_max_abs"] < 1e-14  # the port as loaded, not as stepped
