"""pytest plugin (registered through the ``pytest11`` entry point ``parity``): parity checks as tests.

The ``parity`` fixture::

    def test_port(parity):
        parity.check("minixception")                     # AssertionError with the first divergence if it fails

    def test_my_port(parity):
        result = parity.check("minixception", port="mypkg.port:build", stages="structure,forward_eval")
        assert result.stage("forward_eval").worst.rel < 1e-12

    def test_on_gpu(parity):
        parity.replay("traces/minixception.safetensors", device="cuda")

``parity.check`` takes :func:`parity.harness.check`'s keyword arguments, plus ``fast=True`` (the pair's CI
configuration, like ``parity check --fast``) and, for your own models without a registered pair,
``reference=``/``port=`` builders with ``input_shape=``, ``loss=``, ``align=``. It writes the reports (JSON,
Markdown, HTML) of every check to the report directory, returns the :class:`parity.core.results.CheckResult` when
it passes and raises ``AssertionError`` when it does not, torch.testing style: the first divergent tensor,
its greatest absolute difference and the allowed tolerance, the named cause and the report's path.

The ``parity`` marker: ``@pytest.mark.parity(name=None, reference=None, port=None, **check_kwargs)`` (the name
may be positional). Its arguments become the defaults of ``parity.check`` in that test; a marked test whose
body does not call ``parity.check``/``parity.replay`` gets the check run for it, right after the body (in the
test's call phase: a divergence fails the test)::

    @pytest.mark.parity("minixception", stages="structure,forward_eval")
    def test_minixception(parity):
        pass

Precedence: the call's arguments, then the marker's, then the command line's ``--parity-dtype`` /
``--parity-device``, then the check's own defaults. ``--parity-report-dir DIR`` keeps the reports (one
folder per test and check); by default they go under pytest's basetemp (``<basetemp>/parity-reports``).

The environment parity runs with (:data:`parity.core.env.ENVIRONMENT`: ``OMP_NUM_THREADS``,
``ONEDNN_MAX_CPU_ISA``, TensorFlow's logging, ``KERAS_BACKEND``) is set only for the tests that use the fixture
or the marker, when their setup starts: pytest loads this plugin in every run of an environment where parity is
installed, and a run that never checks a model keeps its own environment. Importing this module (which imports
:mod:`parity`) sets it as ``import parity`` does and the plugin takes it back at once; a framework imported
before the first parity test has read the environment already, and :func:`parity.configure_environment` warns,
naming what it could not apply (call it at the top of ``conftest.py`` to set it for the whole run).

A failed check raises :class:`parity.ParityFailure` (an ``AssertionError``) whose first line is the layer and the
cause, ``forward_eval base/bn1: BatchNorm eps 1e-05 in the port, 0.001 in the reference -> set eps=0.001 (Keras
default)``, which is the line pytest's short test summary (``-rA``) shows.
"""
from __future__ import annotations

import os
import re
from typing import Any

import pytest

import parity as _parity
from parity.core.results import ParityFailure

# The harness, traces, user pairs and reports load when a test first uses parity (``_api``), not when pytest
# loads this plugin: every pytest run of an environment where parity is installed loads it (0.67 s measured
# for these imports at load time, 0.05 s without them).


def _api():
    """The parity functions the fixture calls, imported on first use."""
    from parity.harness import check
    from parity.io.trace import replay
    from parity.pairs import registry
    from parity.user.pair import compare, spec_from_user_models
    from reports import write_reports

    return check, replay, registry, compare, spec_from_user_models, write_reports

#: what ``import parity`` set while pytest loaded this plugin, taken back here (no framework is loaded yet, so
#: nothing has read it); :func:`parity.configure_environment` sets it again for the tests that use parity
DEFERRED_ENVIRONMENT = _parity.take_back_environment()

MARKER = ("parity(name=None, reference=None, port=None, **check_kwargs): a parity check of a model pair; "
          "the arguments become the defaults of the `parity` fixture's check, which runs automatically when "
          "the test body does not call it")
#: marker / call keywords handled here rather than passed to parity.harness.check
_USER_PAIR_KEYS = ("input_shape", "loss", "align")


def pytest_addoption(parser):
    group = parser.getgroup("parity", "parity checks (PyTorch port vs Keras/Caffe reference)")
    group.addoption("--parity-dtype", choices=("float64", "float32"), default=None,
                    help="default dtype of parity checks (default: the check's, float64)")
    group.addoption("--parity-device", default=None, help="default torch device of parity checks: cpu or cuda[:N]")
    group.addoption("--parity-report-dir", default=None,
                    help="directory for the reports of every parity check (default: <basetemp>/parity-reports)")


def pytest_configure(config):
    config.addinivalue_line("markers", MARKER)
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped where none is present)")


def pytest_runtest_setup(item):
    """A test marked ``@pytest.mark.parity`` gets parity's environment before its fixtures are set up."""
    if item.get_closest_marker("parity") is not None:
        _parity.configure_environment()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "test"


def failure_message(result, report_dir: str | None = None) -> str:
    """A failed :class:`CheckResult` as pytest shows it: the first line is where and why
    (:meth:`CheckResult.headline`, what ``-rA`` shows), then the torch.testing-style figures, the other layers
    with the same cause, the check and the report's path. The first divergence is stated once."""
    lines = [result.headline()]
    fd = result.first_divergence
    if fd is not None:
        lines.append(f"  {fd.describe()}")
        if fd.tensor is not None and fd.tensor.note:
            lines.append(f"  note: {fd.tensor.note}")
        if fd.cause is not None:
            same = [f.path for f in result.findings if (f.cause, f.message) == (fd.cause.cause, fd.cause.message)]
            others = [p for p in dict.fromkeys(same) if p != fd.cause.path]
            if others:
                lines.append(f"  the same cause at {len(others)} more layers: {', '.join(others)}")
    ran = [s.name for s in result.stages if not s.skipped]
    lines.append(f"  check: {result.pair} [{result.dtype}, {result.device}, batch {result.batch}], "
                 f"stages {', '.join(ran)}")
    if report_dir:
        lines.append(f"  report: {os.path.join(report_dir, 'report.html')} (and report.json, report.md)")
    return "\n".join(lines)


