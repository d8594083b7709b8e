"""PyTorch ports and the TF/Caffe-compatible layers torch lacks. Never imports tensorflow or keras."""
from parity import env as _env  # noqa: F401  (environment before torch loads oneDNN)
