"""PReLU, Keras <-> torch, as pure numpy (Dense stays in :mod:`weight_converters.keras`).

Keras ``alpha`` has the input's shape without the batch axis, with size 1 on every ``shared_axes`` axis
(keras/src/layers/activations/prelu.py, ``build``); torch ``PReLU.weight`` is (C,) for the channel axis or (1,)
for one slope (torch/nn/modules/activation.py). Only those two torch layouts exist: alpha must vary along the
channel (last, channels-last) axis alone or not at all; any other sharing is refused (strict)."""
from __future__ import annotations

import numpy as np

from weight_converters.renamed import RenamedFamily
from weight_converters.report import ConversionError, ConversionReport

PRELU_SHARED = "PReLU alpha (1,..,1,C) shared over all but the channel axis -> weight (C,)"
PRELU_NOT_SHARED = ("PReLU alpha varies along a non-channel axis (Keras shared_axes misses a spatial/time "
                    "axis): torch nn.PReLU holds one slope per channel only")


def _to_torch(kind, var, a):
    if a.ndim and any(d != 1 for d in a.shape[:-1]):
        raise ConversionError(f"{PRELU_NOT_SHARED}; alpha shape {tuple(a.shape)}", ConversionReport())
    return a.reshape(-1)


def _to_keras(kind, var, w, shape):
    return w.reshape(shape) if shape is not None else w.reshape(-1)


FAMILY = RenamedFamily({"prelu": {"alpha": "weight"}}, {"prelu": PRELU_SHARED}, _to_torch, _to_keras)
KINDS = FAMILY.KINDS
