"""Every reader of an outside file, fed hostile or broken input: exit 2 through the CLI, one line on stderr, no
traceback, nothing executed, nothing allocated beyond what the file could hold, no file left behind (no output,
no temporary, no spill directory).

Readers: reference traces (``parity replay``), Keras weights (``.h5``, ``.weights.h5``, ``.keras``: ``parity
convert`` / ``--weights``), Caffe weights (``.npy`` pickled dicts, ``.caffemodel``). A trace is untrusted like a
weights file: it may only *name* a registered pair; the code replay runs comes from the command line."""
from __future__ import annotations

import json
import os
import re
import struct
import time
import zipfile

import h5py
import numpy as np
import pytest

from parity.cli import main
from weight_converters.caffe import read_caffe_weights
from weight_converters.caffemodel import read_caffemodel
from weight_converters.npy_safe import read_caffe_npy

SCHEMA = {"schema": "parity.io.trace/1"}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory, a spill root and a marker file a payload would create if it ran."""
    work, spill = tmp_path / "work", tmp_path / "spill"
    work.mkdir()
    spill.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PARITY_SPILL_DIR", str(spill))
    return tmp_path


def _refused(capsys, args, sandbox, *, contains: str = "", output=None):
    """Run the CLI; assert exit 2, one ``parity: error:`` line, no traceback, nothing run, nothing left."""
    t0 = time.perf_counter()
    rc = main(args)
    secs = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parity: error: "), err
    assert "Traceback" not in out + err
    assert contains in err, err
    assert not (sandbox / "marker").exists(), "the payload ran"
    assert os.listdir(sandbox / "spill") == [] and os.listdir(sandbox / "work") == []
    assert not [p for p in sandbox.rglob("*") if p.name.endswith(".tmp")]
    if output is not None:
        assert not os.path.exists(output)
    return err, secs


# -- traces -------------------------------------------------------------------------------------------------------
def _body(**meta) -> dict:
    base = {"pair": "minixception", "registered": True, "config": {}, "dtype": "float64", "seed": 0, "batch": 2,
            "steps": 1, "stages": ["forward_eval"], "optimizer": {"kind": "sgd", "lr": 0.01}}
    base.update(meta)
    return {"meta": base, "taps": [], "param_refs": [], "structure": {}, "model_params": {}, "l2": {}, "bn_n": {},
            "loss": None, "seconds": {}, "inputs": [{"__array__": "x"}], "labels": [], "weights": {},
            "eval_acts": {}, "eval_inputs": {}, "train_acts": {}, "bn_stats": {}, "act_grads": {}, "param_grads": {},
            "steps": []}


def _trace(path, body=None, metadata_text=None):
    from safetensors.numpy import save_file

    text = metadata_text if metadata_text is not None else json.dumps(body)
    save_file({"x": np.zeros((2, 3))}, str(path), metadata={**SCHEMA, "parity.io.trace": text})
    return path


def _nested(depth: int) -> str:
    body = _body()
    return json.dumps(body)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"


TRACES = {
    # a user pair's port named by the file: never imported, never called
    "port-os-system": lambda m: _trace(m.parent / "t.safetensors", _body(
        pair="evil", registered=False, port="os:system", config={"command": f"touch {m}"})),
    # a registered pair's name with a config aimed at another builder's signature
    "registered-name-shell-config": lambda m: _trace(m.parent / "t.safetensors", _body(
        port="os:system", config={"command": f"touch {m}"})),
    "config-wrong-type": lambda m: _trace(m.parent / "t.safetensors", _body(config={"num_classes": "abc"})),
    "config-object": lambda m: _trace(m.parent / "t.safetensors", _body(config={"num_classes": {"py/object": 1}})),
    "nested-900": lambda m: _trace(m.parent / "t.safetensors", metadata_text=_nested(900)),
    "dtype-not-a-float": lambda m: _trace(m.parent / "t.safetensors", _body(dtype="object")),
    "stage-unknown": lambda m: _trace(m.parent / "t.safetensors", _body(stages=["forward_eval", "rm -rf /"])),
    "optimizer-lr-text": lambda m: _trace(m.parent / "t.safetensors", _body(optimizer={"kind": "sgd", "lr": "1"})),
    "metadata-not-json": lambda m: _trace(m.parent / "t.safetensors", metadata_text="{not json"),
    "header-lies": lambda m: _raw(m.parent / "t.safetensors", json.dumps(
        {"x": {"dtype": "F64", "shape": [1 << 40], "data_offsets": [0, 1 << 43]}}).encode(), b"\0" * 64),
    "header-length-lies": lambda m: _write(m.parent / "t.safetensors", struct.pack("<Q", 1 << 60) + b"{}"),
    "empty": lambda m: _write(m.parent / "t.safetensors", b""),
    "text": lambda m: _write(m.parent / "t.safetensors", b"not a trace\n"),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _raw(path, header: bytes, data: bytes):
    header += b" " * (-len(header) % 8)
    return _write(path, struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize("case", sorted(TRACES))
def test_hostile_trace_is_refused(sandbox, capsys, case):
    path = TRACES[case](sandbox / "marker")
    err, secs = _refused(capsys, ["replay", str(path), "-q"], sandbox, contains=f"replay {path}")
    assert secs < 30


def test_the_crafted_trace_runs_nothing_in_a_separate_process(sandbox):
    """The issue's reproduction exactly: the installed entry point, a fresh process."""
    import subprocess
    import sys

    path = TRACES["port-os-system"](sandbox / "marker")
    exe = os.path.join(os.path.dirname(sys.executable), "parity")
    p = subprocess.run([exe, "replay", str(path)], capture_output=True, text=True, timeout=120, cwd=sandbox / "work")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"parity: error: replay {path}: expected --port")
    assert "Traceback" not in p.stderr and not (sandbox / "marker").exists()


