"""The spill store (parity/spill.py) and the streamed check: results that wait on disk, and activations and
gradients compared tap by tap, must give exactly the figures of the in-memory path."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from parity.core import spill
from parity.core.spill import SpillDict, Spilled, SpillStore, materialize


def test_large_arrays_go_to_disk_small_ones_stay_and_reads_are_copies(tmp_path):
    store = SpillStore(min_bytes=1024, root=str(tmp_path))
    d = SpillDict(store)
    big = np.arange(1000, dtype=np.float64).reshape(10, 100)
    small = np.arange(4.0)
    d["big"], d["small"] = big, small
    assert isinstance(d.handle("big"), Spilled) and isinstance(d.handle("small"), np.ndarray)
    assert store.files == 1 and store.bytes_written == big.nbytes
    got = d["big"]
    np.testing.assert_array_equal(got, big)
    assert got.dtype == big.dtype and got is not d["big"]
    s = d["small"]
    s[0] = 99.0  # a reader may write to what it got: the stored value is untouched
    assert d["small"][0] == 0.0
    big[0, 0] = -1.0  # nor does the caller's later write reach the store
    assert d["big"][0, 0] == 0.0


def test_nested_dicts_lists_and_shared_handles(tmp_path):
    store = SpillStore(min_bytes=0, root=str(tmp_path))
    a = np.ones((3, 3))
    h = store.put(a)
    acts = SpillDict(store)
    acts.set_handle("conv", h)
    inputs = SpillDict(store)
    inputs.set_handle("bn", [h])  # a layer's input is the previous layer's output: stored once
    assert store.files == 1
    np.testing.assert_array_equal(inputs["bn"][0], acts["conv"])
    nested = SpillDict(store, {"layer": {"kernel": np.zeros((2, 2)), "bias": np.ones(2)}})
    assert isinstance(nested.handle("layer"), SpillDict)
    plain = materialize(nested)
    assert set(plain["layer"]) == {"kernel", "bias"} and plain["layer"]["bias"].tolist() == [1.0, 1.0]


def test_the_directory_is_removed_on_close_and_on_collection(tmp_path):
    store = SpillStore(min_bytes=0, root=str(tmp_path))
    store.put(np.zeros(10))
    path = store.dir
    assert os.listdir(path)
    store.close()
    assert not os.path.exists(path) and store.closed
    store2 = SpillStore(min_bytes=0, root=str(tmp_path))
    path2 = store2.dir
    del store2
    import gc

    gc.collect()
    assert not os.path.exists(path2)


def test_spilled_files_are_read_without_pickle(tmp_path):
    store = SpillStore(min_bytes=0, root=str(tmp_path))
    h = store.put(np.zeros(4))
    np.save(h.path, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a file swapped behind our back
    with pytest.raises(ValueError):
        h.load()


@pytest.mark.slow
def test_a_fully_spilled_check_gives_the_in_memory_figures_exactly(monkeypatch, tmp_path):
    """Every array spilled (threshold 0) vs none spilled (threshold huge): the same tensors, the same
    max |difference| to the last bit, and no spill directory left behind."""
    pytest.importorskip("keras")
    from parity.harness import check

    monkeypatch.setenv(spill.SPILL_DIR_ENV, str(tmp_path))
    figures = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(spill, "SPILL_MIN_BYTES", threshold)
        r = check("minixception", config={"input_shape": (32, 32, 1)}, batch=4)
        assert r.passed, r.summary_line()
        figures.append({(st.name, t.path): (t.max_abs, t.numel) for st in r.stages for t in st.tensors})
        spill.wait_removed()  # (a check that passed removes its directory on a thread of its own)
        assert os.listdir(tmp_path) == []
    assert figures[0].keys() == figures[1].keys() and len(figures[0]) > 300
    assert figures[0] == figures[1]


def test_keras_tap_layers_record_the_same_gradients_as_a_tape_on_the_tap_outputs():
    """The reference's activation gradients leave TensorFlow through identity layers with a custom gradient
    (no persistent tape): they equal ``tape.gradient(loss, [tap outputs])`` of a plain tap model."""
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    from parity.pairs import registry
    from parity.backends.keras_side import keras_dtype, keras_loss, run_reference, set_keras_weights
    from parity.core.spec import resolve

    spec = registry.get("minixception")
    cfg = spec.config(input_shape=(32, 32, 1))
    with keras_dtype("float64"):
        keras.utils.set_random_seed(0)
        model = resolve(spec.reference)(**cfg)
        run = run_reference(spec, config=cfg, dtype="float64", seed=0, batch=4, optimizer=spec.optimizer, steps=1,
                            stages={"forward_train", "gradients"}, model=model)
        set_keras_weights(model, run.weights)  # the run's (randomised BatchNorm) weights; it restored the model
        taps = [t for t in run.taps if t.ref]
        plain = keras.Model(model.inputs, [model.get_layer(t.ref).output for t in taps])
        with tf.GradientTape() as tape:
            outs = plain(tf.constant(run.inputs[0]), training=True)
            loss = keras_loss(keras.ops, keras, spec.loss, tf.constant(run.labels[0]), outs[-1],
                              spec.loss.reference_from_logits)
        grads = tape.gradient(loss, outs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    assert float(loss) == pytest.approx(run.loss, rel=1e-14)
    checked = 0
    for t, g in zip(taps, grads):
        if t.path in run.act_grads:
            g = np.asarray(g)  # the same sums in another order: agreement to rounding, relative to the scale
            np.testing.assert_allclose(run.act_grads[t.path], g, rtol=1e-12, atol=1e-12 * float(np.abs(g).max()))
            checked += 1
    assert checked >= 40


def test_a_reference_model_the_check_built_is_released_before_the_port_runs():
    """The Keras model (its weights, the tap model, the optimizer's slots) is garbage once the reference
    stages are done: for GOTURN that is 3 x 0.9 GB the port phase does not carry."""
    pytest.importorskip("keras")
    import dataclasses
    import weakref

    from parity.pairs import registry
    from parity.backends.keras_side import run_reference
    from parity.core.spec import resolve

    spec = registry.get("minixception")
    built = []

    def build(**cfg):
        m = resolve(spec.reference)(**cfg)
        built.append(weakref.ref(m))
        return m

    cfg = spec.config(input_shape=(32, 32, 1))
    run = run_reference(dataclasses.replace(spec, reference=build), config=cfg, dtype="float64", seed=0, batch=4,
                        optimizer=spec.optimizer, steps=1, stages={"forward_eval", "gradients", "step"})
    assert len(built) == 1 and built[0]() is None
    assert run.steps and run.param_grads  # the results outlive the model


# -- faults: SIGTERM, processes killed outright, a full disk -----------------------------------------------------
_SIGTERM_CHILD = """
import os, sys, time
import numpy as np
from parity.core.spill import SpillStore
store = SpillStore(min_bytes=0, root=sys.argv[1])
store.put(np.zeros(1000))
print(store.dir, flush=True)
try:
    time.sleep(60)
finally:
    store.close()
"""


def _child(tmp_path, code: str):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_removes_the_spill_directory_and_exits_143(tmp_path):
    """What CI runners, ``timeout`` and container stops send: the directory goes, as it does for Ctrl-C."""
    import signal

    proc = _child(tmp_path, _SIGTERM_CHILD)
    path = proc.stdout.readline().strip()
    assert os.path.isdir(path) and os.listdir(path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == spill.SIGTERM_EXIT == 143
    assert not os.path.exists(path) and os.listdir(tmp_path) == []


def test_a_new_store_removes_directories_of_processes_that_no_longer_exist(tmp_path):
    """SIGKILL (or power loss) leaves the directory; the next store on this host removes it. Directories of
    living processes, of other hosts, of other programs and without parity's marker stay."""
    import signal

    proc = _child(tmp_path, _SIGTERM_CHILD)
    dead = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert os.path.isdir(dead)
    alive = SpillStore(min_bytes=0, root=str(tmp_path))  # this process: alive
    other_host = tmp_path / f"{spill.SPILL_PREFIX}{proc.pid}-abc"
    other_host.mkdir()
    (other_host / spill.MARKER).write_text('{"host": "elsewhere", "pid": %d}' % proc.pid)
    no_marker = tmp_path / f"{spill.SPILL_PREFIX}{proc.pid}-xyz"
    no_marker.mkdir()
    foreign = tmp_path / "not-parity-123"
    foreign.mkdir()
    store = SpillStore(min_bytes=0, root=str(tmp_path))
    assert not os.path.exists(dead)
    assert os.path.isdir(alive.dir) and other_host.is_dir() and no_marker.is_dir() and foreign.is_dir()
    store.close()
    alive.close()


def test_a_full_disk_is_a_usage_error_naming_the_directory_and_the_size(tmp_path, monkeypatch):
    import errno

    from parity.core.errors import UsageError

    store = SpillStore(min_bytes=0, root=str(tmp_path))

    def full(path, a, allow_pickle=False):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spill.np, "save", full)
    with pytest.raises(UsageError) as info:
        store.put(np.zeros((1000, 1000)))
    msg = str(info.value)
    assert msg.startswith(f"spill directory {store.dir}: expected room for 8.0 MB more (0.0 MB written so far, ")
    assert "Received: No space left on device. Free disk space or set PARITY_SPILL_DIR" in msg
    assert "\n" not in msg
    assert os.listdir(store.dir) == [spill.MARKER]  # the partial file is gone
    store.close()
    assert os.listdir(tmp_path) == []


