"""Test configuration. Importing :mod:`parity` first sets ONEDNN_MAX_CPU_ISA & co. before any framework."""
import atexit
import os
import shutil
import sys
import tempfile

import parity  # noqa: F401  (environment before TensorFlow / torch load)
import pytest
from tests.keras_dtype import keras_float64

# the pytest plugin takes back what `import parity` set (it sets it per test that uses parity): the suite
# imports the frameworks directly, so it sets the environment for the whole run here
parity.configure_environment()

# The reference cache (parity.io.cache) is off for the suite, and points at a throwaway directory in case a
# test turns it on: no test reads or writes a person's ~/.cache/parity. Subprocesses inherit both.
# tests/parity/test_cache.py turns it on, each test with its own directory.
os.environ["PARITY_CACHE_DIR"] = tempfile.mkdtemp(prefix="parity-test-cache-")
atexit.register(shutil.rmtree, os.environ["PARITY_CACHE_DIR"], True)
os.environ["PARITY_NO_CACHE"] = "1"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float64():
    """Build Keras models in float64 (Keras 3 caches the global dtype policy: set and restore both)."""
    with keras_float64():
        yield


@pytest.fixture(autouse=True)
def _keras_dtype_defaults():
    """Every test ends with Keras' default float32 floatx and dtype policy (a leaked float64 policy turns the
    next test's float32 models into float64 ones)."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None and (keras.config.floatx() != "float32" or keras.config.dtype_policy().name != "float32"):
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
