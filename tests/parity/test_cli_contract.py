"""The command line as a contract, run as users run it (a subprocess):

- exit 2 for every bad value of every argument: one line on stderr (``parity: error: …``), no traceback, nothing
  written, no framework imported, and fast;
- exit 2 naming the user's function when a builder the user handed over raises or returns the wrong thing;
- exit 3 for a bug in parity itself: one line saying so and where the traceback was written;
- exit 1 only for a FAILED verdict; ``--json`` makes stdout exactly one JSON document;
- ``PASSED``/``FAILED`` only for verdicts; ``--help`` of each command lists what applies; ``--version``.

The user functions named on the command line below live in this module (``tests.parity.test_cli_contract:…``).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from parity import cli
from parity.core import options
from parity.pairs import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = "tests.parity.test_cli_contract"
FRAMEWORKS = ("torch", "tensorflow", "keras")

# the runner reports which frameworks the command imported (into a file: stderr must stay one line)
RUNNER = ("import json, os, sys\nfrom parity.cli import main\nrc = main(sys.argv[1:])\n"
          "open(os.environ['PARITY_TEST_MODULES'], 'w').write(json.dumps(sorted(set(sys.modules) & set(%r))))\n"
          "sys.exit(rc)\n" % (FRAMEWORKS,))


# -- user functions named on the command line ------------------------------------------------------------------
def port_builder_raises(**config):
    raise RuntimeError("boom in the user's port builder")


def reference_builder_raises(**config):
    raise RuntimeError("boom in the user's reference builder")


def port_returns_a_string(**config):
    return "not a module"


def port_builder_needs_depth(depth, **config):  # a required argument no config supplies
    raise AssertionError("never called")


# -- running the CLI ---------------------------------------------------------------------------------------------
def run_cli(tmp_path, *argv, env=None, timeout=600):
    """Run ``parity ARGV`` in a fresh process with ``tmp_path/work`` as the working directory."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    mods = tmp_path / "modules.json"
    e = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_TEST_MODULES": str(mods), "OMP_NUM_THREADS": "1",
         "COLUMNS": "200"}
    e.pop("PARITY_DEBUG", None)
    e.update(env or {})
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RUNNER, *argv], cwd=work, env=e, capture_output=True, text=True,
                       timeout=timeout)
    p.seconds = time.perf_counter() - t
    p.frameworks = json.loads(mods.read_text()) if mods.exists() else None
    p.work = work
    return p