_CHECK_CHILD = """
import sys
from parity.core import spill
spill.SPILL_MIN_BYTES = 0  # every array to disk, so the directory is there to leave behind
from parity.cli import main
sys.exit(main(["check", "minixception", "--out", sys.argv[1] + "/report", "-q"]))
"""


def test_sigterm_during_a_check_leaves_no_spill_directory(tmp_path, monkeypatch):
    """The issue's scenario: ``parity check`` stopped by SIGTERM (a CI timeout, a container stop) while the
    reference's results wait on disk."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("keras")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spill_root = tmp_path / "spill"
    spill_root.mkdir()
    env = {**os.environ, spill.SPILL_DIR_ENV: str(spill_root), "PARITY_NO_CACHE": "1"}  # the Keras side runs
    proc = subprocess.Popen([sys.executable, "-c", _CHECK_CHILD, str(tmp_path)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    spilled = 0
    while time.time() < deadline and proc.poll() is None:
        spilled = sum(len(files) for _, _, files in os.walk(spill_root))
        if spilled > 20:
            break
        time.sleep(0.05)
    assert spilled > 20, "the check never spilled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == spill.SIGTERM_EXIT, err[-2000:]
    assert os.listdir(spill_root) == []
    assert "Traceback" not in err


_FRAMEWORK_CHILD = """
import os, signal, sys
import numpy as np
from parity.core.spill import SpillStore
store = SpillStore(min_bytes=0, root=sys.argv[1])
store.put(np.zeros(10))
print(store.dir, flush=True)

