"""``parity record`` / ``parity replay`` of your own models whose alignment is more than one module per layer: the
trace stores the port as the alignment saw it (module groups, aliases, several inputs packed, several outputs, a
Conv1d fed NCL) and the whole loss (several outputs' parts, a port returning probabilities) as plain data, and
replay gives the live check's verdict and numbers exactly. Before, each of these replayed as FAILED (a two-input
port called with one input, a separable group 'not found', a port ending in softmax trained as a double softmax)
or crashed (exit 3 on a tuple of outputs)."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import json

import pytest

from parity.cli import main
from parity.harness import check
from parity.io import trace
from parity.user.pair import spec_from_user_models

pytest.importorskip("keras")
pytest.importorskip("torch")

ZOO = "benchmarks.user_zoo"
PAIRS = {
    "two inputs": (f"{ZOO}:keras_two_input", f"{ZOO}:port_two_input"),
    "separable group + Conv1d NCL + F.pad": (f"{ZOO}:keras_seq1d", f"{ZOO}:port_seq1d_modules"),
    "two outputs": ("tests.parity.user_multi_output_models:keras_two_heads",
                    "tests.parity.user_multi_output_models:port"),
    "port returns probabilities": (f"{ZOO}:keras_mlp", f"{ZOO}:port_mlp_probabilities"),
    "transposed conv cropped": (f"{ZOO}:keras_encoder_decoder", f"{ZOO}:port_unet_negative_pad"),
}


def _numbers(result):
    return [(s.name, s.passed, [(t.path, t.max_abs, t.mismatched) for t in s.tensors]) for s in result.stages]


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_replay_of_a_user_pair_gives_the_live_check_s_numbers(tmp_path, case):
    ref, port = PAIRS[case]
    live = check(spec_from_user_models(ref, port))
    assert live.passed, str(live)
    path = str(tmp_path / "t.safetensors")
    trace.record(spec_from_user_models(ref, port), path, port=port)
    replayed = trace.replay(path, port=port)
    assert replayed.passed, str(replayed)
    assert _numbers(replayed) == _numbers(live)


@pytest.fixture(scope="module")
def two_input_trace(tmp_path_factory):
    ref, port = PAIRS["two inputs"]
    path = str(tmp_path_factory.mktemp("t") / "two.safetensors")
    trace.record(spec_from_user_models(ref, port), path, port=port, stages="forward_eval")
    return path


def _with_meta(src, dst, edit):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(src, framework="numpy") as f:
        md = dict(f.metadata())
    body = json.loads(md[trace.META_KEY])
    edit(body["meta"])
    md[trace.META_KEY] = json.dumps(body)
    save_file(load_file(src), dst, metadata=md)
    return dst


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["port_view"]["aliases"].update({"x": ["exec", "os", "system"]}), "aliases"),
    (lambda m: m["port_view"]["slots"][0].update(start=7), "consecutive slots"),
    (lambda m: m["port_view"]["groups"].update({"g": ["a;b", "c"]}), "groups"),
    (lambda m: m["loss_spec"].update(port_probabilities="yes"), "port_probabilities as true/false"),
])
def test_a_tampered_port_view_is_one_line_exit_2(two_input_trace, tmp_path, capsys, edit, says):
    bad = _with_meta(two_input_trace, str(tmp_path / "bad.safetensors"), edit)
    code = main(["replay", bad, "--port", PAIRS["two inputs"][1], "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and "Traceback" not in err[0], err


def test_a_port_without_the_recorded_modules_is_named(tmp_path, capsys):
    ref, port = PAIRS["separable group + Conv1d NCL + F.pad"]
    path = str(tmp_path / "seq.safetensors")
    trace.record(spec_from_user_models(ref, port), path, port=port, stages="forward_eval")
    code = main(["replay", path, "--port", f"{ZOO}:port_mlp", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "expected the port the trace was aligned with" in err, err
