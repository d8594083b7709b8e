"""``parity convert``: Keras weight files -> a torch state_dict (safetensors / .pt), self-checked."""
from __future__ import annotations

import numpy as np
import pytest

from parity.cli import main


@pytest.fixture(scope="module")
def keras_model():
    """mini_XCEPTION with every variable random (BatchNorm too: a fresh BN would be the identity)."""
    from parity.core.env import import_tensorflow

    keras = import_tensorflow()
    from reference_keras.minixception import mini_xception

    keras.utils.set_random_seed(3)
    model = mini_xception()
    rng = np.random.default_rng(3)
    for v in model.weights:
        shape = tuple(v.shape)
        a = rng.uniform(0.5, 2.0, shape) if "variance" in v.path else rng.normal(0, 0.3, shape)
        v.assign(a.astype("float32"))
    return model


@pytest.fixture(scope="module")
def files(keras_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    keras_model.save_weights(str(d / "mx.weights.h5"))
    keras_model.save(str(d / "mx_full.h5"))  # legacy full-model HDF5 (model_weights group)
    return d


def _load(path: str):
    import torch

    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: torch.from_numpy(v) for k, v in load_file(path).items()}
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("src,dst", [("mx.weights.h5", "port.safetensors"), ("mx_full.h5", "port.pt")])
def test_convert_then_load_matches_keras(keras_model, files, tmp_path, capsys, src, dst):
    import torch

    from ported_torch.minixception import mini_xception

    out = str(tmp_path / dst)
    assert main(["convert", str(files / src), "--pair", "minixception", "-o", out, "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("PASSED convert minixception: 80 arrays mapped, round trip bit-exact")
    assert "conversion: keras->torch: 80 mapped, 0 missing, 0 unexpected, 0 shape mismatches" in lines
    assert "round trip torch->keras: 80/80 arrays bit-exact" in lines
    assert "  - Conv2D kernel HWIO -> OIHW (transpose 3,2,0,1)" in lines

    state = _load(out)
    assert state["base.bn1.num_batches_tracked"].dtype == torch.int64
    port = mini_xception()
    port.load_state_dict(state, strict=True)
    port.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    ref = np.asarray(keras_model(x, training=False))
    with torch.no_grad():
        got = port(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).softmax(1).numpy()
    # float32 both sides, two frameworks' kernels: measured 4.5e-7 absolute on probabilities up to 0.45
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_bad_weight_file_exit_2_one_line(tmp_path, capsys):
    bad = tmp_path / "model.h5"
    bad.write_text("not hdf5")
    assert main(["convert", str(bad), "--pair", "minixception", "-o", str(tmp_path / "p.safetensors"), "-q"]) == 2
    out, err = capsys.readouterr()
    assert err == (f"parity: error: --weights {bad}: expected an HDF5 file with a 'model_weights' group or Keras 3 "
                   "'.weights.h5' layout. Received: a file without an HDF5 signature. Pass a file saved by "
                   "model.save() or model.save_weights().\n")
    assert out == "" and not (tmp_path / "p.safetensors").exists()


def test_bad_output_name_exit_2(files, tmp_path, capsys):
    from parity.core.errors import UsageError
    from parity.io.convert import _output_format

    assert main(["convert", str(files / "mx.weights.h5"), "--pair", "minixception", "-o",
                 str(tmp_path / "p.bin"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity: error: ") and len(err.strip().splitlines()) == 1
    assert "p.bin" in err and ".safetensors or .pt" in err
    with pytest.raises(UsageError) as info:  # the library call says the same, for callers outside the CLI
        _output_format(str(tmp_path / "p.bin"))
    assert str(info.value) == (f"--output {tmp_path / 'p.bin'}: expected a file name ending in .safetensors or "
                               ".pt. Received: '.bin'. Name it port.safetensors or port.pt.")


def test_weights_of_another_config_exit_2(files, tmp_path, capsys):
    """A 7-class file converted for a 2-class model: the loader's report says what differs."""
    assert main(["convert", str(files / "mx.weights.h5"), "--pair", "minixception", "--config", "num_classes=2",
                 "-o", str(tmp_path / "p.pt"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"parity: error: --weights {files / 'mx.weights.h5'}: expected weights matching the "
                          "reference model. Received: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("port,why", [
    ("tests.planted_ports:conv_bias", "FAILED convert minixception: conversion: missing base.conv1.bias"),
    ("tests.planted_ports:bn_eps_1e5", "FAILED convert minixception: forward: Mismatched elements"),
])
def test_self_checks_fail_and_write_nothing(files, tmp_path, port, why):
    """A port the weights do not fit (conv biases) fails the strict conversion; a port with another BN eps
    converts bit-exactly but fails the forward self-check. Nothing is written either way."""
    import dataclasses

    from parity.pairs import registry
    from parity.io.convert import convert

    spec = dataclasses.replace(registry.get("minixception"), port=port)
    out = tmp_path / "p.safetensors"
    lines, ok = convert(spec, str(files / "mx.weights.h5"), str(out))
    assert not ok and lines[-1].startswith(why), lines[-1]
    assert lines[-1].endswith("(nothing written)") and not out.exists()


def _with_negative_variance(src, dst, layer="block1_sepconv1_bn"):
    """A Keras 3 ``.weights.h5`` copy with one BatchNorm moving_variance entry set to -1."""
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for key in f["layers"]:
            vars_ = f["layers"][key]["vars"]
            if vars_.attrs.get("name") == layer:
                a = np.array(vars_["3"])  # gamma, beta, moving_mean, moving_variance
                a[0] = -1.0
                vars_["3"][...] = a
                return dst
    raise AssertionError(f"{layer} not in {src}")


def test_negative_batchnorm_variance_is_refused_by_name_and_nothing_is_written(files, tmp_path, capsys):
    """Eval-mode BatchNorm of a negative variance is NaN on both sides, which must never read as "max|Δ| 0":
    the weights file's report names the variance, exit 2, one line, no file."""
    bad = _with_negative_variance(files / "mx.weights.h5", tmp_path / "negvar.weights.h5")
    out = tmp_path / "p.safetensors"
    assert main(["convert", str(bad), "--pair", "minixception", "-o", str(out), "-q"]) == 2
    std, err = capsys.readouterr()
    assert err.startswith(f"parity: error: --weights {bad}: expected weights matching the reference model. "
                          "Received: invalid block1_sepconv1_bn/moving_variance: 1 of "), err
    assert "negative (min -1)" in err and len(err.strip().splitlines()) == 1 and "max|Δ| 0" not in std + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negvar.weights.h5"]


@pytest.mark.parametrize("dst", ["port.pt", "port.safetensors"])
def test_outputs_are_replaced_atomically_with_the_umask_mode_never_through_a_symlink(files, tmp_path, capsys, dst):
    import os

    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    out = tmp_path / dst
    out.symlink_to(target)
    old = os.umask(0o022)
    try:
        assert main(["convert", str(files / "mx.weights.h5"), "--pair", "minixception", "-o", str(out), "-q"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert target.read_text() == "keep me"
    assert not out.is_symlink() and (out.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dst, "victim.txt"])  # no temporary left
    assert len(_load(str(out))) > 80


def test_a_directory_output_is_refused_up_front(files, tmp_path, capsys):
    from parity.core.errors import UsageError
    from parity.io.convert import _output_format

    out = tmp_path / "out.pt"
    out.mkdir()
    assert main(["convert", str(files / "mx.weights.h5"), "--pair", "minixception", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity: error: ") and "Received: a directory" in err, err
    assert list(out.iterdir()) == []
    with pytest.raises(UsageError, match=r"^--output .*out\.pt: expected a file name\. Received: a directory\."):
        _output_format(str(out))


def test_a_non_finite_forward_fails_and_never_reads_as_max_delta_0(files, tmp_path):
    """The forward self-check judges finiteness before differences: NaN on one (or both) sides is a failure
    naming the side, never "max|Δ| 0 (scale 0)"."""
    import dataclasses

    from parity.io.convert import convert
    from parity.pairs import registry
    from ported_torch.minixception import mini_xception

    def nan_port(**cfg):
        m = mini_xception(**cfg)
        forward = m.forward
        m.forward = lambda x: forward(x) * float("nan")
        return m

    spec = dataclasses.replace(registry.get("minixception"), port=nan_port)
    out = tmp_path / "p.safetensors"
    lines, ok = convert(spec, str(files / "mx.weights.h5"), str(out))
    assert not ok and not out.exists()
    forward = next(line for line in lines if line.startswith("forward (float64, eval"))
    assert "non-finite output on" in forward and "(port 14/14 values NaN or inf)" in forward, forward
    assert "max|Δ|" not in forward
    assert lines[-1].startswith("FAILED convert minixception: forward: non-finite output on") and \
        lines[-1].endswith("(nothing written)")
