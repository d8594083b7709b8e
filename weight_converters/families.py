"""One table of the per-family converters (``weight_converters/<family>.py``): tap kind -> the object with
``KINDS``, ``var_to_torch``, ``var_to_keras``, ``layer_to_torch``, ``layer_to_keras``, ``torch_keys``.
:mod:`weight_converters.keras` dispatches to it; a new family adds its module here and nowhere else."""
from __future__ import annotations

from weight_converters import attention, conv1d, conv3d, dense, embedding, normalization, recurrent, transposed

#: the family converter modules (or objects), in the order they register their kinds
MODULES = (recurrent, embedding.FAMILY, normalization.FAMILY, dense.FAMILY, attention, transposed.FAMILY,
           conv1d.FAMILY, conv3d.FAMILY)
#: tap kind -> converter
CONVERTERS = {kind: mod for mod in MODULES for kind in mod.KINDS}
#: tap kind -> {Keras variable: torch key} (merged into ``weight_converters.keras.LAYER_VARS``)
FAMILY_VARS = {kind: dict(mod.KINDS[kind]) for kind, mod in CONVERTERS.items()}
