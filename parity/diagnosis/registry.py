"""The rule table the diagnosis reads: structure rules by tap kind, numeric rules by stage, and passes over
the whole result.

A module that knows a layer family (or a stage) registers its rules here when it is imported, and the entry
points of :mod:`parity.diagnosis` iterate the table without naming any rule::

    from parity.diagnosis.registry import stage_rule, structure_rule

    @structure_rule("batchnorm", family="normalization")
    def bn_config(tap, ref, port) -> list[Finding]: ...      # config of one aligned layer pair

    @stage_rule("forward_eval", family="recurrent", order=40)
    def gate_order(run, stage, diff) -> list[Finding]: ...   # the first divergence of a check

The layer families of :data:`parity.core.families.FAMILIES` need no registration of their own: their config
rules and numeric probes are read from the family table (:mod:`parity.diagnosis.families`,
:mod:`parity.diagnosis.family_probes`).

Structure rules of a kind run in registration order, then those registered for :data:`ANY_KIND`, and all
their findings are kept. Stage rules run for the first divergence of a check, lowest ``order`` first
(registration order within one order), rules registered for :data:`ANY_STAGE` before the stage's own; the
first rule that returns findings ends the search. A stage
rule with ``when_explained=False`` is skipped when a structure finding already explains the diverging layer;
``rank_first=True`` puts its findings before every other finding of the check (a cause that makes the others
moot, such as non-finite values). Result rules (``@result_rule``) run on every check, in ``order``, before
the stage rules: ``fn(run) -> list[Finding] | None``; they may also rewrite the result's findings in place
(one finding per shared module instead of one per tap).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: the stage key of a rule that applies to the first divergence whatever its stage
ANY_STAGE = "*"
#: the kind key of a structure rule that sees every tap (it reads ``tap.kind`` itself)
ANY_KIND = "*"
#: ``order`` of a stage rule that does not give one
DEFAULT_ORDER = 50


@dataclass(frozen=True)
class StageRule:
    """One numeric rule: ``fn(run, stage, diff) -> list[Finding]`` (see the module docstring)."""

    fn: Callable
    stages: tuple[str, ...]
    family: str = "core"
    order: int = DEFAULT_ORDER
    when_explained: bool = False
    rank_first: bool = False

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


@dataclass(frozen=True)
class StructureRule:
    """One config rule: ``fn(tap, ref_info, port_info) -> list[Finding]`` for taps of the given kinds."""

    fn: Callable
    kinds: tuple[str, ...]
    family: str = "core"

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


@dataclass(frozen=True)
class ResultRule:
    """One pass over the whole result: ``fn(run) -> list[Finding] | None`` (see the module docstring)."""

    fn: Callable
    family: str = "core"
    order: int = DEFAULT_ORDER

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


#: tap kind -> structure rules, in registration order
STRUCTURE_RULES: dict[str, list[StructureRule]] = {}
#: stage name (or :data:`ANY_STAGE`) -> stage rules, in registration order
RULES_BY_STAGE: dict[str, list[StageRule]] = {}
#: passes over the whole result, in registration order (run sorted by ``order``)
RESULT_RULES: list[ResultRule] = []


def structure_rule(*kinds: str, family: str = "core"):
    """Decorator: register ``fn(tap, ref_info, port_info) -> list[Finding]`` for taps of ``kinds``."""
    def register(fn):
        rule = StructureRule(fn, tuple(kinds), family)
        for kind in kinds:
            STRUCTURE_RULES.setdefault(kind, []).append(rule)
        return fn
    return register


def stage_rule(*stages: str, family: str = "core", order: int = DEFAULT_ORDER, when_explained: bool = False,
               rank_first: bool = False):
    """Decorator: register ``fn(run, stage, diff) -> list[Finding]`` for the first divergence in ``stages``
    (or :data:`ANY_STAGE`)."""
    def register(fn):
        rule = StageRule(fn, tuple(stages), family, order, when_explained, rank_first)
        for stage in stages:
            RULES_BY_STAGE.setdefault(stage, []).append(rule)
        return fn
    return register


def result_rule(family: str = "core", order: int = DEFAULT_ORDER):
    """Decorator: register ``fn(run) -> list[Finding] | None``, run on every check before the stage rules."""
    def register(fn):
        RESULT_RULES.append(ResultRule(fn, family, order))
        return fn
    return register


def unregister(fn: Callable) -> None:
    """Remove every registration of ``fn`` (tests that register a rule of their own)."""
    RESULT_RULES[:] = [r for r in RESULT_RULES if r.fn is not fn]
    for table in (STRUCTURE_RULES, RULES_BY_STAGE):
        for key in list(table):
            table[key] = [r for r in table[key] if r.fn is not fn]
            if not table[key]:
                del table[key]


def structure_rules_for(kind: str) -> list[StructureRule]:
    """The structure rules for a tap of ``kind``: the kind's own, then those for every kind (:data:`ANY_KIND`)."""
    return list(STRUCTURE_RULES.get(kind, ())) + list(STRUCTURE_RULES.get(ANY_KIND, ()))


def stage_rules_for(stage: str) -> list[StageRule]:
    """The rules for a first divergence in ``stage``, in the order they are tried."""
    rules = RULES_BY_STAGE.get(ANY_STAGE, []) + RULES_BY_STAGE.get(stage, [])
    return sorted(rules, key=lambda r: (r.order, r.stages[0] != ANY_STAGE))


def result_rules() -> list[ResultRule]:
    return sorted(RESULT_RULES, key=lambda r: r.order)


def families() -> dict[str, list[str]]:
    """family -> the names of its registered rules (structure and stage), for listings and tests."""
    out: dict[str, list[str]] = {}
    every = [r for table in (STRUCTURE_RULES, RULES_BY_STAGE) for rules in table.values() for r in rules]
    for r in every + RESULT_RULES:
        names = out.setdefault(r.family, [])
        if r.name not in names:
            names.append(r.name)
    return out
