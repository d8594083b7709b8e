"""``parity check NAME --watch`` (``parity.io.watch``): a saved edit of the port is re-imported and re-checked
against the reference held in memory; a file that does not import is reported and waited out; Ctrl-C ends
the session with the last verdict's exit status."""
from __future__ import annotations

import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from parity.io import cache, watch
from parity.pairs import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = registry.get("minixception")
EVAL_STAGES = "structure,forward_eval"
#: the line of ported_torch/minixception.py a person edits below: the BatchNorm epsilon default
EPS_LINE = "bn_eps=KERAS_BN_EPSILON,"
EPS_BUG = "bn_eps=1e-5,"


def _port_package(tmp_path) -> tuple[str, str]:
    """A copy of ported_torch/minixception.py in a fresh package: (package name, path of the copy)."""
    name = f"watchport_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = os.path.join(ROOT, "ported_torch", "minixception.py")
    dst = pkg / "minixception.py"
    shutil.copy(src, dst)
    assert EPS_LINE in dst.read_text()
    return name, str(dst)


def _edit(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def test_reload_order_puts_dependencies_first(tmp_path):
    pkg = tmp_path / "worder"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "b.py").write_text("from worder.a import X\n")
    (pkg / "c.py").write_text("from worder import b\n")
    (pkg / "d.py").write_text("Y = 2\n")
    files = {f"worder.{m}": str(pkg / f"{m}.py") for m in "abcd"}
    assert watch.reload_order({"worder.a"}, files) == ["worder.a", "worder.b", "worder.c"]
    assert watch.reload_order({"worder.d"}, files) == ["worder.d"]


def test_an_edit_is_rechecked_in_the_same_process(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    name, path = _port_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    req = cache.make_request(SPEC, stages=EVAL_STAGES, config=SPEC.fast_config)
    out, err = io.StringIO(), io.StringIO()
    w = watch.Watcher(req, port=f"{name}.minixception:mini_xception", out_dir=str(tmp_path / "rep"), out=out,
                      err=err, poll=0.05)
    broken = "bn_eps=KERAS_BN_EPSILON +,"  # a syntax error mid-edit: reported, then waited out

    def person():
        time.sleep(0.05)
        _edit(path, EPS_LINE, broken)
        for _ in range(1200):
            if "does not import" in err.getvalue():
                break
            time.sleep(0.05)
        _edit(path, broken, EPS_BUG)

    def after(n):
        if n == 1:
            threading.Thread(target=person, daemon=True).start()

    code = w.run(max_checks=2, on_check=after)
    verdicts = [line for line in out.getvalue().splitlines() if line.startswith(("PASSED", "FAILED"))]
    assert verdicts[0].startswith("PASSED minixception"), out.getvalue() + err.getvalue()
    assert len(verdicts) == 2 and verdicts[1].startswith("FAILED: first divergence at forward_eval base/bn1")
    assert "BatchNorm eps 1e-05 in the port, 0.001 in the reference" in verdicts[1]
    assert f"{name}.minixception does not import (SyntaxError" in err.getvalue()
    assert code == 1
    assert (tmp_path / "rep" / "report.html").stat().st_size > 0


def _reader(stream, q):
    for line in iter(stream.readline, ""):
        q.put(line.rstrip("\n"))
    q.put(None)


def _wait_for(q, prefix, timeout, seen):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r} within {timeout} s; saw: {seen[-10:]}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_cli_watch_rechecks_on_save_and_ctrl_c_exits_with_the_last_verdict(tmp_path):
    name, path = _port_package(tmp_path)
    env = dict(os.environ)
    env.pop(cache.NO_CACHE_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT, env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "parity", "check", "minixception", "--fast", "--stages", EVAL_STAGES,
            "--port", f"{name}.minixception:mini_xception", "--watch", "--out", str(tmp_path / "rep")]
    # SIGINT reaches the child even when the suite runs as a background job (which ignores SIGINT)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    q_out, q_err = queue.Queue(), queue.Queue()
    threading.Thread(target=_reader, args=(p.stdout, q_out), daemon=True).start()
    threading.Thread(target=_reader, args=(p.stderr, q_err), daemon=True).start()
    seen: list[str] = []
    try:
        first = _wait_for(q_out, ("PASSED", "FAILED"), 600, seen)
        assert first.startswith("PASSED minixception"), first
        _wait_for(q_err, "  verdict in", 120, seen)  # reports written; the loop watches
        _edit(path, EPS_LINE, EPS_BUG)
        second = _wait_for(q_out, ("PASSED", "FAILED"), 120, seen)
        assert second.startswith("FAILED: first divergence at forward_eval base/bn1"), second
        _wait_for(q_err, "  verdict in", 120, seen)
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 1  # the last verdict: FAILED
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_an_edit_of_the_reference_is_reported_not_followed(tmp_path):
    ref_file = tmp_path / "model.py"
    ref_file.write_text("WIDTH = 8\n")
    err = io.StringIO()
    w = watch.Watcher(cache.make_request(SPEC, stages=EVAL_STAGES), out_dir=str(tmp_path), out=io.StringIO(),
                      err=err)
    assert set(cache.reference_sources(w.req)) >= {"reference_keras.minixception", "parity.pairs.minixception"}
    w.ref_files = {"refpkg.model": str(ref_file)}
    w.ref_stamps = {"refpkg.model": watch._stamp(str(ref_file))}
    assert w.reference_changed() == []
    ref_file.write_text("WIDTH = 16  # the reference edited\n")
    assert w.reference_changed() == ["refpkg.model"]
    assert "the reference's source changed (refpkg.model)" in err.getvalue() and "restart" in err.getvalue()
    assert w.reference_changed() == []  # said once


@pytest.mark.parametrize("flag, says", [("--onnx", "expected a check without --onnx"),
                                        ("--json", "expected human output")])
def test_watch_refuses_options_it_cannot_follow(flag, says, tmp_path, capsys):
    from parity.cli import main

    assert main(["check", "minixception", "--watch", flag, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity: error: --watch: ") and says in err and "Received:" in err


def _numbers(result):
    return {(st.name, t.path): (t.max_abs, t.mismatched, t.index) for st in result.stages for t in st.tensors}


def test_later_checks_of_a_session_read_the_reference_in_the_port_layout_and_give_the_same_numbers(tmp_path,
                                                                                                monkeypatch):
    """Every check after the first takes the reference's arrays already moved to the port's layout (the
    session's PortLayoutMemo): nothing is moved again, and every tensor's numbers equal a fresh check's."""
    from parity.harness import check

    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    req = cache.make_request(SPEC, stages=None, config=SPEC.fast_config)
    w = watch.Watcher(req, out_dir=str(tmp_path / "rep"), out=io.StringIO(), err=io.StringIO())
    w.start()
    memo = w.ref.run.port_layout
    try:
        first = cache.run_port_check(req, w.ref)
        moved, reused = memo.misses, memo.hits  # reused: the isolated stage reads forward_eval's moves
        assert moved > 20
        second = cache.run_port_check(req, w.ref)
        assert memo.misses == moved and memo.hits == 2 * reused + moved
        assert memo.store.files > 0  # the large ones wait on disk
    finally:
        w.close()
    assert memo.store.closed
    fresh = check(SPEC, config=SPEC.fast_config)
    assert _numbers(first) == _numbers(second) == _numbers(fresh)
    assert {st.name for st in fresh.stages} >= {"forward_eval", "isolated", "forward_train", "gradients", "step"}
