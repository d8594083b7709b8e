"""The layer families, one module each, in ONE table (:data:`FAMILIES`) that the tap kinds
(``parity.core.spec``), the converters (``weight_converters/<family>.py``), the structure stage, the diagnosis
and the alignment read generically. Adding a family = one ``parity/core/families/<family>.py`` (classes, tap
kinds, config keys, conventions, rules, refusals), one ``weight_converters/<family>.py``, one line below.

Nothing here imports a framework: torch modules and Keras configs are read through plain attributes and
dicts.
"""
from __future__ import annotations

from typing import Any, Iterable

from parity.core.errors import UsageError
from parity.core.families import (activations, attention, conv1d, conv2d, conv3d, dense, embedding, normalization,
                                  recurrent, upsampling)
from parity.core.families.base import Family, Named, RuleHit, close  # noqa: F401  (public types)

#: every family, by name (order: the 2-D CNN core first, then as they were added)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    conv2d.FAMILY, dense.FAMILY, activations.FAMILY, normalization.FAMILY, embedding.FAMILY, recurrent.FAMILY,
    attention.FAMILY, upsampling.FAMILY, conv1d.FAMILY, conv3d.FAMILY,
)}

#: Keras layers that carry no computation of their own a check could get wrong
NEUTRAL_KERAS = ("InputLayer",)
#: MultiHeadAttention's sub-layers, whose variables all share the names ``kernel`` / ``bias``
ATTENTION_SUBLAYERS = ("query", "key", "value", "attention_output")


def new_kinds() -> tuple[str, ...]:
    """Tap kinds the families add to the 2-D CNN set (``parity.core.spec.TAP_KINDS`` appends them)."""
    out: list[str] = []
    for f in FAMILIES.values():
        out += [k for k in f.kinds if k not in out]
    return tuple(out)


def new_weighted_kinds() -> tuple[str, ...]:
    out: list[str] = []
    for f in FAMILIES.values():
        out += [k for k in f.weighted if k in f.kinds and k not in out]
    return tuple(out)


def tolerance_floors(taps, structure: dict, modules: dict, dtype: str) -> list[tuple[str, float, tuple]]:
    """(tap path, rtol, RuleHit) for each aligned layer whose family declares a difference the port cannot remove
    (:attr:`Family.tolerance_floor`)."""
    out = []
    for tap in taps:
        family = family_of_kind(tap.kind)
        mod = modules.get(tap.port)
        if family is None or family.tolerance_floor is None or mod is None:
            continue
        hit = family.tolerance_floor(structure.get(tap.ref) or {}, type(mod).__name__, dtype)
        if hit is not None:
            out.append((tap.path, hit[0], hit[1]))
    return out


def family_of_kind(kind: str) -> Family | None:
    for f in FAMILIES.values():
        if kind in f.kinds or kind in f.weighted:
            return f
    return None


def keras_kind(cls: str, config: dict | None = None) -> str | None:
    """Tap kind of a Keras layer class (None: no family covers it)."""
    for f in FAMILIES.values():
        if f.keras_kind is not None:
            k = f.keras_kind(cls, config or {})
            if k is not None:
                return k
        if cls in f.keras_classes:
            return f.keras_classes[cls]
    return None


def torch_kind(cls: str) -> str | None:
    for f in FAMILIES.values():
        if cls in f.torch_classes:
            return f.torch_classes[cls]
    return None


#: structural recognisers of torch modules that compute one layer through children (hand-written attention)
TORCH_UNITS = (attention.torch_unit,)


def torch_unit_kind(module) -> str | None:
    """The tap kind of a torch module that is one layer made of children, by its structure (None: not one)."""
    for match in TORCH_UNITS:
        kind = match(module)
        if kind is not None:
            return kind
    return None


def torch_unit_roles(module) -> tuple[str, ...] | None:
    """The child paths of a one-layer unit whose children have other names than the converter's (a hand-written
    attention's projections in an ``nn.ModuleList``), in the converter's order; None: the usual names."""
    return attention.unit_roles(module)


def keras_info(cls: str, config: dict) -> dict[str, Any]:
    """The family config keys of one Keras layer (``layer.get_config()``) for the structure stage."""
    info: dict[str, Any] = {}
    for f in FAMILIES.values():
        for k in f.keras_keys:
            if k in config and k not in info and isinstance(config[k], (int, float, str, bool, list, tuple,
                                                                        type(None))):
                info[k] = list(config[k]) if isinstance(config[k], tuple) else config[k]
        if f.keras_info is not None:
            info.update(f.keras_info(cls, config))
    return info


def torch_info(module) -> dict[str, Any]:
    """The family attributes of one torch module (plain attribute reads: no torch import)."""
    info: dict[str, Any] = {}
    for f in FAMILIES.values():
        for k in f.torch_attrs:
            v = getattr(module, k, None)
            if k not in info and v is not None and not callable(v) and isinstance(v, (int, float, str, bool,
                                                                                     tuple, list)):
                info[k] = list(v) if isinstance(v, tuple) else v
        if f.torch_info is not None:
            info.update(f.torch_info(module))
    return info


