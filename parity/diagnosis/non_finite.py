"""Non-finite values (NaN, +-Inf): where they first appear and on which side (reference, port or both).

A tensor holding them always fails (:func:`parity.core.tensors.tensor_diff`: a NaN equal to a NaN proves
nothing). When the first divergence of a check is such a tensor, this cause ranks before every other finding
and no other rule guesses from its numbers (a NaN makes two eval forwards "differ", which would otherwise
read as dropout left on in eval). When non-finite values appear only after a finite first divergence, a
warning says where.
"""
from __future__ import annotations

import math

import numpy as np

from parity.core.results import STAGE_ORDER, Finding, TensorDiff
from parity.core.tensors import non_finite_counts, non_finite_side
from parity.diagnosis.common import Run, base, finding
from parity.diagnosis.family_probes import family_probes
from parity.diagnosis.registry import ANY_STAGE, result_rule, stage_rule

#: the BatchNorm variable whose negative values make ``sqrt(var + eps)`` NaN in an eval forward
MOVING_VARIANCE = "moving_variance"
#: layers named in the evidence when the layer itself holds nothing suspicious
MAX_LAYERS_NAMED = 3

#: side -> (where, what it means, fix)
WHAT = {
    "both": ("on both sides",
             "the weights or the input hold values this layer turns into NaN/Inf (two NaNs that agree prove "
             "nothing)",
             "check the weights file and the input at this layer (a negative BatchNorm moving_variance, a zero "
             "variance with eps 0, an overflow)"),
    "port": ("in the port only", "the port computes NaN/Inf where the reference is finite",
             "look in the port's forward at this layer for log(0), a division by zero, sqrt of a negative number "
             "or an overflow (a missing eps, a float16 cast)"),
    "reference": ("in the reference only", "the reference computes NaN/Inf where the port is finite",
                  "check the reference model and its weights at this layer (log(0), a division by zero, sqrt of "
                  "a negative number, an overflow)"),
}


@stage_rule(ANY_STAGE, order=0, when_explained=True, rank_first=True)
def non_finite_first(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """The first divergence holds NaN/Inf: that is the cause, and no other rule reads its numbers."""
    counts = non_finite_counts(diff)
    if counts is None:
        return []
    if non_finite_side(counts) == "port":
        # a layer family that explains the NaN names it (a causal mask of the inverted polarity masks a whole row:
        # the softmax of nothing)
        named = family_probes(run, stage, diff)
        if named:
            return named
    return [_finding(run, stage.name, diff, counts, "error")]


@result_rule(order=90)
def non_finite_later(run: Run) -> list[Finding]:
    """A warning where NaN/Inf first appear when the first divergence itself is finite."""
    fd = run.result.first_divergence
    if fd is None or fd[1] is None or non_finite_counts(fd[1]) is not None:
        return []
    ordered = sorted(run.result.stages, key=lambda s: STAGE_ORDER.index(s.name) if s.name in STAGE_ORDER else 99)
    for st in ordered:
        for t in st.tensors:
            counts = non_finite_counts(t)
            if counts is not None:
                return [_finding(run, st.name, t, counts, "warning")]
    return []


def _finding(run: Run, stage: str, diff: TensorDiff, counts: tuple[int, int], severity: str) -> Finding:
    side = non_finite_side(counts)
    where, what, fix = WHAT[side]
    path = base(diff.path)
    suspects = _weights_evidence(run, path) + _input_evidence(run)
    if not suspects and side == "both" and _is_inf(diff):
        suspects = [_overflow(run, path)]
    ev = [diff.note or f"reference {counts[0]}, port {counts[1]} non-finite elements"]
    if diff.index is not None:
        ev.append(f"first at index {diff.index}: reference {diff.ref_value:.6g}, port {diff.port_value:.6g}")
    return finding("non_finite", path, f"non-finite values (NaN/Inf) {where}, first at {diff.path} in {stage}: "
                   + (suspects[0] if suspects else what), fix, stage, evidence="; ".join(ev + suspects),
                   severity=severity)


def _is_inf(diff: TensorDiff) -> bool:
    """The first non-finite value is an Inf (not a NaN) on every side that has one."""
    vals = [v for v in (diff.ref_value, diff.port_value) if v is not None and not math.isfinite(v)]
    return bool(vals) and all(math.isinf(v) for v in vals)


def _overflow(run: Run, path: str) -> str:
    """An Inf from finite weights and inputs: the layer's outputs overflow the dtype's range."""
    layer = run.ref_layer(path)
    weights = (run.ref.weights.get(layer) or {}) if run.ref is not None and layer else {}
    sizes = [f"{layer}/{var} max |w| {float(np.max(np.abs(w))):.3g}" for var, w in weights.items()
             if np.asarray(w).size and np.issubdtype(np.asarray(w).dtype, np.floating)]
    return "the outputs overflow the dtype's range (Inf)" + (f" ({', '.join(sizes)})" if sizes else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _suspicious(layer: str, weights: dict) -> list[str]:
    out = []
    for var, w in weights.items():
        a = np.asarray(w)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            out.append(f"{layer}/{var} holds {_count(bad, 'non-finite value')}")
        if var == MOVING_VARIANCE and (a < 0).any():
            out.append(f"{layer}/{var} holds {_count(int(np.count_nonzero(a < 0)), 'negative value')} (min "
                       f"{float(np.nanmin(a)):.3g}): sqrt(moving_variance + epsilon) is NaN there")
    return out


def _weights_evidence(run: Run, path: str) -> list[str]:
    """Non-finite or negative-variance weights of the reference: this layer's first, else any layer's."""
    if run.ref is None or getattr(run.ref, "weights", None) is None:
        return []
    layer = run.ref_layer(path)
    own = _suspicious(layer, run.ref.weights.get(layer) or {}) if layer else []
    if own:
        return own
    found = []
    for name, ws in run.ref.weights.items():
        found += _suspicious(name, ws or {})
        if len(found) >= MAX_LAYERS_NAMED:
            break
    return found[:MAX_LAYERS_NAMED]


def _input_evidence(run: Run) -> list[str]:
    inputs = getattr(run.ref, "inputs", None) if run.ref is not None else None
    if not inputs:
        return []
    x = np.asarray(inputs[0])
    bad = int(np.count_nonzero(~np.isfinite(x))) if np.issubdtype(x.dtype, np.floating) else 0
    return [f"the input batch holds {_count(bad, 'non-finite value')}"] if bad else []