class ParityFixture:
    """The ``parity`` fixture's object: ``check``, ``replay``, ``compare``; ``results`` of this test."""

    def __init__(self, request, report_root: str, defaults: dict[str, Any], options: dict[str, Any]):
        self._request = request
        self.report_root = report_root
        self.defaults = defaults
        self.options = options
        self.results: list = []
        self.report_dirs: list[str] = []
        self.called = False

    # -- helpers ------------------------------------------------------------------------------------------
    def _kwargs(self, call: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in self.options.items() if v is not None}
        kw.update(self.defaults)
        kw.update(call)
        return kw

    def _report_dir(self, label: str) -> str:
        base = os.path.join(self.report_root, _safe(self._request.node.nodeid))
        path = os.path.join(base, _safe(label))
        n = 2
        while path in self.report_dirs or os.path.exists(path):
            path = os.path.join(base, f"{_safe(label)}-{n}")
            n += 1
        return path

    def _finish(self, result, label: str):
        __tracebackhide__ = True
        out = self._report_dir(label)
        _api()[5](result, out)
        self.report_dirs.append(out)
        self.results.append(result)
        if not result.passed:
            raise ParityFailure(result, failure_message(result, out))
        return result

    # -- API ------------------------------------------------------------------------------------------------
    def check(self, pair=None, **kwargs):
        """Run :func:`parity.harness.check` (see the module docstring); ParityFailure when it fails."""
        __tracebackhide__ = True
        self.called = True
        kw = self._kwargs(kwargs)
        pair = pair if pair is not None else kw.pop("name", None)
        kw.pop("name", None)
        fast = kw.pop("fast", False)
        user = {k: kw.pop(k) for k in _USER_PAIR_KEYS if k in kw}
        if pair is None:
            reference, port = kw.pop("reference", None), kw.pop("port", None)
            if reference is None or port is None:
                raise TypeError("parity.check: expected a pair name, or both reference= and port= "
                                        "(your own models). Received: neither.")
            spec = _api()[4](reference, port, input_shape=user.get("input_shape"),
                                         loss=user.get("loss"), pins=user.get("align"))
        else:
            spec = _api()[2].get(pair) if isinstance(pair, str) else pair
        if fast:
            kw["config"] = {**spec.fast_config, **(kw.get("config") or {})}
        result = _api()[0](spec, **kw)
        return self._finish(result, spec.name)

    def replay(self, trace: str, **kwargs):
        """Run :func:`parity.io.trace.replay` on a recorded trace (PyTorch only); AssertionError when it fails.
        Takes ``port``, ``stages``, ``device`` (``--parity-device`` by default)."""
        __tracebackhide__ = True
        self.called = True
        kw = {k: v for k, v in self._kwargs(kwargs).items() if k in ("port", "stages", "device", "progress")}
        result = _api()[1](str(trace), **kw)
        return self._finish(result, f"{result.pair}-replay")

    def compare(self, keras_model, torch_module, **kwargs):
        """Run :func:`parity.user.pair.compare` on live objects; ParityFailure when it fails."""
        __tracebackhide__ = True
        self.called = True
        kw = self._kwargs(kwargs)
        for k in ("name", "reference", "port", "fast"):
            kw.pop(k, None)
        if "dtype" not in kwargs and "dtype" not in self.defaults:
            kw.pop("dtype", None)  # compare() takes the Keras model's own dtype unless asked
        result = _api()[3](keras_model, torch_module, **kw)
        return self._finish(result, result.pair)


def _marker_defaults(node) -> tuple[dict[str, Any], bool]:
    marker = node.get_closest_marker("parity")
    if marker is None:
        return {}, False
    kw = dict(marker.kwargs)
    if marker.args:
        if len(marker.args) > 1 or "name" in kw:
            raise TypeError("@pytest.mark.parity: expected at most one positional argument (the pair "
                                    f"name). Received: {marker.args!r} with name={kw.get('name')!r}.")
        kw["name"] = marker.args[0]
    return kw, True


@pytest.fixture
def parity(request, tmp_path_factory):
    """Parity checks in a test: ``parity.check(pair, **check_kwargs)`` (see :mod:`parity.pytest_plugin`)."""
    opt = request.config.getoption
    root = opt("--parity-report-dir") or str(tmp_path_factory.getbasetemp() / "parity-reports")
    defaults, _ = _marker_defaults(request.node)
    _parity.configure_environment()  # this test uses parity: its environment, before any check loads a framework
    return ParityFixture(request, os.path.abspath(root), defaults,
                         {"dtype": opt("--parity-dtype"), "device": opt("--parity-device")})


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``@pytest.mark.parity`` test taking the fixture whose body ran no check: run it now (call phase)."""
    __tracebackhide__ = True
    res = yield
    if pyfuncitem.get_closest_marker("parity") is None or "parity" not in getattr(pyfuncitem, "fixturenames", ()):
        return res
    fx = pyfuncitem.funcargs.get("parity")
    if isinstance(fx, ParityFixture) and not fx.called:
        fx.check()
    return res
