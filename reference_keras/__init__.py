"""Keras 3 reference models, as published. Never imports torch."""
from parity import env as _env  # noqa: F401  (environment before TensorFlow loads)