FRAMEWORK = '''
def framework_call():  # stands for TF code under a C function: any exception raised inside it is replaced
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        total = 0
        for i in range(10000):
            total += i
    except BaseException as exc:
        raise RuntimeError("Exception encountered when calling a layer") from exc
    print("framework call finished", flush=True)
'''
namespace = {"__name__": "tensorflow.python.util.stand_in", "os": os, "signal": signal}
exec(FRAMEWORK, namespace)
namespace["framework_call"]()
print("not reached", flush=True)
"""


def test_sigterm_inside_framework_code_exits_at_the_next_line_outside_it(tmp_path):
    """A signal handled inside TensorFlow/Keras code must not raise there (measured: a SystemExit raised in
    ``tf.nest`` became a SystemError, then Keras' AttributeError, and ``parity check`` ended with exit 3)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _FRAMEWORK_CHILD, str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == spill.SIGTERM_EXIT, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[1:] == ["framework call finished"], proc.stdout
    assert os.listdir(tmp_path) == []
    assert "Traceback" not in proc.stderr


def test_a_replaced_sigterm_exit_reaching_the_command_line_is_exit_143_not_an_internal_error(monkeypatch, capsys):
    from parity import cli

    def command(args):
        raise AttributeError("Exception encountered when calling ParityTap.call().")

    monkeypatch.setitem(cli.COMMANDS, "list", command)
    monkeypatch.setattr(spill._Sigterm, "received", True)
    assert cli.main(["list"]) == spill.SIGTERM_EXIT
    assert capsys.readouterr().err == "parity: stopped by SIGTERM\n"
    monkeypatch.setattr(spill._Sigterm, "received", False)
    assert cli.main(["list"]) == 3


# -- the writer thread (SpillStore(background=True)) -------------------------------------------------------------
def test_a_background_store_writes_a_copy_and_a_load_waits_for_it(tmp_path):
    store = SpillStore(min_bytes=0, root=str(tmp_path), background=True)
    a = np.arange(300_000, dtype=np.float64)
    h = store.put(a)
    a[:] = -1.0  # the caller's buffer changes once put returned (a TF/torch tensor's memory)
    np.testing.assert_array_equal(h.load(), np.arange(300_000, dtype=np.float64))
    handles = [store.put(np.full(10_000, float(i))) for i in range(20)]
    store.flush()
    assert all(h.pending.done.is_set() for h in handles)
    assert [float(h.load()[0]) for h in handles] == [float(i) for i in range(20)]
    assert store.files == 21
    store.close()
    assert os.listdir(tmp_path) == []


def test_a_background_write_on_a_full_disk_is_the_same_usage_error(tmp_path, monkeypatch):
    import errno

    from parity.core.errors import UsageError

    store = SpillStore(min_bytes=0, root=str(tmp_path), background=True)

    def full(path, a, allow_pickle=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spill.np, "save", full)
    h = store.put(np.zeros((100, 100)))
    with pytest.raises(UsageError, match=r"expected room for 0\.1 MB more .*No space left on device"):
        h.load()
    with pytest.raises(UsageError, match="No space left on device"):
        store.flush()
    store.close()
    assert os.listdir(tmp_path) == []


def test_closing_a_background_store_drops_its_queued_writes_and_its_directory(tmp_path, monkeypatch):
    import threading

    from parity.core.errors import UsageError

    store = SpillStore(min_bytes=0, root=str(tmp_path), background=True)
    gate = threading.Event()
    save = spill.np.save
    monkeypatch.setattr(spill.np, "save", lambda path, a, allow_pickle=False: (gate.wait(), save(path, a)))
    first = store.put(np.zeros(1000))
    queued = [store.put(np.ones(1000)) for _ in range(5)]
    threading.Timer(0.2, gate.set).start()
    store.close()
    assert os.listdir(tmp_path) == []
    assert first.pending.done.is_set()
    with pytest.raises(UsageError, match="was not written"):
        queued[-1].load()


def test_parity_background_0_writes_in_the_caller(tmp_path, monkeypatch):
    from parity.core import background

    monkeypatch.setenv(background.BACKGROUND_ENV, "0")
    store = SpillStore(min_bytes=0, root=str(tmp_path), background=True)
    h = store.put(np.zeros(1000))
    assert h.pending is None and os.path.exists(h.path)
    store.close()


def test_closing_without_waiting_removes_the_directory_on_a_thread_and_restores_sigterm(tmp_path):
    """``close(wait=False)`` (a check that passed): the SIGTERM handler is given back at once, on the calling
    thread; the directory goes on a non-daemon thread (the interpreter waits for it), and wait_removed joins it.
    A loaded array is the caller's own: writing to it changes neither the file nor a later load."""
    before = signal.getsignal(signal.SIGTERM)
    store = spill.SpillStore(root=str(tmp_path), background=True)
    assert signal.getsignal(signal.SIGTERM) == spill._Sigterm.handle
    h = store.put(np.arange(1 << 18, dtype=np.float64))
    a = h.load()
    a[0] = -1.0
    assert h.load()[0] == 0.0
    path = store.dir
    store.close(wait=False)
    assert signal.getsignal(signal.SIGTERM) == before and store.closed
    assert [t for t in spill._REMOVALS if not t.daemon] == spill._REMOVALS
    spill.wait_removed()
    assert not os.path.exists(path) and os.listdir(tmp_path) == [] and path not in spill._Sigterm.dirs
    assert a[0] == -1.0 and a[1] == 1.0
