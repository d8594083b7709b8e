"""The pytest plugin: the ``parity`` fixture, the ``parity`` marker and the ``--parity-*`` options, exercised
through an inner pytest run (``pytester``) as a user's test file would use them."""
from __future__ import annotations

import json

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
    assert parity.core.results == [result] and len(parity.report_dirs) == 1


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


def test_fixture_marker_and_options(pytester):
    pytester.makepyfile(test_inner=INNER)
    reports = pytester.path / "parity-reports"
    res = pytester.runpytest("-p", "parity", "--parity-dtype", "float32", "--parity-report-dir", str(reports),
                             "-p", "no:cacheprovider")
    res.assert_outcomes(passed=5, failed=2)
    text = res.stdout.str()

    # torch.testing-style failure: first divergent tensor, greatest difference, allowed tolerance, cause, report
    eps = text[text.index("test_fixture_planted_bug"):]
    assert "AssertionError: Parity check failed: minixception [float32, cpu, batch 8]" in eps
    assert "first divergence at forward_eval base/bn1" in eps
    assert "greatest absolute difference" in eps and "allowed" in eps
    assert "cause: BatchNorm eps 1e-05 in the port, 0.001 in the reference -> set eps=0.001 (Keras default)" in eps
    assert f"report: {reports}" in eps

    pool = text[text.index("test_marker_planted_bug"):]
    assert "first divergence at forward_eval block1/pool" in pool and "cause:" in pool and "TF 'same'" in pool

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
