"""``parity record`` / ``parity replay``: a reference trace in safetensors, replayed with PyTorch alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from parity.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST_STAGES = "structure,forward_eval"


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """minixception recorded once for this module (all stages, one SGD step)."""
    path = str(tmp_path_factory.mktemp("trace") / "minixception.safetensors")
    assert main(["record", "minixception", "-o", path, "-q"]) == 0
    return path


def _last_line(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    return out.strip().splitlines()[-1], err


def test_record_prints_what_it_recorded_and_no_verdict(tmp_path, capsys):
    path = str(tmp_path / "t.safetensors")
    assert main(["record", "minixception", "-o", path, "--stages", FAST_STAGES, "-q"]) == 0
    last, _ = _last_line(capsys)
    assert last.startswith("recorded minixception [float64, batch 8, 2 stages]")  # PASSED/FAILED: verdicts only
    assert os.path.exists(path)


def test_replay_passes(trace, tmp_path, capsys):
    rc = main(["replay", trace, "--out", str(tmp_path / "rep"), "-q"])
    last, _ = _last_line(capsys)
    assert rc == 0, last
    assert last.startswith("PASSED minixception [float64, cpu, batch 8]: 6 stages")
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["reference_source"] == f"trace:{trace}"
    assert report["environment"]["reference_keras_version"]


def test_replay_planted_bug_fails(trace, tmp_path, capsys):
    rc = main(["replay", trace, "--port", "tests.planted_ports:bn_eps_1e5", "--stages", FAST_STAGES,
               "--out", str(tmp_path / "rep"), "-q"])
    last, _ = _last_line(capsys)
    assert rc == 1
    assert last.startswith("FAILED: first divergence at forward_eval base/bn1"), last
    assert "BatchNorm eps 1e-05 in the port, 0.001 in the reference" in last


def test_replay_stage_not_recorded(tmp_path, capsys):
    path = str(tmp_path / "t.safetensors")
    assert main(["record", "minixception", "-o", path, "--stages", FAST_STAGES, "-q"]) == 0
    capsys.readouterr()
    assert main(["replay", path, "--stages", "gradients", "-q"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("parity: error: --stages: expected stages recorded in the trace (structure, "
                          "forward_eval). Received: gradients.")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"not a trace at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"],
                         ids=["text", "truncated-header"])
def test_corrupt_trace_exit_2_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    assert main(["replay", str(bad), "-q"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"parity: error: replay {bad}: expected a"), err
    assert "Traceback" not in err


def test_foreign_safetensors_exit_2(tmp_path, capsys):
    from safetensors.numpy import save_file

    path = str(tmp_path / "weights.safetensors")
    save_file({"w": np.zeros(3)}, path)
    assert main(["replay", path, "-q"]) == 2
    err = capsys.readouterr().err
    assert err == (f"parity: error: replay {path}: expected a parity trace (parity.io.trace/1). Received: a "
                   "safetensors file with schema None. Record one with `parity record`.\n")


def test_missing_trace_exit_2(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.safetensors"), "-q"]) == 2
    assert "expected a trace file written by `parity record`. Received: no such file." in capsys.readouterr().err


def test_trace_is_safetensors_without_pickle(trace):
    """The file is a safetensors header (JSON) + raw buffers; loading it runs no pickle."""
    from safetensors import safe_open

    with open(trace, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little")
        header = json.loads(f.read(n))
    assert header["__metadata__"]["schema"] == "parity.io.trace/1"
    with open(trace, "rb") as f:
        data = f.read()
    # pickle protocol 2+ streams start with 0x80 <proto>; torch zip checkpoints with 'PK'
    assert b"\x80\x04\x95" not in data[:8 + n] and not data.startswith(b"PK")
    with safe_open(trace, framework="numpy") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["parity.io.trace"])
    assert {"inputs/0", "labels/0", "weights/base_conv1/kernel", "eval_acts/base/bn1",
            "steps/0/params/base_conv1/kernel", "steps/0/slots/base.conv1.weight/momentum"} <= keys
    assert meta["meta"]["pair"] == "minixception" and meta["meta"]["optimizer"]["kind"] == "sgd"
    assert meta["meta"]["port"] == "ported_torch.minixception:mini_xception"
    assert meta["taps"][0] == {"path": "base/conv1", "ref": "base_conv1", "port": "base.conv1", "kind": "conv2d",
                               "port_transform": None, "flatten_chw": None}


def test_roundtrip_run_is_identical(trace):
    """Every array and field of the ReferenceRun comes back as recorded."""
    from safetensors import safe_open

    from parity.io.trace import load_trace, run_to_trace

    run, _ = load_trace(trace)
    tensors, metadata = run_to_trace(run)
    with safe_open(trace, framework="numpy") as f:
        for k in f.keys():
            assert np.array_equal(f.get_tensor(k), tensors[k]), k
    assert run.meta["trace_path"] == trace
    assert run.param_refs[0].key == "base.conv1.weight" and run.param_refs[0].param is None
    assert run.eval_inputs["base/bn1"][0] is run.eval_acts["base/conv1"]  # stored once, shared on load


def test_replay_imports_no_tensorflow(trace, tmp_path):
    """The replay path on a machine without TensorFlow/Keras: both made unimportable before parity loads."""
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras'):\n"
        "    sys.modules[name] = None  # import -> ModuleNotFoundError; importlib.util.find_spec -> None\n"
        "from parity.cli import main\n"
        f"rc = main(['replay', {trace!r}, '--stages', 'structure,forward_eval,gradients,step', '-q', "
        f"'--out', {str(tmp_path / 'rep')!r}])\n"
        "loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in "
        "('tensorflow', 'keras'))\n"
        "print('LOADED', loaded)\n"
        "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert lines[-1] == "LOADED []"
    assert lines[-2].startswith("PASSED minixception [float64, cpu, batch 8]: 4 stages")


def test_user_models_trace_replays_with_the_port_named_on_the_command_line(tmp_path, capsys):
    """Your own models: the trace names its pair, never the code replay runs; the port comes from --port."""
    path = str(tmp_path / "user.safetensors")
    assert main(["record", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
                 "-o", path, "--stages", FAST_STAGES, "-q"]) == 0
    capsys.readouterr()
    assert main(["replay", path, "--out", str(tmp_path / "r0"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"parity: error: replay {path}: expected --port MODULE:FUNCTION for pair "
                          "'keras_cnn-vs-torch_cnn', which is not a registered pair. Received: no --port."), err
    assert main(["replay", path, "--port", "benchmarks.user_models:torch_cnn", "--out", str(tmp_path / "r1"),
                 "-q"]) == 0
    assert _last_line(capsys)[0].startswith("PASSED keras_cnn-vs-torch_cnn [float64, cpu, batch 4]: 2 stages")
    assert main(["replay", path, "--port", "benchmarks.user_models:torch_cnn_symmetric_pad", "--out",
                 str(tmp_path / "r2"), "-q"]) == 1
    assert _last_line(capsys)[0].startswith("FAILED: first divergence at forward_eval conv2")


def test_record_to_a_directory_is_refused_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["record", "minixception", "-o", str(out), "--stages", FAST_STAGES, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity: error: ") and "Received: a directory" in err, err
    assert list(tmp_path.rglob("*")) == [out]
    from parity.core.errors import UsageError
    from parity.io.trace import record
    from parity.pairs import registry

    with pytest.raises(UsageError, match=r"^--output .*out: expected a file name\. Received: a directory\."):
        record(registry.get("minixception"), str(out), stages=FAST_STAGES)
    assert list(tmp_path.rglob("*")) == [out]


def test_a_failed_write_leaves_no_temporary_file(trace, tmp_path, monkeypatch):
    """The trace is written atomically: a failure half-way (here: the disk fills) leaves neither the destination
    nor a temporary file."""
    from parity.io import trace as trace_mod

    from parity.core.spill import Spilled

    class FullDisk(Spilled):
        def __init__(self):
            self.path, self.shape, self.dtype, self.nbytes, self.digest = "-", (4,), np.dtype("float64"), 32, None

        def load(self):
            raise OSError(28, "No space left on device")

    run, _ = trace_mod.load_trace(trace, lazy=False)
    run.eval_acts["zz/last"] = FullDisk()
    from parity.core.errors import UsageError

    with pytest.raises(UsageError, match=rf"^--output {tmp_path / 't.safetensors'}: expected room in {tmp_path} "
                                         r"for the file \(.* MB written when it failed, .* MB free\)\. Received: No "
                                         "space left on device. Free disk space or write it elsewhere."):
        trace_mod.write_trace(str(tmp_path / "t.safetensors"), run)
    assert list(tmp_path.iterdir()) == []


def test_written_trace_has_the_umask_mode_and_replaces_a_symlink(trace, tmp_path):
    from parity.io import trace as trace_mod

    run, _ = trace_mod.load_trace(trace, lazy=False)
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    link = tmp_path / "t.safetensors"
    link.symlink_to(target)
    old = os.umask(0o022)
    try:
        trace_mod.write_trace(str(link), run)
    finally:
        os.umask(old)
    assert target.read_text() == "keep me"                      # never written through the link
    assert not link.is_symlink() and (link.stat().st_mode & 0o777) == 0o644


def test_record_user_models_needs_port(tmp_path, capsys):
    assert main(["record", "--reference", "benchmarks.user_models:keras_cnn", "-o", str(tmp_path / "t.safetensors"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity: error: record: expected a pair NAME (see `parity list`) or both --reference "
                          "MOD:FN and --port MOD:FN") and err.endswith("Received: --reference only.\n"), err


def test_replay_gives_the_numbers_of_a_live_check(trace):
    """Same seed, same inputs, same weights: every compared tensor's difference is identical."""
    from parity.harness import check
    from parity.io.trace import replay

    live = check("minixception", stages="forward_eval,gradients")
    replayed = replay(trace, stages="forward_eval,gradients")
    assert [s.name for s in live.stages] == [s.name for s in replayed.stages]
    for a, b in zip(live.stages, replayed.stages):
        assert [(t.path, t.max_abs) for t in a.tensors] == [(t.path, t.max_abs) for t in b.tensors], a.name


