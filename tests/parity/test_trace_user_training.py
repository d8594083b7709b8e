"""``parity record --reference MOD:FN --port MOD:FN --port-optimizer MOD:FN --port-loss MOD:FN`` stores the
reference's compiled training configuration in the trace as plain data; ``parity replay TRACE --port ...
--port-optimizer ... --port-loss ...`` compares the user's real training step with it (PyTorch only), as
``parity check`` does. ``--watch`` takes the same two options."""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import pytest

from parity.io import cache, trace, watch
from parity.user.pair import spec_from_user_models
from tests.parity import user_training_models as M

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOD = "tests.parity.user_training_models"
STAGES = "forward_eval,forward_train,gradients,step"


def _parity(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "parity", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def adam_trace(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trace") / "adam.safetensors")
    code, out, err = _parity("record", "--reference", f"{MOD}:keras_adam", "--port", f"{MOD}:port",
                             "--port-optimizer", f"{MOD}:adam_ok", "--port-loss", f"{MOD}:ce_ok",
                             "--stages", STAGES, "--steps", "2", "-o", path, "-q")
    assert code == 0, out + err
    assert out.strip().splitlines()[-1].startswith("recorded keras_adam-vs-port"), out
    return path


def _replay(path, tmp_path, optimizer, loss=f"{MOD}:ce_ok", *extra):
    args = ["replay", path, "--port", f"{MOD}:port", "--out", str(tmp_path / "rep"), "-q"]
    if optimizer:
        args += ["--port-optimizer", optimizer]
    if loss:
        args += ["--port-loss", loss]
    return _parity(*args, *extra)


def test_recorded_training_configuration_is_plain_data(adam_trace):
    from safetensors import safe_open

    with safe_open(adam_trace, framework="numpy") as f:
        body = json.loads(f.metadata()[trace.META_KEY])
    training = body["meta"]["training"]
    assert training["keras_optimizer"]["class_name"] == "Adam"
    assert training["keras_optimizer"]["config"]["epsilon"] == M.KERAS3_ADAM_EPS
    assert training["loss"] == {"name": "categorical_crossentropy", "reduction": "mean",
                                "reference_from_logits": False, "label_smoothing": 0.0, "port_probabilities": False}
    assert training["port_optimizer"] == f"{MOD}:adam_ok"  # a label: replay never runs what a trace names
    assert body["meta"]["optimizer"]["kind"] == "user"
    text = json.dumps(body)
    assert "<function" not in text and "factory" not in text


def test_replay_of_the_user_training_step_passes_then_names_a_planted_adam_epsilon(adam_trace, tmp_path):
    code, out, err = _replay(adam_trace, tmp_path, f"{MOD}:adam_ok")
    assert code == 0, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("PASSED keras_adam-vs-port [float64, cpu, batch 4]: 5 stages"), out + err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["optimizer"]["kind"] == "user" and report["optimizer"]["reference"]["class"] == "Adam"
    assert any(t["path"].endswith(".v@step2") for st in report["stages"] for t in st["tensors"])
    # the planted bug: torch's default eps 1e-8 where Keras 3's is 1e-7 (float64 sees it)
    code, out, err = _replay(adam_trace, tmp_path, f"{MOD}:adam_torch_eps")
    assert code == 1, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED: first divergence at step"), last
    assert "Adam epsilon 1e-08 in the port" in last and "1e-07 in the reference" in last, last


def test_replay_of_a_planted_loss_bug_names_it(adam_trace, tmp_path):
    code, out, err = _replay(adam_trace, tmp_path, f"{MOD}:adam_ok", f"{MOD}:ce_on_probabilities")
    assert code == 1, out + err
    assert "probabilities" in out.strip().splitlines()[-1], out


def test_replay_needs_the_options_the_trace_was_recorded_for(adam_trace, tmp_path):
    code, out, err = _replay(adam_trace, tmp_path, None, None)
    assert code == 2 and err.count("\n") == 1, err
    assert "expected --port-optimizer MOD:FN --port-loss MOD:FN" in err and "Received: neither" in err, err
    code, out, err = _replay(adam_trace, tmp_path, f"{MOD}:adam_ok", None)
    assert code == 2 and "Received: --port-optimizer." in err, err


def test_replay_options_on_a_trace_without_a_training_configuration(tmp_path):
    path = str(tmp_path / "plain.safetensors")
    code, out, err = _parity("record", "--reference", f"{MOD}:keras_adam", "--port", f"{MOD}:port",
                             "--stages", "forward_eval", "-o", path, "-q")
    assert code == 0, err
    code, out, err = _replay(path, tmp_path, f"{MOD}:adam_ok")
    assert code == 2 and err.count("\n") == 1, err
    assert "expected a trace recorded with the reference's compiled training configuration" in err, err


def _rewrite(src, dst, edit):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(src, framework="numpy") as f:
        meta = dict(f.metadata())
    body = json.loads(meta[trace.META_KEY])
    edit(body["meta"]["training"])
    meta[trace.META_KEY] = json.dumps(body)
    save_file(load_file(src), dst, metadata=meta)


@pytest.mark.parametrize("edit, says", [
    (lambda t: t["keras_optimizer"].update(class_name="os.system('x')"), "expected the recorded Keras optimizer"),
    (lambda t: t["keras_optimizer"]["config"].update(epsilon="1e-7"), "expected the recorded Keras optimizer"),
    (lambda t: t["loss"].update(name="__import__('os')"), "expected the recorded loss name"),
    (lambda t: t["loss"].update(label_smoothing=float("inf")), "expected the recorded loss label_smoothing"),
])
def test_a_tampered_training_entry_is_refused_as_data(adam_trace, tmp_path, edit, says):
    bad = str(tmp_path / "bad.safetensors")
    _rewrite(adam_trace, bad, edit)
    with pytest.raises(Exception) as info:
        trace.replay(bad, port=M.port, port_optimizer=M.adam_ok, port_loss=M.ce_ok)
    assert type(info.value).__name__ == "UsageError" and says in str(info.value), str(info.value)


@pytest.mark.parametrize("factory, verdict", [("adam_ok", "PASSED"), ("adam_torch_eps", "FAILED")])
def test_watch_takes_the_user_s_optimizer_and_loss(tmp_path, factory, verdict):
    spec = spec_from_user_models(M.keras_adam, M.port)
    args = argparse.Namespace(port_optimizer=f"{MOD}:{factory}", port_loss=f"{MOD}:ce_ok", dtype="float64")
    spec = watch._with_user_training(spec, args, {})
    req = cache.make_request(spec, stages=STAGES, steps=2)
    out, err = io.StringIO(), io.StringIO()
    w = watch.Watcher(req, out_dir=str(tmp_path / "rep"), use_cache=False, out=out, err=err, poll=0.05)
    code = w.run(max_checks=1)
    verdicts = [line for line in out.getvalue().splitlines() if line.startswith(("PASSED", "FAILED"))]
    assert verdicts and verdicts[0].startswith(verdict), out.getvalue() + err.getvalue()
    assert code == (0 if verdict == "PASSED" else 1)
    if verdict == "FAILED":
        assert "Adam epsilon 1e-08 in the port" in verdicts[0], verdicts[0]
