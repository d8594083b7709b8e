"""The pytest plugin: the ``parity`` fixture, the ``parity`` marker and the ``--parity-*`` options, exercised
through an inner pytest run (``pytester``) as a user's test file would use them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True, scope="module")
def _frameworks_imported_once():
    """pytester's in-process runs remove the modules first imported inside them from sys.modules: TensorFlow
    imported a second time into the same process aborts it. Import both frameworks out here, once."""
    from parity.core.env import import_tensorflow, import_torch

    import_tensorflow()
    import_torch()

FAST = "structure,forward_eval"

INNER = f'''
import pytest


def test_fixture_passes(parity):
    result = parity.check("minixception", stages="{FAST}")
    assert result.passed and result.dtype == "float32"   # --parity-dtype float32 on the command line


def test_fixture_planted_bug(parity):
    parity.check("minixception", port="tests.planted_ports:bn_eps_1e5", stages="{FAST}")


@pytest.mark.parity("minixception", stages="{FAST}", dtype="float64")
def test_marker_runs_the_check(parity):
    pass                                                    # no call: the check runs after the body


@pytest.mark.parity(name="minixception", port="tests.planted_ports:symmetric_pool", stages="{FAST}")
def test_marker_planted_bug(parity):
    pass


@pytest.mark.parity(name="minixception", stages="{FAST}", dtype="float64")
def test_marker_defaults_and_overrides(parity):
    result = parity.check(stages="structure")               # marker's name and dtype, the call's stages
    assert [s.name for s in result.stages] == ["structure"] and result.dtype == "float64"
    assert parity.results == [result] and len(parity.report_dirs) == 1


@pytest.mark.parity(reference="benchmarks.user_models:keras_cnn", port="benchmarks.user_models:torch_cnn", stages="{FAST}")
def test_marker_user_models(parity):
    pass


def test_fixture_replay(parity, tmp_path):
    from parity.pairs import registry
    from parity.io.trace import record

    path, _ = record(registry.get("minixception"), str(tmp_path / "t.safetensors"), stages="{FAST}")
    result = parity.replay(path)
    assert result.reference_source == "trace:" + path
'''


EPS_HEADLINE = ("forward_eval base/bn1: BatchNorm eps 1e-05 in the port, 0.001 in the reference -> set eps=0.001 "
                "(Keras default)")


def test_fixture_marker_and_options(pytester, monkeypatch):
    pytester.makepyfile(test_inner=INNER)
    reports = pytester.path / "parity-reports"
    monkeypatch.setenv("COLUMNS", "240")  # a wide terminal: pytest trims the short summary to its width
    res = pytester.runpytest("-p", "parity", "--parity-dtype", "float32", "--parity-report-dir", str(reports),
                             "-p", "no:cacheprovider", "-rA")
    res.assert_outcomes(passed=5, failed=2)
    text = res.stdout.str()

    # the short test summary (-rA) shows the exception's first line only: the layer and the cause are on it
    summary = text[text.index("short test summary info"):]
    assert f"FAILED test_inner.py::test_fixture_planted_bug - parity.ParityFailure: {EPS_HEADLINE}" in summary
    pool = next(line for line in summary.splitlines() if "test_marker_planted_bug" in line)
    assert "forward_eval block1/pool: " in pool and "TF 'same'" in pool

    # torch.testing-style failure: first divergent tensor, greatest difference, allowed tolerance, cause, report;
    # the first divergence stated once, none of the plugin's own frames in the traceback
    eps = text[text.index("_ test_fixture_planted_bug _"):text.index("_ test_marker_planted_bug _")]
    assert f"E       parity.ParityFailure: {EPS_HEADLINE}" in eps
    assert "greatest absolute difference" in eps and "allowed" in eps
    assert "the same cause at 13 more layers: base/bn2," in eps
    assert "check: minixception [float32, cpu, batch 8], stages structure, forward_eval" in eps
    assert f"report: {reports}" in eps
    assert eps.count("base/bn1") == 1, eps  # the first divergence is named once, in the first line
    assert "pytest_plugin.py" not in eps and "def _finish" not in eps

    # one report folder per test and check
    written = sorted(p.parent.parent.name + "/" + p.parent.name for p in reports.glob("*/*/report.json"))
    assert written == ["test_inner.py_test_fixture_passes/minixception",
                       "test_inner.py_test_fixture_planted_bug/minixception",
                       "test_inner.py_test_fixture_replay/minixception-replay",
                       "test_inner.py_test_marker_defaults_and_overrides/minixception",
                       "test_inner.py_test_marker_planted_bug/minixception",
                       "test_inner.py_test_marker_runs_the_check/minixception",
                       "test_inner.py_test_marker_user_models/keras_cnn-vs-torch_cnn"]
    auto = json.loads((reports / "test_inner.py_test_marker_runs_the_check" / "minixception" / "report.json")
                      .read_text())
    assert auto["passed"] and auto["dtype"] == "float64"    # the marker's dtype beats --parity-dtype


def test_markers_and_options_registered(pytester):
    res = pytester.runpytest("--markers")
    assert "@pytest.mark.parity(name=None, reference=None, port=None, **check_kwargs)" in res.stdout.str()
    res = pytester.runpytest("--help")
    out = res.stdout.str()
    assert "--parity-dtype" in out and "--parity-device" in out and "--parity-report-dir" in out


def test_default_report_dir_under_basetemp(pytester):
    pytester.makepyfile(test_inner=f'''
def test_it(parity, tmp_path_factory):
    parity.check("minixception", stages="structure")
    assert parity.report_dirs[0].startswith(str(tmp_path_factory.getbasetemp() / "parity-reports"))
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


ENV_INNER = '''
import json
import os

import pytest

PLAIN, WITH_PARITY = json.loads(os.environ["EXPECTED_ENVIRONMENT"])


def _env():
    return {k: os.environ.get(k) for k in WITH_PARITY}


def test_a_test_without_parity_keeps_the_environment():
    assert _env() == PLAIN


def test_the_fixture_sets_it(parity):
    assert _env() == WITH_PARITY


@pytest.mark.parity("minixception")
def test_the_marker_sets_it():
    assert _env() == WITH_PARITY
'''
PARITY_VARS = ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")


@pytest.mark.parametrize("exported, with_parity", [
    ({}, {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2", "KERAS_BACKEND": "tensorflow"}),
    # a user's own values: kept outside parity's tests; inside, OMP kept, the ISA capped (parity.core.env)
    ({"OMP_NUM_THREADS": "3", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
     {"OMP_NUM_THREADS": "3", "ONEDNN_MAX_CPU_ISA": "AVX2", "KERAS_BACKEND": "tensorflow"}),
])
def test_environment_only_for_tests_that_use_parity(tmp_path, exported, with_parity):
    """pytest loads the plugin in every run where parity is installed: OMP_NUM_THREADS, ONEDNN_MAX_CPU_ISA &
    co. are set for the tests that use the fixture or the marker, not for the run (a fresh process; the
    tests in order: the plain test first)."""
    (tmp_path / "test_env.py").write_text(ENV_INNER)
    plain = {k: exported.get(k) for k in with_parity}
    env = {k: v for k, v in os.environ.items() if k not in PARITY_VARS}
    env.update(exported, EXPECTED_ENVIRONMENT=json.dumps([plain, with_parity]))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning",
                          str(tmp_path / "test_env.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "3 passed" in res.stdout, res.stdout + res.stderr


def test_importing_the_plugin_imports_no_framework_and_sets_no_environment():
    code = ("import os, sys; import parity.pytest_plugin as p; "
            "assert not {'torch', 'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules); "
            "assert 'OMP_NUM_THREADS' not in os.environ and 'ONEDNN_MAX_CPU_ISA' not in os.environ; "
            "assert p.DEFERRED_ENVIRONMENT['ONEDNN_MAX_CPU_ISA'] == 'AVX2'")  # taken back
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
