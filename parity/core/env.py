"""The one environment module: every entry point (CLI, tests, pytest plugin, benchmarks) imports it
before TensorFlow or PyTorch is imported.

Why each variable (measured on this project's 2-core CI machine):

- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's AVX-512 kernels corrupt the heap in the backward pass of a 1x1
  stride-2 convolution, in both TensorFlow and PyTorch (intermittent segfault / double free). Capping
  the ISA at AVX2 made 5/5 runs clean. It must be set before either framework loads oneDNN.
- ``TF_ENABLE_ONEDNN_OPTS=0``: TF's oneDNN graph rewrites off; also makes TF CPU numerics deterministic.
- ``TF_CPP_MIN_LOG_LEVEL=2``: TF's C++ info/warning chatter off (errors still print).
- ``OMP_NUM_THREADS=1``: PyTorch's CPU kernels on one OpenMP thread. Measured on this 2-core machine: one
  train fwd+bwd of mini_XCEPTION (float64, batch 8) took 0.07 s with 1 thread and 13.6 s with the default 2
  while one other process was busy (OpenMP barriers spin against a descheduled thread); on an idle machine
  a full check took 8.6 s with 1 thread vs 10.2 s with 2. TensorFlow's own thread pools are not affected.
  Export another value to override.
"""
from __future__ import annotations

import os
import sys
import warnings

from parity.core.errors import UsageError

#: Environment every process of the project runs with. ``setdefault`` semantics: a user who exports
#: a different value on purpose keeps it.
ENVIRONMENT = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "KERAS_BACKEND": "tensorflow",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
}

_FRAMEWORKS = ("tensorflow", "torch", "keras")


def configure() -> list[str]:
    """Set the environment; return the frameworks that were already imported (too late for them)."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=r".*np\.object.*")
    late = [name for name in _FRAMEWORKS if name in sys.modules]
    return late


LATE_IMPORTS = configure()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and whichever frameworks are imported (does not import any)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)


def import_tensorflow():
    """Import TF/Keras quietly (after :func:`configure`). Raises ``MissingFramework`` with the fix."""
    try:
        import logging

        import tensorflow as tf  # noqa: F401
        import keras

        logging.getLogger("absl").setLevel(logging.ERROR)
        tf.get_logger().setLevel(logging.ERROR)
        return keras
    except ImportError as exc:  # pragma: no cover - exercised on TF-less machines
        raise MissingFramework(
            "the Keras reference side needs TensorFlow and Keras 3. Received: "
            f"{exc}. Install them with `pip install -e .[cpu]` (or `.[gpu]`), or replay a recorded trace "
            "with `parity replay`, which needs only PyTorch."
        ) from None


def import_torch():
    try:
        import torch

        return torch
    except ImportError as exc:  # pragma: no cover
        raise MissingFramework(
            f"the port side needs PyTorch. Received: {exc}. Install it with `pip install torch`."
        ) from None


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere). TensorFlow and
    PyTorch free tensors of 1-30 MB into the malloc heap, where glibc keeps them: after the reference side of a
    check has freed its activations, the process would otherwise stay at its peak while the port runs."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - AttributeError where the C library has no malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class MissingFramework(UsageError, RuntimeError):
    """A framework the requested stage needs is not installed."""
