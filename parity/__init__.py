"""parity: prove a PyTorch port of a Keras (or Caffe) model is the same model.

Importing :mod:`parity` sets the process environment (:mod:`parity.core.env`) and imports no framework;
``parity.check`` / ``parity.compare`` load them on first use.
"""
from parity.core import env as _env  # noqa: F401  (must run before any framework import)

__version__ = "0.1.0"

__all__ = ["__version__", "check", "compare"]


def __getattr__(name):  # lazy: `import parity` stays free of TensorFlow and torch
    if name == "check":
        from parity.harness import check

        return check
    if name == "compare":
        from parity.user.pair import compare

        return compare
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
