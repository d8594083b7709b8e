"""The command line as users run it: `parity list`, `parity check NAME`, reports, exit codes, bad input."""
import json

import numpy as np
import pytest

from parity.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_registered_pair_without_importing_frameworks():
    import subprocess
    import sys

    code = ("import sys; from parity.cli import main; rc = main(['list']); "
            "assert not {'torch', 'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert any(line.startswith("minixception") and "58,423" in line for line in lines)
    assert "PASSED" not in p.stdout  # a verdict word; listing checks nothing


def test_check_minixception_passes_and_writes_three_reports(tmp_path, capsys):
    code, out, err = run(capsys, "check", "minixception", "--out", str(tmp_path), "--verbose")
    last = out.strip().splitlines()[-1]
    assert code == 0, out + err
    assert last.startswith("PASSED minixception [float64, cpu, batch 8]: 6 stages")
    # progress on stderr: silent off a terminal, one line per phase with memory figures under --verbose
    assert "port: forward (eval)" in err and "rss" in err
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["schema"] == "parity.report/1" and rep["passed"] is True
    stages = {s["name"]: s for s in rep["stages"]}
    assert set(stages) == {"structure", "forward_eval", "forward_train", "gradients", "step", "isolated"}
    # measured worst error per stage, under a policy no looser than 1e-8 relative to each tensor's scale
    for name, s in stages.items():
        if name == "structure":
            continue
        assert s["worst_rel"] is not None and s["worst_rel"] <= 1e-8, (name, s["worst_rel"], s["worst_path"])
        assert all(t["rtol"] <= 1e-8 for t in s["tensors"])
    recon = stages["structure"]["info"]["param_reconciliation"]
    assert (recon["reference_total"], recon["reference_trainable"], recon["reference_non_trainable"]) == (
        58_423, 56_951, 1_472)
    assert (recon["port_parameters"], recon["port_buffers"], recon["port_num_batches_tracked"]) == (56_951, 1_472, 14)
    # initialisation parity: Keras glorot_uniform vs torch's default kaiming_uniform(a=sqrt(5)), a warning
    # kept in its own section: a check copies the reference's weights, so initialisation cannot cause a divergence
    assert not [f for f in rep["findings"] if f["cause"] == "init"]
    init = [f for f in rep["initialisation"] if f["cause"] == "init" and f["path"] == "base/conv1"]
    assert init and init[0]["severity"] == "warning" and "xavier_uniform_" in init[0]["fix"]
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "minixception" in html


def test_check_json_mode_stdout_is_the_report_and_the_verdict_goes_to_stderr(tmp_path, capsys):
    code, out, err = run(capsys, "check", "minixception", "--stages", "structure,forward_eval", "--json", "-q",
                         "--out", str(tmp_path))
    assert code == 0 and err.strip().splitlines()[-1].startswith("PASSED")
    assert json.loads(out)["pair"] == "minixception"


def test_stages_trajectory_runs_the_step_stage_over_several_steps(tmp_path, capsys):
    code, out, err = run(capsys, "check", "minixception", "--fast", "--stages", "trajectory", "--steps", "2", "-q",
                         "--out", str(tmp_path))
    assert code == 0, out + err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert {s["name"] for s in rep["stages"]} >= {"step", "trajectory"}
    assert rep["optimizer"]["steps"] == 2


# -- bad input: exit 2, one line on stderr, no traceback ------------------------------------------------------
def _one_line_error(code, out, err):
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("parity: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_pair(capsys):
    msg = _one_line_error(*run(capsys, "check", "nosuchpair"))
    assert "unknown pair 'nosuchpair'. Expected one of:" in msg and "minixception" in msg


def test_bad_stage_name(capsys):
    msg = _one_line_error(*run(capsys, "check", "minixception", "--stages", "forward,gradients"))
    assert msg == ("parity: error: --stages: expected a comma list of structure, forward_eval, forward_train, "
                   "gradients, step, isolated. Received: forward.")


def test_batch_of_one_is_refused_for_train_stages(capsys):
    msg = _one_line_error(*run(capsys, "check", "minixception", "--batch", "1"))
    assert "--batch: expected >= 2" in msg


def test_no_pair_and_no_models(capsys):
    _one_line_error(*run(capsys, "check"))


def test_corrupt_h5(tmp_path, capsys):
    f = tmp_path / "model.h5"
    f.write_bytes(np.random.default_rng(0).bytes(4096))
    msg = _one_line_error(*run(capsys, "check", "minixception", "--weights", str(f), "-q"))
    assert msg.startswith(f"parity: error: --weights {f}: expected an HDF5 file")


def test_missing_weights_file(tmp_path, capsys):
    msg = _one_line_error(*run(capsys, "check", "minixception", "--weights", str(tmp_path / "nope.h5"), "-q"))
    assert "expected a weights file. Received: no such file." in msg


@pytest.fixture(scope="module")
def keras_weight_files(tmp_path_factory):
    """A Keras 3 .weights.h5 of mini_XCEPTION with 7 classes and one with 2 classes (wrong head shape)."""
    import keras

    from reference_keras.minixception import mini_xception

    d = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(1)
    paths = {}
    for nc in (7, 2):
        m = mini_xception(num_classes=nc)
        paths[nc] = d / f"mini_{nc}.weights.h5"
        m.save_weights(paths[nc])
    return paths


def test_weights_file_passes(keras_weight_files, tmp_path, capsys):
    code, out, err = run(capsys, "check", "minixception", "--weights", str(keras_weight_files[7]), "-q",
                         "--stages", "structure,forward_eval,isolated", "--out", str(tmp_path))
    assert code == 0, out + err
    assert out.strip().splitlines()[-1].startswith("PASSED")


def test_h5_with_wrong_shape(keras_weight_files, capsys):
    msg = _one_line_error(*run(capsys, "check", "minixception", "--weights", str(keras_weight_files[2]), "-q"))
    assert "head_conv" in msg and "(3, 3, 128, 7)" in msg and "(3, 3, 128, 2)" in msg


def test_nan_in_weights(keras_weight_files, tmp_path, capsys):
    import shutil

    import h5py

    f = tmp_path / "nan.weights.h5"
    shutil.copy(keras_weight_files[7], f)
    with h5py.File(f, "r+") as h:
        def poison(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim == 4 and not getattr(poison, "done", False):
                a = obj[...]
                a.flat[0] = np.nan
                obj[...] = a
                poison.done = True
        h.visititems(poison)
    msg = _one_line_error(*run(capsys, "check", "minixception", "--weights", str(f), "-q"))
    assert "non-finite" in msg


def test_convert_says_how_to_use_the_file(keras_weight_files, tmp_path, capsys):
    out_file = tmp_path / "port.safetensors"
    code, out, err = run(capsys, "convert", str(keras_weight_files[7]), "--pair", "minixception", "-o", str(out_file),
                         "-q")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("PASSED convert minixception")
    text = "\n".join(lines)
    assert "the port is ported_torch.minixception:mini_xception()" in text
    assert "input NCHW float (N, 1, 64, 64)" in text and "returns logits" in text
    snippet = [line.strip() for line in lines if line.startswith("  ")][-2:]
    assert snippet[0] == "from ported_torch.minixception import mini_xception; from safetensors.torch import load_file"
    # the two lines run as printed
    namespace: dict = {}
    exec("\n".join(snippet), namespace)  # noqa: S102 - the snippet this test pins, run to prove it works
    assert not namespace["model"].training


def test_console_script_exits_quickly_yet_runs_what_exit_must(tmp_path):
    """``parity`` (the console entry, here ``python -m parity``) ends through ``exit_quickly``: the exit code of
    main, reports whole, stdout flushed, atexit handlers run and non-daemon threads joined first."""
    import subprocess
    import sys

    prog = ("import atexit, sys, threading, time\n"
            "from parity.cli import exit_quickly\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "t = threading.Thread(target=lambda: (time.sleep(0.3), open(sys.argv[1], 'w').write('joined')))\n"
            "t.start()\n"
            "sys.stdout.write('unflushed ')\n"
            "exit_quickly(1)\n"
            "print('not reached')\n")
    mark = tmp_path / "thread.txt"
    p = subprocess.run([sys.executable, "-c", prog, str(mark)], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (1, "unflushed atexit ran\n"), p.stderr
    assert mark.read_text() == "joined"
    p = subprocess.run([sys.executable, "-m", "parity", "check", "minixception", "--stages", "structure",
                        "--no-cache", "--out", str(tmp_path / "r"), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["passed"] is True
    assert json.loads((tmp_path / "r" / "report.json").read_text())["passed"] is True
    assert (tmp_path / "r" / "report.html").read_text().rstrip().endswith("</html>")
    p = subprocess.run([sys.executable, "-m", "parity", "check", "nosuch"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("parity: error: unknown pair 'nosuch'"), p.stderr