def config_findings(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    """Every family rule's hits for one aligned pair: ``[(cause, message, fix, evidence)]``."""
    out: list[RuleHit] = []
    for f in FAMILIES.values():
        for rule in f.rules:
            out += rule(kind, ref, port)
    return out


def has_probes(kind: str) -> bool:
    """Some family has numeric probes for layers of this tap kind."""
    return kind == "activation" or any(f.probes and (kind in f.kinds or kind in f.weighted)
                                       for f in FAMILIES.values())


def probe(kind: str, evidence: dict) -> list[RuleHit]:
    """The family probes' hits for one diverging layer (see :attr:`Family.probes`)."""
    out: list[RuleHit] = []
    for f in FAMILIES.values():
        for p in f.probes:
            hit = p(kind, evidence)
            if hit:
                out.append(hit)
    return out


def refusal(cls: str, config: dict | None = None) -> str | None:
    """Why a Keras layer cannot be checked yet (None: it can)."""
    config = config or {}
    if cls in NEUTRAL_KERAS:
        return None
    for f in FAMILIES.values():
        if f.refuse is not None:
            why = f.refuse(cls, config)
            if why:
                return why
    if keras_kind(cls, config) is None:
        return f"{cls} is not yet supported (no layer family covers it: see parity.core.families.FAMILIES)"
    return None


def unsupported(layers: Iterable) -> list[str]:
    """One line per reference layer that cannot be checked yet, naming the layer. ``layers``: Keras layer
    objects, ``(name, class, config)`` tuples or class names."""
    out = []
    for layer in layers:
        if isinstance(layer, str):
            name, cls, cfg = layer, layer, {}
        elif isinstance(layer, tuple):
            name, cls, cfg = layer
        else:
            name, cls = getattr(layer, "name", "?"), type(layer).__name__
            cfg = layer.get_config() if hasattr(layer, "get_config") else {}
        why = refusal(cls, cfg)
        if why:
            out.append(f"layer {name!r} ({cls}): {why}")
    return out


def keras_var_name(layer: str, name: str, path: str = "") -> str:
    """A Keras variable's name inside its layer: ``name`` (``kernel``), or ``forward/kernel`` /
    ``backward/kernel`` inside a Bidirectional wrapper (whose two directions use the same names; Keras 3 paths
    read ``<layer>/forward_<inner>/<cell>/kernel``: keras/src/layers/rnn/bidirectional.py), ``query/kernel``
    inside a MultiHeadAttention (keras/src/layers/attention/multi_head_attention.py)."""
    parts = path.split("/") if path else []
    if len(parts) > 2 and parts[0] == layer:
        for direction in ("forward", "backward"):
            if parts[1].startswith(direction + "_"):
                return f"{direction}/{name}"
        if parts[1] in ATTENTION_SUBLAYERS:  # MultiHeadAttention: <layer>/query/kernel
            return f"{parts[1]}/{name}"
    return name


def keras_call_kwargs(layer) -> dict[str, Any]:
    """The keyword arguments of a Keras layer's first call in its model (``use_causal_mask=True``,
    ``attention_mask=``) as ``{"call_<name>": value}``, a tensor given as ``"tensor"`` (read, never run): the
    family tables see them next to the layer's config."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    kwargs = getattr(getattr(nodes[0], "arguments", None), "kwargs", None) if nodes else None
    return {f"call_{k}": (v if isinstance(v, (bool, int, float, str, type(None))) else "tensor")
            for k, v in (kwargs or {}).items()}


def refuse_unsupported(layers: Iterable, tapped: dict[str, str] | None = None, *, variants_only: bool = False) -> None:
    """Raise :class:`parity.core.errors.UsageError` (one line, exit 2) before any conversion when a reference
    layer cannot be checked: a variant its family refuses (``GRU(reset_after=False)``), or a layer with
    weights that no family covers and no tap of the pair declares (its weights would silently not transfer).
    ``layers``: Keras layer objects; ``tapped``: ``{layer name: tap kind}`` the pair declares. ``variants_only``:
    only the variants families refuse (user mode, before the port is traced: a call the port cannot mirror, such
    as a mask given as a model input, is named before the port's forward is run with it)."""
    tapped = tapped or {}
    bad = []
    for layer in layers:
        cls = type(layer).__name__
        cfg = {**(layer.get_config() if hasattr(layer, "get_config") else {}), **keras_call_kwargs(layer)}
        why = None
        for f in FAMILIES.values():
            why = why or (f.refuse(cls, cfg) if f.refuse is not None else None)
        if why is None and not variants_only and getattr(layer, "weights", None) and keras_kind(cls, cfg) is None and \
                tapped.get(layer.name, "other") == "other":
            why = f"{cls} is not yet supported (no layer family converts its weights)"
        if why:
            bad.append(f"layer {layer.name!r} ({cls}): {why}")
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"expected reference layers parity can check. Received: {bad[0]}{more}. Remove or "
                         "replace the layer, or check the supported part of the model on its own.")


def conventions() -> list[tuple[str, Named]]:
    """``[(family, convention)]`` over the table (README coverage, ``parity list --conventions``)."""
    return [(f.name, c) for f in FAMILIES.values() for c in f.conventions]
