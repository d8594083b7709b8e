"""What a layer family declares (the types every ``parity/core/families/<family>.py`` fills in). Plain data and
pure functions: no framework, no other project module (``parity.core.spec`` reads the family table)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: a config rule's answer: (cause id, message, one-line fix, evidence)
RuleHit = tuple[str, str, str, str]


@dataclass(frozen=True)
class Named:
    """A convention with its value on each side and the public source that fixes it."""

    name: str
    keras: str
    torch: str
    origin: str


@dataclass(frozen=True)
class Family:
    """One layer family.

    ``keras_classes`` / ``torch_classes``: class name -> tap kind. ``weighted``: the tap kinds whose weights
    the family's converter (``converter``, a ``weight_converters`` module name) handles. ``keras_keys``: the
    Keras config keys the structure stage reads (``layer.get_config()``); ``keras_info`` flattens nested
    configs (Bidirectional's inner layer). ``torch_attrs``: module attributes read the same way;
    ``torch_info`` adds derived facts (a trainable ``bias_hh``). ``rules``: ``(kind, ref_info, port_info) ->
    [RuleHit]``, the config comparison that names the family's conventions. ``refuse``: ``(class, config) ->
    reason or None`` for variants the port cannot express (checked before any conversion).
    """

    name: str
    summary: str
    keras_classes: dict[str, str]
    torch_classes: dict[str, str]
    weighted: tuple[str, ...] = ()
    converter: str | None = None
    conventions: tuple[Named, ...] = ()
    keras_keys: tuple[str, ...] = ()
    torch_attrs: tuple[str, ...] = ()
    keras_info: Callable[[str, dict], dict[str, Any]] | None = None
    torch_info: Callable[[Any], dict[str, Any]] | None = None
    rules: tuple[Callable[[str, dict, dict], list[RuleHit]], ...] = ()
    refuse: Callable[[str, dict], str | None] | None = None
    #: tap kinds the family adds (its layers' kinds that are not in the 2-D CNN core set)
    kinds: tuple[str, ...] = field(default=())
    #: ``(class, config) -> kind`` where the class alone does not decide it (Bidirectional: its inner layer)
    keras_kind: Callable[[str, dict], str | None] | None = None
    #: numeric probes ``(kind, evidence) -> RuleHit | None`` run on the first divergence; ``evidence`` holds
    #: what the diagnosis could gather: ``want`` / ``got`` (``{torch key suffix: array}``, converted reference
    #: weights and the port's loaded ones), ``ref_out`` / ``port_out`` (the layer's eval outputs), ``ref_info``
    probes: tuple[Callable[[str, dict], RuleHit | None], ...] = ()
    #: ``(ref_info, port module class name, dtype) -> (rtol, RuleHit) | None``: a difference the port cannot
    #: remove (a constant Keras rounds that the torch module cannot be given): every stage of the check is held to
    #: at least ``rtol`` and the hit is reported as a warning saying so
    tolerance_floor: Callable[[dict, str, str], tuple[float, RuleHit] | None] | None = None


def close(a, b, rel: float = 1e-9) -> bool:
    a, b = float(a), float(b)
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
