"""Keras' global dtype state in tests: Keras 3 caches the global dtype policy the first time a layer reads it, so
``set_floatx`` alone leaks a float64 policy into every later test (seen: float32 models built as float64 made
three user-pair tests fail only in the full run). Set and restore both, always."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def keras_float64():
    """Build Keras models in float64 inside the block; floatx and the dtype policy are restored after."""
    import keras

    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield keras
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(old_policy)