def assert_usage_error(p, *needles):
    """Exit 2, one line on stderr, no traceback, nothing on stdout; the line contains every needle."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-4000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("parity: error: "), lines[0]
    assert "Traceback" not in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "a_file").write_text("x")
    (d / "a_file.keras").write_text("x")
    (d / "empty.h5").write_bytes(b"")
    (d / "a_dir").mkdir()
    os.mkfifo(d / "pipe.h5")
    return d


CHK = ("check", "minixception")
BAD_INPUTS = [
    # check: every option
    ((*CHK, "--batch", "0"), "--batch: expected >= 2"),
    ((*CHK, "--batch", "-1"), "--batch: expected >= 2"),
    ((*CHK, "--stages", "structure", "--batch", "0"), "--batch: expected an integer >= 1"),
    ((*CHK, "--batch", "two"), "--batch"),
    ((*CHK, "--stages", ","), "--stages: expected a comma list"),
    ((*CHK, "--stages", ""), "names no stage"),
    ((*CHK, "--stages", "forward"), "Received: forward."),
    ((*CHK, "--stages", "trajectory", "--steps", "1"), "--stages trajectory: expected --steps N with N >= 2"),
    ((*CHK, "--steps", "0"), "--steps: expected an integer >= 1"),
    ((*CHK, "--seed", "-1"), "--seed: expected an integer in [0, 4294967296)"),
    ((*CHK, "--seed", "x"), "--seed"),
    ((*CHK, "--dtype", "float16"), "--dtype"),
    ((*CHK, "--device", "gpu"), "--device: expected 'cpu' or 'cuda[:N]'"),
    ((*CHK, "--optimizer", "rmsprop"), "--optimizer: expected one of"),
    ((*CHK, "--config", "num_classes=abc"), "--config num_classes: expected a positive integer"),
    ((*CHK, "--config", "num_classes=0"), "--config num_classes"),
    ((*CHK, "--config", "input_shape=(64,64)"), "--config input_shape: expected 3 values"),
    ((*CHK, "--config", "bogus=1"), "--config bogus: expected one of the arguments of"),
    ((*CHK, "--config", "novalue"), "--config: expected KEY=VALUE"),
    ((*CHK, "--config", "=1"), "--config: expected KEY=VALUE"),
    ((*CHK, "--weights", "{F}/missing.h5"), "expected a weights file. Received: no such file."),
    ((*CHK, "--weights", "{F}/a_dir"), "Received: a directory"),
    ((*CHK, "--weights", "{F}/pipe.h5"), "Received: a named pipe"),
    ((*CHK, "--weights", "{F}/empty.h5"), "Received: an empty file"),
    ((*CHK, "--out", "{F}/a_file"), "--out", "Received: an existing file"),
    ((*CHK, "--out", "{F}/a_file/sub"), "is a file"),
    ((*CHK, "--out", "r/{nope}"), "--out r/{nope}: expected fields among {pair}, {run_id}, {timestamp}"),
    ((*CHK, "--out", "r/{"), "--out r/{"),
    ((*CHK, "--port", "nocolon"), "--port: expected MODULE:FUNCTION"),
    ((*CHK, "--port", "no_such_module_x:build"), "no module named 'no_such_module_x'"),
    ((*CHK, "--port", "benchmarks.user_models:nope"), "no name 'nope'", "torch_cnn"),
    ((*CHK, "--port", "os:getcwd"), "--port os:getcwd: expected a builder taking the pair's config"),
    ((*CHK, "--port", f"{HERE}:port_builder_needs_depth"), "required argument depth"),
    ((*CHK, "--reference", "no_such_module_x:build"), "--reference no_such_module_x:build"),
    ((*CHK, "--input-shape", "64,64,1"), "--input-shape: expected only with your own models"),
    ((*CHK, "--loss", "mse"), "--loss: expected only with your own models"),
    ((*CHK, "--custom-objects", "os"), "--custom-objects: expected only with your own models"),
    ((*CHK, "--port-optimizer", "os:getcwd"), "--port-optimizer: expected only with your own models"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--port-loss", "benchmarks.user_models:nope"), "--port-loss benchmarks.user_models:nope", "no name 'nope'"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--port-optimizer", "benchmarks.user_models:torch_cnn", "--optimizer", "adam"), "--optimizer: expected no parity "
     "optimizer with --port-optimizer"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--custom-objects", "os"), "--custom-objects os: expected only with a saved --reference model"),
    (("check", "--reference", "{F}/a_file.keras", "--port", "benchmarks.user_models:torch_cnn",
      "--custom-objects", "no_such_layers_x"), "--custom-objects no_such_layers_x: expected an importable module"),
    (("record", "--reference", "{F}/a_file.keras", "--port", "benchmarks.user_models:torch_cnn", "-o", "t.safetensors",
      "--custom-objects", "bad name"), "--custom-objects: expected a module name"),
    ((*CHK, "--bogus-flag"), "unrecognized arguments"),
    (("check", "nosuchpair"), "unknown pair 'nosuchpair'"),
    (("check",), "check: expected a pair NAME"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn"), "Received: --reference only"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--input-shape", "64,0,1"), "--input-shape: expected a per-sample shape of positive integers"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--loss", "hinge"), "--loss: expected one of"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--align", "nonsense"), "--align: expected REF_LAYER=PORT.MODULE.PATH"),
    (("check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "benchmarks.user_models:torch_cnn",
      "--optimizer", "rmsprop"), "--optimizer: expected one of adam, sgd"),
    (("bogus",), "invalid choice"),
    ((), "expected a command"),
    # record
    (("record", "minixception"), "-o/--output"),
    (("record", "minixception", "-o", "{F}/a_dir"), "Received: a directory"),
    (("record", "minixception", "-o", "{F}/t.npz"), "-o", ".safetensors"),
    (("record", "minixception", "-o", "t.safetensors", "--device", "cpu"), "unrecognized arguments"),
    (("record", "minixception", "-o", "t.safetensors", "--batch", "0"), "--batch"),
    (("record", "--port", "benchmarks.user_models:torch_cnn", "-o", "t.safetensors"), "Received: --port only"),
    # replay
    (("replay", "{F}/missing.safetensors"), "replay", "expected a trace file written by `parity record`"),
    (("replay", "{F}/pipe.h5"), "Received: a named pipe"),
    (("replay", "{F}/a_file", "--device", "tpu"), "--device"),
    (("replay", "{F}/a_file", "--stages", ","), "--stages"),
    (("replay", "{F}/a_file", "--port", "x"), "--port: expected MODULE:FUNCTION"),
    (("replay", "{F}/a_file", "--out", "{bad}"), "--out"),
    # convert
    (("convert", "{F}/missing.h5", "--pair", "minixception", "-o", "p.pt"), "expected a weights file"),
    (("convert", "{F}/a_file", "--pair", "nosuch", "-o", "p.pt"), "unknown pair 'nosuch'"),
    (("convert", "{F}/a_file", "--pair", "minixception", "-o", "p.bin"), ".safetensors or .pt"),
    (("convert", "{F}/a_file", "--pair", "minixception", "-o", "p.pt", "--config", "bogus=1"),
     "--config bogus"),
    (("convert", "{F}/a_file", "-o", "p.pt"), "--pair"),
    # list
    (("list", "--bogus"), "unrecognized arguments"),
]
"""(argv, what the one line must contain) for a bad value of every argument of every command; ``{F}`` is a
folder holding ``a_file``, ``empty.h5`` (0 bytes), ``a_dir/`` and ``pipe.h5`` (a named pipe)."""


@pytest.mark.parametrize("argv,needles", [(a, n) for a, *n in BAD_INPUTS],
                         ids=[" ".join(a) or "(none)" for a, *_ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_written_no_framework(argv, needles, files, tmp_path):
    argv = [a.replace("{F}", str(files)) for a in argv]
    p = run_cli(tmp_path, *argv)
    assert_usage_error(p, *needles)
    assert list(p.work.iterdir()) == [], list(p.work.iterdir())  # nothing left behind (no report folder)
    assert p.frameworks == [], p.frameworks  # refused before TensorFlow/torch were imported


def test_table_covers_every_option_of_every_command():
    """A new option must come with a bad value in the table above."""
    mentioned = {a for argv, *_ in BAD_INPUTS for a in argv if a.startswith("-")}
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, p in sub.choices.items():
        for action in p._actions:
            opts = [o for o in action.option_strings if o not in ("-h", "--help")]
            flags_only = action.nargs == 0  # --fast, --json, --quiet: no value to get wrong
            if opts and not flags_only and not set(opts) & mentioned:
                missing.append(f"{name} {opts[0]}")
    assert not missing, missing


def test_missing_module_is_reported_in_well_under_a_second(tmp_path):
    p = run_cli(tmp_path, "check", "minixception", "--port", "no_such_module_x:build")
    assert_usage_error(p, "no module named")
    # measured ~0.4 s on the 2-core CI machine (interpreter start included); 3 s leaves room for a loaded machine
    assert p.seconds < 3.0, p.seconds
    assert p.frameworks == []


# -- user code that raises ------------------------------------------------------------------------------------------
def test_user_port_builder_that_raises_is_named(tmp_path):
    p = run_cli(tmp_path, "check", "minixception", "--fast", "--stages", "structure", "-q",
                "--port", f"{HERE}:port_builder_raises")
    line = assert_usage_error(p, f"--port {HERE}:port_builder_raises raised RuntimeError: boom in the user's port "
                                 "builder", "PARITY_DEBUG=1")
    assert line.count("parity:") == 1


def test_user_port_returning_a_non_module_is_named(tmp_path):
    p = run_cli(tmp_path, "check", "minixception", "--fast", "--stages", "structure", "-q",
                "--port", f"{HERE}:port_returns_a_string")
    assert_usage_error(p, f"--port {HERE}:port_returns_a_string: expected a function returning a torch.nn.Module",
                       "Received: str")


def test_user_reference_builder_that_raises_is_named(tmp_path):
    p = run_cli(tmp_path, "check", "--reference", f"{HERE}:reference_builder_raises",
                "--port", "benchmarks.user_models:torch_cnn", "-q")
    assert_usage_error(p, f"--reference {HERE}:reference_builder_raises raised RuntimeError: boom in the user's "
                          "reference builder")


def test_debug_shows_the_user_traceback(tmp_path):
    p = run_cli(tmp_path, "check", "--reference", f"{HERE}:reference_builder_raises",
                "--port", "benchmarks.user_models:torch_cnn", "-q", env={"PARITY_DEBUG": "1"})
    assert p.returncode == 2
    assert "Traceback" in p.stderr and "reference_builder_raises" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("parity: error: ")


# -- a bug in parity: exit 3 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [KeyError("stage"), ValueError("bad shape inside parity"), AttributeError("x"),
                                 ImportError("no module named y"), TypeError("z")])
def test_internal_error_is_exit_3_with_the_traceback_in_a_file(exc, monkeypatch, capsys, tmp_path):
    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(cli, "check", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("PARITY_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    rc = cli.main(["check", "minixception", "--stages", "structure", "-q", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"parity: internal error: {type(exc).__name__}: ")
    assert "(a bug in parity; traceback written to " in lines[0]
    path = lines[0].rsplit("traceback written to ", 1)[1].rstrip(")")
    text = pathlib.Path(path).read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert pathlib.Path(path).parent == tmp_path


def test_internal_error_with_debug_prints_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "check", lambda *a, **k: {}["missing"])
    monkeypatch.setenv("PARITY_DEBUG", "1")
    rc = cli.main(["check", "minixception", "--stages", "structure", "-q", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("parity: internal error: KeyError")


# -- what stdout holds ------------------------------------------------------------------------------------------------
def test_list_prints_no_verdict_and_json_is_one_document(tmp_path):
    p = run_cli(tmp_path, "list")
    assert p.returncode == 0 and "PASSED" not in p.stdout and "minixception" in p.stdout
    assert p.frameworks == []
    p = run_cli(tmp_path, "list", "--json")
    assert {d["name"] for d in json.loads(p.stdout)} >= {"minixception", "goturn"}


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("parity ") and len(out.strip().split()) == 2


def _help(capsys, *argv) -> str:
    assert cli.main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_record_help_lists_only_what_applies(capsys):
    text = _help(capsys, "record")
    for absent in ("--device", "--out", "--json", "--onnx"):
        assert not re.search(re.escape(absent) + r"\b(?!put)", text), absent
    for present in ("--output", "--stages", "--config", "--weights", "--port", "--verbose"):
        assert present in text, present


def test_convert_help_documents_pair_and_config(capsys):
    text = " ".join(_help(capsys, "convert").split())
    assert "--pair NAME registered pair whose port the weights are for" in text
    assert "--config KEY=VALUE builder argument the weights were saved with" in text


def test_check_help_names_the_exit_codes_and_out_fields(capsys):
    text = " ".join(_help(capsys, "check").split())
    assert "{pair}, {run_id}" in text and "{timestamp}" in text
    text = " ".join(_help(capsys).split())
    assert "0 passed, 1 parity failure, 2 bad input, 3 a bug in parity" in text


# -- options, in process ----------------------------------------------------------------------------------------------
def test_trajectory_is_the_step_stage_over_several_steps():
    assert options.parse_stages("structure,trajectory") == ("structure", "step")
    assert options.plan_steps("trajectory", None) == options.TRAJECTORY_DEFAULT_STEPS >= 2
    assert options.plan_steps("trajectory", 4) == 4
    assert options.plan_steps("step", None) == 1


def test_out_fields_are_filled():
    assert options.expand_out("r/{pair}/{run_id}-{timestamp}", pair="p", run_id="7", timestamp="T") == "r/p/7-T"
    assert options.expand_out("r/{{literal}}", pair="p") == "r/{literal}"


def test_config_values_take_their_defaults_kind():
    got = options.check_config_values({"flag": "true", "n": 3, "shape": [1, 2, 3], "x": 2},
                                      {"flag": False, "n": 7, "shape": (9, 9, 9), "x": 0.5})
    assert got == {"flag": True, "n": 3, "shape": (1, 2, 3), "x": 2.0}


def test_static_lookup_reads_the_source_without_importing_it(tmp_path, monkeypatch):
    mod = tmp_path / "h4_user_builders.py"
    mod.write_text("import not_installed_anywhere\nSIZE = 8\n\ndef build(width=SIZE, *, depth=2, **kw):\n"
                   "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = options.locate("h4_user_builders:build", "--port", "a torch.nn.Module")
    assert t.signature.params == ("width", "depth") and t.signature.var_keyword
    assert t.signature.defaults == {"width": 8, "depth": 2}
    assert "h4_user_builders" not in sys.modules  # located, not imported (its import would fail)
    with pytest.raises(options.UsageError, match="no name 'nope'.*It defines: build"):
        options.locate("h4_user_builders:nope", "--port", "a torch.nn.Module")


def test_progress_is_quiet_off_a_terminal_and_verbose_adds_memory(capsys):
    with cli.Progress(total=3) as say:
        say("phase one")
    assert capsys.readouterr().err == ""
    with cli.Progress(verbose=True, total=3) as say:
        say("phase one")
    err = capsys.readouterr().err
    assert "phase one" in err and ("rss" in err or not os.path.exists("/proc/self/statm"))


# -- whole checks (TensorFlow and torch: a few seconds each) -------------------------------------------------------
def test_json_stdout_is_exactly_one_document_and_the_verdict_goes_to_stderr(tmp_path):
    p = run_cli(tmp_path, "check", "minixception", "--fast", "--stages", "structure,forward_eval", "--json", "-q",
                "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert doc["pair"] == "minixception" and doc["passed"] is True
    assert p.stderr.strip().splitlines()[-1].startswith("PASSED minixception")


def test_out_template_keeps_both_runs_and_the_default_says_what_it_replaced(tmp_path):
    argv = ("check", "minixception", "--fast", "--stages", "structure", "-q")
    p1 = run_cli(tmp_path, *argv, "--out", "runs/{pair}/{run_id}", env={"PARITY_RUN_ID": "ci-1"})
    p2 = run_cli(tmp_path, *argv, "--out", "runs/{pair}/{run_id}", env={"PARITY_RUN_ID": "ci-2"})
    assert p1.returncode == 0 and p2.returncode == 0, p2.stderr[-3000:]
    assert (p1.work / "runs/minixception/ci-1/report.json").exists()
    assert (p1.work / "runs/minixception/ci-2/report.json").exists()
    assert "replaced" not in p2.stdout
    p3 = run_cli(tmp_path, *argv)
    p4 = run_cli(tmp_path, *argv)
    assert "replaced" not in p3.stdout
    assert "replaced the PASSED report of " in p4.stdout and "parity-report/minixception" in p4.stdout
    assert p4.stdout.strip().splitlines()[-1].startswith("PASSED")


def port_forward_raises(**config):
    """The registered port, whose forward raises on every batch."""
    from ported_torch.minixception import mini_xception

    module = mini_xception(**config)

    def forward(x):
        raise RuntimeError("boom in the port's forward")

    module.forward = forward
    return module


def test_a_port_whose_forward_raises_is_a_failed_verdict_naming_it(tmp_path):
    """The port is what is under test: a forward that cannot run is a parity failure (exit 1), and the verdict
    line names the forward and the exception (never ``FAILED: ?: unknown``)."""
    p = run_cli(tmp_path, "check", "minixception", "--fast", "--stages", "structure,forward_eval", "-q",
                "--port", f"{HERE}:port_forward_raises", "--out", str(tmp_path / "r"))
    assert p.returncode == 1, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED: forward_eval: port forward (MiniXception.forward) raised RuntimeError: boom in "
                           "the port's forward"), last


def test_user_pair_port_returning_a_non_module_is_named(tmp_path):
    p = run_cli(tmp_path, "check", "--reference", "benchmarks.user_models:keras_cnn", "--port", "os:getcwd", "-q")
    assert_usage_error(p, "--port os:getcwd: expected a function returning a torch.nn.Module. Received: str.")


@pytest.mark.parametrize("name", registry.names())
def test_every_pair_passes_its_own_validation_without_a_framework(name):
    """The early checks agree with every registered pair's builders (default and fast config), from source."""
    import argparse

    spec = registry.get(name)
    for fast in (False, True):
        args = argparse.Namespace(config=None)
        targets = cli._builder_targets(args, spec)
        assert all(t.signature is not None for t in targets), [t.text for t in targets]
        assert cli._validated_config(args, spec, targets, fast) == (dict(spec.fast_config) if fast else {})
    key, value = next(iter(spec.default_config.items()))
    args = argparse.Namespace(config=[f"{key}={value!r}"])
    assert cli._validated_config(args, spec, cli._builder_targets(args, spec), False) == {key: value}


