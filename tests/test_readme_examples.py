"""The README's Python examples run as written: the public API (``parity.check``, ``parity.compare``, the result
object) and the pytest plugin's fixture and marker. Only the README's placeholders are replaced: ``mypkg.port:build``
by the registered minixception port, ``keras_model`` / ``torch_module`` by the small user models of
``benchmarks/user_models.py`` (built in float64, as the README says for the exact check)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import parity
from parity.core.results import CheckResult
from parity.pairs import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
#: the README's placeholder for "your port" -> the registered minixception port (a correct port)
PORT = registry.get("minixception").port


def _as_written(block: str) -> str:
    return block.replace("mypkg.port:build", PORT)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"expected one ```python block of the README with {marker!r}. Received: {len(found)}."
    return found[0]


def test_the_readme_shows_the_api_and_the_plugin():
    assert len(BLOCKS) >= 2
    api = _block("parity.compare(keras_model, torch_module)")
    assert "parity.check(" in api and "raise_for_failure()" in api and "first_divergence" in api
    plugin = _block("def test_port(parity)")
    assert "@pytest.mark.parity(" in plugin


def test_the_api_example_runs_as_written():
    """``parity.check`` first, then ``parity.compare``: ``parity.compare`` stays the function once the check has
    imported every submodule (the old ``parity/compare.py`` module used to shadow it)."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("torch")
    from benchmarks import user_models

    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        names = {"keras_model": user_models.keras_cnn(), "torch_module": user_models.torch_cnn()}
        exec(compile(_as_written(_block("parity.compare(keras_model, torch_module)")), "README.md", "exec"), names)
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(old_policy)
    result = names["result"]
    assert isinstance(result, CheckResult) and result.passed and result.dtype == "float64", result
    assert callable(parity.compare) and callable(parity.check)
    assert "tolerance_policy" not in {f.cause for f in result.findings}  # float64 models: the float64 policy


def test_the_pytest_example_runs_as_written(tmp_path):
    """The plugin's example in a user's test file, run by pytest in a fresh process (as a user runs it)."""
    pytest.importorskip("keras")
    (tmp_path / "test_readme_plugin.py").write_text(_as_written(_block("def test_port(parity)")))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "--parity-report-dir", str(tmp_path / "reports"), str(tmp_path / "test_readme_plugin.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(list((tmp_path / "reports").glob("*/*/report.json"))) == 2


def test_compare_of_a_float32_model_says_which_policy_ran():
    """The README: a float32 Keras model gets the float32 policy, with a warning and an ``info`` finding."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    from benchmarks import user_models

    with pytest.warns(UserWarning, match=r"parity.compare: the float32 tolerance policy ran, not float64: the Keras "
                                         r"model computes in float32"):
        result = parity.compare(user_models.keras_cnn(), user_models.torch_cnn(), stages="structure,forward_eval")
    assert result.passed and result.dtype == "float32"
    note = next(f for f in result.findings if f.cause == "tolerance_policy")
    assert note.severity == "info" and "keras.config.set_floatx('float64')" in note.fix


@pytest.mark.parametrize("first, named", [
    ("torch", "ONEDNN_MAX_CPU_ISA=AVX2, OMP_NUM_THREADS=1"),
    (None, None),
])
def test_importing_a_framework_before_parity_warns_once_naming_what_was_not_applied(first, named):
    """The README: import parity first; a framework imported before it has read its environment already."""
    if first is not None:
        pytest.importorskip(first)
    code = (f"import {first}\n" if first else "") + "import parity\nimport parity\nparity.configure_environment()\n"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "KERAS_BACKEND",
                                                            "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "RuntimeWarning" in line]
    if named is None:
        assert warned == [], res.stderr
    else:
        assert len(warned) == 1 and f"<string>:2: RuntimeWarning: parity's environment came after {first} was " \
            f"imported, so it was not applied to it: {named}." in warned[0], res.stderr
