"""``--device cuda``: the port on a GPU (TF32 off, deterministic cuDNN), checked live or against a trace recorded
on the CPU. Without a GPU: a clear usage error, exit 2, one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from parity.cli import main

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


@pytest.mark.gpu
@needs_cuda
def test_check_on_cuda_float64():
    from parity.harness import check

    result = check("minixception", device="cuda", dtype="float64")
    assert result.passed, result.summary_line()
    dev = result.environment["port_device"]
    assert dev["device"].startswith("cuda") and dev["name"] and dev["tf32"] is False and dev["cudnn_deterministic"]
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


@pytest.mark.gpu
@needs_cuda
def test_replay_cpu_trace_on_cuda(tmp_path):
    from parity.pairs import registry
    from parity.io.trace import record, replay

    path, _ = record(registry.get("minixception"), str(tmp_path / "t.safetensors"))
    result = replay(path, device="cuda")
    assert result.passed, result.summary_line()
    assert result.device == "cuda" and result.reference_source == f"trace:{path}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_usage_error():
    """In a subprocess, as a user runs it: exit 2, one stderr line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "parity", "check", "minixception", "--device", "cuda", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("parity: error: --device cuda: expected a CUDA device. Received: torch ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_device_is_a_usage_error(capsys):
    assert main(["check", "minixception", "--device", "tpu", "-q"]) == 2
    assert capsys.readouterr().err == "parity: error: --device: expected 'cpu' or 'cuda[:N]'. Received: 'tpu'.\n"


def test_report_records_device_and_versions(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["check", "minixception", "--stages", "structure", "--out", str(out), "-q"]) == 0
    env = json.loads((out / "report.json").read_text())["environment"]
    assert env["port_device"] == {"device": "cpu", "torch": torch.__version__}
    assert env["torch"] == torch.__version__ and env["python"] and env["numpy"]
    assert env["reference_keras_version"] and env["reference_tensorflow_version"]
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