def test_record_with_a_reference_builder_that_raises_is_named(tmp_path):
    p = run_cli(tmp_path, "record", "minixception", "--fast", "--stages", "structure", "-q", "-o", "t.safetensors",
                "--reference", f"{HERE}:reference_builder_raises")
    assert_usage_error(p, f"--reference {HERE}:reference_builder_raises raised RuntimeError")
    assert not (p.work / "t.safetensors").exists()


def test_a_name_bound_at_run_time_is_looked_up_by_importing(tmp_path, monkeypatch):
    (tmp_path / "h4_dynamic.py").write_text("def _make():\n    return lambda **kw: None\n\n"
                                           "globals()['build'] = _make()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = options.locate("h4_dynamic:build", "--port", "a torch.nn.Module")  # not refused from the source alone
    assert t.signature is None and callable(t.load())


def test_call_user_names_the_function_and_keeps_the_cause():
    from parity.core.errors import UserCodeError, call_user

    def build(**kw):
        raise KeyError("num_classes")

    with pytest.raises(UserCodeError) as info:
        call_user(build, "--port pkg:build", num_classes=3)
    assert str(info.value).startswith("--port pkg:build raised KeyError: 'num_classes'. ")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(UserCodeError, match="raised SystemExit: 1"):  # exit 1 is reserved for FAILED verdicts
        call_user(lambda: sys.exit(1), "--reference pkg:build")
    with pytest.raises(options.UsageError, match="^bad$"):  # the project's own usage errors pass through
        call_user(lambda: (_ for _ in ()).throw(options.UsageError("bad")), "x")
