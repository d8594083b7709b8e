"""parity: prove a PyTorch port of a Keras (or Caffe) model is the same model.

Importing :mod:`parity` sets the process environment (:mod:`parity.env`) and imports no framework.
"""
from parity import env as _env  # noqa: F401  (must run before any framework import)

__version__ = "0.1.0"

__all__ = ["__version__"]
