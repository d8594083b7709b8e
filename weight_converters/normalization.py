"""LayerNormalization and GroupNormalization, Keras <-> torch, as pure numpy: ``gamma``/``beta`` (C,) ==
``weight``/``bias`` (C,), copied as is (BatchNormalization stays in :mod:`weight_converters.keras`).

The layouts agree; the conventions are config (eps Keras 1e-3 vs torch 1e-5, normalised axes, GroupNorm on
channels-last inputs: ``parity.core.families.normalization``). Origins: keras/src/layers/normalization/
layer_normalization.py, group_normalization.py (``gamma``, ``beta``), torch/nn/modules/normalization.py
(``LayerNorm.weight``/``bias``, ``GroupNorm.weight``/``bias``)."""
from __future__ import annotations

from weight_converters.renamed import RenamedFamily

LAYERNORM_NAMES = "LayerNormalization gamma/beta -> LayerNorm weight/bias (same layout)"
GROUPNORM_NAMES = "GroupNormalization gamma/beta -> GroupNorm weight/bias (same layout)"

FAMILY = RenamedFamily(
    {"layernorm": {"gamma": "weight", "beta": "bias"}, "groupnorm": {"gamma": "weight", "beta": "bias"}},
    {"layernorm": LAYERNORM_NAMES, "groupnorm": GROUPNORM_NAMES})
KINDS = FAMILY.KINDS