def test_a_trace_names_a_pair_but_the_port_of_a_user_pair_comes_from_the_command_line(sandbox, capsys):
    path = TRACES["port-os-system"](sandbox / "marker")
    err, _ = _refused(capsys, ["replay", str(path), "-q"], sandbox)
    assert "which is not a registered pair. Received: no --port." in err
    assert "os:system" not in err  # the file's choice is not even suggested


# -- Keras weights ------------------------------------------------------------------------------------------------
def _h5_huge(path):
    """A Keras 3 layout whose one dataset declares 512 TiB (no storage allocated: the file is a few KB)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "base_conv1"
        g.create_dataset("0", shape=(1 << 43, 8), dtype="f8")
        f.create_group("vars")
    return path


def _h5_strings(path):
    with h5py.File(path, "w") as f:
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "base_conv1"
        g.create_dataset("0", data=np.array(["__import__('os')"] * 4, dtype=h5py.string_dtype()))
        f.create_group("vars")
    return path


def _keras_zip_bomb(path):
    """A ``.keras`` archive of ~0.3 MB whose weights member expands to 256 MiB of zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(256):
                member.write(chunk)
        zf.writestr("config.json", "{}")
    return path


def _truncated_h5(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(10000.0))
    data = path.read_bytes()
    return _write(path, data[: len(data) // 3])


WEIGHTS = {
    "h5-declares-512TiB": ("huge.weights.h5", _h5_huge, "more than a"),
    "h5-string-dataset": ("strings.weights.h5", _h5_strings, "not numbers"),
    "keras-zip-bomb": ("bomb.keras", _keras_zip_bomb, "expands to"),
    "h5-truncated": ("cut.h5", _truncated_h5, "truncated or corrupt"),
    "not-hdf5": ("text.h5", lambda p: _write(p, b"conv1: weights\n"), "without an HDF5 signature"),
    "empty": ("empty.h5", lambda p: _write(p, b""), "empty"),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_hostile_keras_weights_are_refused(sandbox, capsys, case):
    name, make, contains = WEIGHTS[case]
    path = make(sandbox / name)
    out = sandbox / "out" / "port.safetensors"
    out.parent.mkdir()
    err, secs = _refused(capsys, ["convert", str(path), "--pair", "minixception", "-o", str(out), "-q"], sandbox,
                         contains=contains, output=out)
    assert str(path) in err
    assert os.listdir(out.parent) == []


def test_the_zip_bomb_is_refused_before_it_is_expanded(tmp_path):
    """Its member's declared size is over the limit tied to the archive's size: refused without decompressing."""
    from weight_converters.h5 import WeightFileError, read_keras_h5

    path = _keras_zip_bomb(tmp_path / "bomb.keras")
    t0 = time.perf_counter()
    with pytest.raises(WeightFileError, match=r"expands to 268 MB, more than 67 MB \(32x the archive\)"):
        read_keras_h5(path)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_pipes_and_directories_are_refused_at_once_by_every_reader(tmp_path, kind):
    """Opening a named pipe for reading waits for a writer forever: each reader checks it has a regular file."""
    from weight_converters.h5 import read_keras_h5

    path = tmp_path / "weights"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    for reader in (read_keras_h5, read_caffe_weights, read_caffe_npy, read_caffemodel):
        t0 = time.perf_counter()
        with pytest.raises(ValueError) as info:
            reader(path)
        assert time.perf_counter() - t0 < 1.0
        msg = str(info.value)
        assert "\n" not in msg and ("named pipe" if kind == "fifo" else "a directory") in msg, (reader, msg)


def test_pipes_and_directories_as_traces_are_refused(tmp_path):
    from parity.core.errors import UsageError
    from parity.io.trace import load_trace

    fifo, folder = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, what in ((fifo, "a named pipe (FIFO)"), (folder, "a directory")):
        with pytest.raises(UsageError, match=rf"Received: {re.escape(what)}\."):
            load_trace(str(path))


# -- Caffe weights ----------------------------------------------------------------------------------------------
def _npy_with(path, pickled: bytes):
    """An ``.npy`` whose object-array payload is the given pickle bytes (what a hostile file holds)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(pickled)
    return path


PICKLES = {
    # bytearray(2**30): a 20-byte pickle asking for 1 GiB
    "bytearray-of-1GiB": (b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00@\x85R.", "a bytearray built from int"),
    # BINBYTES8 / BYTEARRAY8 declaring 1 GiB that the file does not hold (CPython allocates before reading)
    "bytes8-length-lies": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 30) + b"abc.", "truncated or corrupt"),
    "bytearray8-length-lies": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 30) + b"abc.", "truncated or corrupt"),
    # numpy's own reconstruction asked for a 1 GiB array
    "reconstruct-1GiB": (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00@\x85"
                         b"C\x01b\x87R.", "an array of shape (1073741824,)"),
    "ndarray-called": (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00@\x85\x85R.", "numpy.ndarray called directly"),
    "os-system": (b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.", "references posix.system"),
}


@pytest.mark.parametrize("case", sorted(PICKLES))
def test_hostile_npy_pickles_are_refused_before_they_allocate_or_run(tmp_path, case):
    import tracemalloc

    payload, contains = PICKLES[case]
    path = _npy_with(tmp_path / "w.npy", payload)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            read_caffe_weights(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"--weights {path}: expected a .npy holding a dict") and contains in msg
    assert peak < 16 << 20, f"{peak / 1e6:.0f} MB traced while refusing a {path.stat().st_size}-byte file"


def test_hostile_npy_through_the_cli(sandbox, capsys):
    path = _npy_with(sandbox / "tracker.npy", PICKLES["bytearray-of-1GiB"][0])
    _refused(capsys, ["check", "goturn", "--fast", "--weights", str(path), "--stages", "structure", "-q",
                      "--out", str(sandbox / "report")], sandbox, contains=f"--weights {path}")
    assert not (sandbox / "report").exists()


def test_an_honest_npy_still_reads_in_every_pickle_protocol(tmp_path):
    import pickle

    weights = {"conv1": [np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), np.ones(2, np.float32)]}
    for protocol in (2, 3, 4, 5):
        arr = np.empty((), dtype=object)
        arr[()] = weights
        path = tmp_path / f"p{protocol}.npy"
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(arr, f, protocol=protocol)
        got = read_caffe_npy(path)
        assert got["conv1"][0].tobytes() == weights["conv1"][0].tobytes(), protocol