def test_a_large_trace_is_read_lazily_with_the_same_figures(trace, monkeypatch):
    """Above ``LAZY_TRACE_MIN_BYTES`` a trace stays on disk and each large array is read when compared: the
    replay compares the same tensors with the same differences as a trace read whole."""
    from parity.io import trace as trace_mod
    from parity.core.spill import Spilled

    run, _ = trace_mod.load_trace(trace, lazy=True)
    handles = [run.eval_acts.handle(p) for p in run.eval_acts]
    assert any(isinstance(h, Spilled) for h in handles)  # at least one activation is read on demand
    whole = trace_mod.replay(trace, stages="forward_eval,gradients,step,isolated")
    monkeypatch.setattr(trace_mod, "LAZY_TRACE_MIN_BYTES", 0)
    lazy = trace_mod.replay(trace, stages="forward_eval,gradients,step,isolated")
    assert whole.passed and lazy.passed
    for a, b in zip(whole.stages, lazy.stages):
        assert [(t.path, t.max_abs) for t in a.tensors] == [(t.path, t.max_abs) for t in b.tensors], a.name


def test_the_streamed_writer_is_read_by_safetensors_itself(trace):
    """``parity record`` writes the safetensors layout by hand (one array at a time); safetensors' own loader
    reads every tensor back bit-exact and finds the header well-formed (offsets contiguous, 8-byte padding)."""
    from safetensors.numpy import load_file

    from parity.io.trace import load_trace, run_to_trace

    loaded = load_file(trace)
    run, _ = load_trace(trace, lazy=False)
    tensors, _ = run_to_trace(run)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape and np.array_equal(loaded[k], v), k
    with open(trace, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0
