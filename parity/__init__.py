"""parity: prove a PyTorch port of a Keras (or Caffe) model is the same model.

Importing :mod:`parity` sets the process environment (:data:`parity.core.env.ENVIRONMENT`: the oneDNN ISA cap,
TensorFlow's logging, one OpenMP thread) and imports no framework; ``parity.check`` / ``parity.compare`` load
them on first use. Import it before TensorFlow, Keras or PyTorch: a framework imported earlier has already read
its environment, and parity warns once, naming what it could not apply.
"""
from __future__ import annotations

import os
import sys
import warnings

_ENVIRON_BEFORE = dict(os.environ)  # what the user had exported, before parity.core.env sets the rest

from parity.core import env as _env  # noqa: E402  (must run before any framework import)
from parity.core.results import CheckResult, ParityFailure  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "check", "compare", "CheckResult", "ParityFailure", "configure_environment",
           "take_back_environment", "ENVIRONMENT_APPLIED"]

#: The variables ``import parity`` set or changed, name -> the value it set.
ENVIRONMENT_APPLIED = {k: os.environ[k] for k in _env.ENVIRONMENT
                       if k in os.environ and os.environ[k] != _ENVIRON_BEFORE.get(k)}

#: The variables of :data:`parity.core.env.ENVIRONMENT` each framework reads as it loads or first runs: set
#: after that, they do not reach it. OpenMP (libgomp, loaded with torch and TensorFlow) reads ``OMP_NUM_THREADS``
#: when the library loads; oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, at its first kernel dispatch
#: (oneapi-src/oneDNN src/cpu/x64/cpu_isa_traits.cpp); TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` when its logging
#: starts (tsl/platform/default/logging.cc) and ``TF_ENABLE_ONEDNN_OPTS`` in ``IsMKLEnabled``
#: (tensorflow/core/util/util.cc); Keras 3 picks its backend from ``KERAS_BACKEND`` at import
#: (keras-team/keras keras/src/backend/config.py). ``PYTHONHASHSEED`` only ever reaches child processes.
READ_AT_IMPORT = {
    "torch": ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA"),
    "tensorflow": ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL"),
    "keras": ("KERAS_BACKEND",),
}

_warned = False


def _warn_late(frameworks: list[str], names: dict[str, str], stacklevel: int) -> None:
    """Warn once per process: ``frameworks`` were imported before parity set ``names``; the warning names the
    variables those frameworks read as they load (:data:`READ_AT_IMPORT`)."""
    global _warned
    late = {k: v for k, v in names.items() if any(k in READ_AT_IMPORT.get(f, ()) for f in frameworks)}
    if _warned or not late:
        return
    _warned = True
    settings = ", ".join(f"{k}={v}" for k, v in late.items())
    warnings.warn(f"parity's environment came after {', '.join(frameworks)} was imported, so it was not applied "
                  f"to {'them' if len(frameworks) > 1 else 'it'}: {settings}. Import parity before any framework "
                  f"(or export these variables before Python starts).", RuntimeWarning, stacklevel=stacklevel)


def _late_frameworks() -> list[str]:
    return [name for name in ("tensorflow", "keras", "torch") if name in sys.modules]


def configure_environment() -> dict[str, str]:
    """Set parity's environment in this process, as ``import parity`` does (a variable the user set is kept,
    ``ONEDNN_MAX_CPU_ISA`` as :mod:`parity.core.env` decides); returns the variables it set or changed now.
    Warns once, naming them, when a framework that reads them is already imported. The pytest plugin calls
    it for the tests that use parity only."""
    before = {k: os.environ.get(k) for k in _env.ENVIRONMENT}
    late = _late_frameworks()
    _env.configure()
    changed = {k: os.environ[k] for k in _env.ENVIRONMENT if os.environ.get(k) != before[k] and k in os.environ}
    _warn_late(late, changed, stacklevel=3)
    return changed


def take_back_environment() -> dict[str, str]:
    """Undo what ``import parity`` set, while no framework has read it (the pytest plugin, loaded in every pytest
    run of an environment where parity is installed, sets it per test instead): each variable back to the
    value it had before, or unset. Returns what was taken back; nothing once a framework is imported."""
    if _late_frameworks():
        return {}
    taken = {}
    for key, value in ENVIRONMENT_APPLIED.items():
        if os.environ.get(key) != value:
            continue  # changed since: not ours to undo
        taken[key] = value
        if key in _ENVIRON_BEFORE:
            os.environ[key] = _ENVIRON_BEFORE[key]
        else:
            del os.environ[key]
    getattr(_env, "ISA_DECISION", {}).clear()  # the ISA cap is decided again, from the user's value, next time
    return taken


# stacklevel 3: the line that imported parity (``warnings`` skips importlib's own frames)
_warn_late(_late_frameworks(), ENVIRONMENT_APPLIED, stacklevel=3)


def __getattr__(name):  # lazy: `import parity` stays free of TensorFlow and torch
    if name == "check":
        from parity.harness import check

        return check
    if name == "compare":
        from parity.user.pair import compare

        return compare
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
