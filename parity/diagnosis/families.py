"""The layer families' config rules (:data:`parity.core.families.FAMILIES`, each family's ``rules``) as structure
rules of the diagnosis: registered for every tap kind (a family rule reads the kind itself), each hit
``(cause, message, fix, evidence)`` a finding of the structure stage. A new family's rules arrive here with its
entry in the family table; nothing in the diagnosis names them."""
from __future__ import annotations

from typing import Callable

from parity.core.families import FAMILIES
from parity.core.results import Finding
from parity.core.spec import Tap
from parity.diagnosis.registry import ANY_KIND, structure_rule
from parity.diagnosis.structure import structural


def _as_structure_rule(family: str, rule: Callable) -> Callable:
    def family_rule(tap: Tap, ref: dict, port: dict) -> list[Finding]:
        return [structural(tap, *hit) for hit in rule(tap.kind, ref, port)]

    family_rule.__name__ = f"{family}.{getattr(rule, '__name__', 'rule')}"
    family_rule.__doc__ = getattr(rule, "__doc__", None)
    return family_rule


for _family in FAMILIES.values():
    for _rule in _family.rules:
        structure_rule(ANY_KIND, family=_family.name)(_as_structure_rule(_family.name, _rule))
