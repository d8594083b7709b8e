"""Test configuration. Importing :mod:`parity` first sets ONEDNN_MAX_CPU_ISA & co. before any framework."""
import parity  # noqa: F401  (environment before TensorFlow / torch load)
import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
