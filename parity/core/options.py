"""The check's options, validated before any framework is imported: stage names and the optimizer choice."""
from __future__ import annotations

from parity.core.errors import UsageError
from parity.core.spec import OptimizerSpec, PairSpec

ALL_STAGES = ("structure", "forward_eval", "forward_train", "gradients", "step", "isolated")


def parse_stages(text: str | None) -> tuple[str, ...]:
    if not text or text == "all":
        return ALL_STAGES
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in ALL_STAGES]
    if bad:
        raise UsageError(f"--stages: expected a comma list of {', '.join(ALL_STAGES)}. Received: {', '.join(bad)}.")
    return names



def optimizer_spec(spec: PairSpec, optimizer) -> OptimizerSpec:
    if optimizer is None or isinstance(optimizer, OptimizerSpec):
        return optimizer or spec.optimizer
    try:
        return spec.optimizer_for(optimizer)
    except KeyError:
        kinds = sorted({spec.optimizer.kind, *spec.optimizers})
        raise UsageError(f"--optimizer: expected one of {', '.join(kinds)} for pair {spec.name!r}. "
                         f"Received: {optimizer!r}.") from None
