"""Name the cause of a divergence: rules over the structure/config of each aligned layer pair, over the
weight conversion, and over the numeric results. Each rule returns :class:`parity.core.results.Finding` objects
with the layer path, the stage where it shows, the evidence (figures) and a one-line fix.

The rules live by what they judge, each registered in :mod:`parity.diagnosis.registry` (a layer family adds
its own there without touching this module):

- :mod:`~parity.diagnosis.structure`: config rules per aligned pair (eps, momentum, affine, missing
  BatchNorm, bias, kernel, stride, groups, dilation, padding, pooling, LRN, activation, dropout rate);
- :mod:`~parity.diagnosis.families` and :mod:`~parity.diagnosis.family_probes`: the layer families' config
  rules and numeric probes (:data:`parity.core.families.FAMILIES`), read from the family table;
- :mod:`~parity.diagnosis.non_finite`: NaN/Inf, where they first appear and on which side (ranks first);
- :mod:`~parity.diagnosis.forward`: double softmax, dropout left on in eval, flatten order, forward wiring and
  layer order, the weights the port holds after loading;
- :mod:`~parity.diagnosis.train`: BatchNorm kept in eval mode, train-only ops, the running variance's
  n/(n-1), loss reduction and label smoothing;
- :mod:`~parity.diagnosis.optimizer`: lr schedule in the momentum recursion, lr_mult, L2 vs weight decay,
  Adam's epsilon;
- :mod:`~parity.diagnosis.training_config`: a user's own optimizer and loss against the compiled Keras ones;
- :mod:`~parity.diagnosis.shared` (one finding per shared module), :mod:`~parity.diagnosis.alignment` (a user
  pair's alignment table and unaligned layers), :mod:`~parity.diagnosis.initialisation` (initialiser parity).

Three entry points, called by the check:

- :func:`structure_findings` ``(tap, ref_info, port_info)``: the structure rules registered for the tap's kind;
- :func:`numeric_findings` ``(result, outputs)``: the passes over the whole result, then the rules that read
  where and how the stages diverged. They name a cause from the divergence pattern alone (which stage first,
  which tensors, which ratio), and confirm it with a numeric probe when ``outputs`` carries the run
  (``reference_run``, ``torch_side``, ``taps``, ``spec``; a mapping or an object with those attributes): two
  eval forwards that disagree (dropout left on), the input a module really receives (layer order), a permuted
  comparison (flatten order), the loaded weights against the converted ones (reshaped-not-transposed kernels,
  re-initialised layers), the running-variance factor n/(n-1), the implied weight decay of an L2 mismatch,
  the update torch Adam makes with a plain epsilon;
- :func:`attach_stages` ``(result)``: a structural finding gets the first stage where its layer diverged.
"""
from __future__ import annotations

from typing import Any

from parity.core.results import CheckResult, Finding, TensorDiff
from parity.core.spec import Tap
# the rule modules register their rules on import (parity.diagnosis.registry)
from parity.diagnosis import (alignment, families, family_probes, forward, non_finite, optimizer,  # noqa: F401
                              shared, structure, train, training_config)
from parity.diagnosis.common import PROBE_ACTIVATIONS, PROBE_RTOL, Run, base, finding
from parity.diagnosis.registry import result_rules, stage_rules_for, structure_rules_for

__all__ = ["structure_findings", "numeric_findings", "attach_stages", "PROBE_ACTIVATIONS", "PROBE_RTOL"]


def structure_findings(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """Config rules for one aligned pair. ``ref`` from the Keras side's ``layer_info``, ``port`` from the torch
    side's ``module_info``."""
    out: list[Finding] = []
    for rule in structure_rules_for(tap.kind):
        out += rule.fn(tap, ref, port)
    return out


def numeric_findings(result: CheckResult, outputs=None) -> list[Finding]:
    """Rules that read the numeric results (after every stage ran). Returns new findings; the passes over the
    whole result also edit it in place (a user pair's alignment findings, one finding per shared module), and
    a rule that ranks first (non-finite values) puts its finding before every other."""
    run = Run(result, outputs)
    out: list[Finding] = []
    for rule in result_rules():
        out += rule.fn(run) or []
    fd = result.first_divergence  # a property (None when the check passed)
    if fd is None or fd[1] is None:
        return out
    stage, diff = fd
    out += _first_divergence_findings(run, stage, diff)
    known = {f.path for f in result.findings if f.severity == "error"} | {f.path for f in out if f.severity == "error"}
    if not known:
        if any(s.name == "structure" for s in result.stages):
            msg, fix = (f"first divergence here in {stage.name}; no configuration difference found",
                        "compare this layer's weights and code by hand (see the isolated stage)")
        else:  # no config rule ran: say so instead of implying none would match
            msg, fix = (f"first divergence here in {stage.name}; no cause named: the structure stage (the "
                        "configuration rules: eps, momentum, padding, strides, bias) was not run",
                        "add structure to --stages (or run all stages) to compare this layer's configuration")
        out.append(finding("unexplained", base(diff.path), msg, fix, stage.name, evidence=diff.describe(),
                           severity="warning"))
    return out


def _first_divergence_findings(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """The first registered rule for the stage that names a cause. A rule that ranks first puts its findings at
    the front of the result's findings (and returns nothing here)."""
    explained = bool(run.errors_at(base(diff.path)))
    for rule in stage_rules_for(stage.name):
        if explained and not rule.when_explained:
            continue
        try:
            found = rule.fn(run, stage, diff)
        except Exception as exc:  # noqa: BLE001  (a failing probe must never hide the result)
            found = [finding("unexplained", base(diff.path), f"diagnosis probe failed ({type(exc).__name__}: "
                             f"{exc})", "compare this layer by hand", stage.name, severity="warning")]
        if found:
            if rule.rank_first:
                run.result.findings[:0] = found
                return []
            return found
    return []


def attach_stages(result: CheckResult) -> None:
    """Set each structural finding's ``stage`` to the first numeric stage where its layer diverged."""
    order = [s for s in result.stages if s.name != "structure" and not s.skipped]
    for f in result.findings:
        if f.stage not in (None, "structure"):
            continue
        for s in order:
            hit = next((t for t in s.tensors if not t.passed and base(t.path) == f.path), None)
            if hit is not None:
                f.stage = s.name
                f.evidence = (f.evidence + "; " if f.evidence else "") + f"{s.name}: max|Δ| {hit.max_abs:.3g}"
                break
