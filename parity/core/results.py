"""Result objects: what every stage returns. Truthy on success, serialisable to canonical JSON
(``to_dict``/``from_dict``), rendered elsewhere (``reports/``, the CLI, the pytest plugin). Nothing here prints.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "parity.report/1"

#: Stage order: also the order in which "first divergence" is searched.
STAGE_ORDER = ("structure", "forward_eval", "forward_train", "gradients", "step", "isolated", "trajectory", "onnx")

#: What each stage of a full check adds: said in :attr:`CheckResult.skipped` when a check ran without it
#: (``--stages`` cut it), so a result that finds the layer but names no cause says which stage would have.
#: The optional legs (``trajectory`` with ``--steps N > 1``, ``onnx`` with ``--onnx``) are listed only when
#: they were asked for and could not run.
STAGE_ADDS = {
    "structure": "it names config causes (BatchNorm eps and momentum, padding, strides, bias, groups, "
                 "activation), parameter-count mismatches and the weight conversion report",
    "forward_eval": "it finds the first divergent layer in inference mode",
    "forward_train": "it compares outputs with batch statistics and the BatchNorm running-statistics update "
                     "(momentum, unbiased variance, dropout left on)",
    "gradients": "it compares the loss and every gradient (loss reduction, regularisation, gradient routing)",
    "step": "it compares the optimizer update and its slots (learning rate, momentum, epsilon placement, "
            "weight decay)",
    "isolated": "it feeds each port module the reference's input to that layer, so one bad layer does not hide "
                "the layers after it",
}
#: Stages whose rules name causes, and the causes in a few words: when the first divergence has no cause
#: and one of these was skipped, the summary line says so.
CAUSE_STAGES = {"structure": "config causes: eps, momentum, padding, strides, bias"}
#: Ranking of a finding's severity (lower first) in :meth:`CheckResult.causes`.
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


def _num(x):
    """JSON-safe float (inf/nan as strings, as canonical JSON has no such literals)."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _unnum(x):
    if isinstance(x, str):
        return float(x)
    return x


@dataclass
class TensorDiff:
    """One compared tensor. ``rel`` = max|Δ| / scale is the smallest ``rtol`` that would have passed it."""

    path: str
    shape: tuple[int, ...]
    max_abs: float
    scale: float
    allowed: float
    rtol: float
    mismatched: int
    numel: int
    index: tuple[int, ...] | None = None
    ref_value: float | None = None
    port_value: float | None = None
    cosine: float | None = None
    note: str = ""
    #: optional extra columns (e.g. ``{"onnx_ort": max_abs}``) shown by renderers
    extra: dict[str, Any] = field(default_factory=dict)
    #: ||ref - port|| / ||ref|| and, under a norm-wise policy (float32 gradients), its bound
    norm_rel: float | None = None
    norm_rtol: float | None = None

    @property
    def passed(self) -> bool:
        if math.isnan(self.max_abs):
            return False
        if self.norm_rtol is not None:
            return self.norm_rel is not None and self.norm_rel <= self.norm_rtol
        return self.mismatched == 0

    @property
    def rel(self) -> float:
        if math.isnan(self.max_abs):
            return math.nan
        if self.scale == 0:
            return 0.0 if self.max_abs == 0 else math.inf
        return self.max_abs / self.scale

    def __bool__(self):
        return self.passed

    def describe(self) -> str:
        """torch.testing-style mismatch text."""
        at = f" at index {self.index}" if self.index is not None else ""
        vals = ""
        if self.ref_value is not None and self.port_value is not None:
            vals = f" (reference {self.ref_value:.6g}, port {self.port_value:.6g})"
        cos = f"; cosine {self.cosine:.6f}" if self.cosine is not None else ""
        if self.norm_rtol is not None:
            cos += f"; norm-wise policy: ||Δ||/||ref|| {self.norm_rel:.3g} (up to {self.norm_rtol:g} allowed)"
        return (f"Mismatched elements: {self.mismatched} / {self.numel}; greatest absolute difference "
                f"{self.max_abs:.3g}{at}{vals} (up to {self.allowed:.3g} allowed = {self.rtol:g} x scale "
                f"{self.scale:.3g}){cos}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("max_abs", "scale", "allowed", "rtol", "ref_value", "port_value", "cosine", "norm_rel", "norm_rtol"):
            d[k] = _num(d[k])
        d["shape"] = list(self.shape)
        d["index"] = list(self.index) if self.index is not None else None
        d["rel"] = _num(self.rel)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorDiff":
        d = dict(d)
        d.pop("rel", None)
        d.pop("passed", None)
        for k in ("max_abs", "scale", "allowed", "rtol", "ref_value", "port_value", "cosine", "norm_rel", "norm_rtol"):
            d[k] = _unnum(d.get(k))
        d["shape"] = tuple(d["shape"])
        d["index"] = tuple(d["index"]) if d.get("index") is not None else None
        return cls(**d)


@dataclass
class Finding:
    """A named cause with evidence and a one-line fix."""

    cause: str
    path: str
    message: str
    fix: str = ""
    stage: str | None = None
    evidence: str = ""
    severity: str = "error"  # error: explains a failure; warning: differs, harmless here; info: note

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(**d)

    def line(self) -> str:
        where = f" [{self.stage}]" if self.stage else ""
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.path}{where}: {self.message}{fix}"


@dataclass
class StageResult:
    name: str
    tensors: list[TensorDiff] = field(default_factory=list)
    #: free-form per-row data (the structure stage's layer table, param reconciliation)
    rows: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    #: failures that are not tensors (structure mismatches); each a message
    errors: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        return not self.errors and all(t.passed for t in self.tensors)

    def __bool__(self):
        return self.passed

    @property
    def first_divergence(self) -> TensorDiff | None:
        for t in self.tensors:
            if not t.passed:
                return t
        return None

    @property
    def worst(self) -> TensorDiff | None:
        if not self.tensors:
            return None
        return max(self.tensors, key=lambda t: (math.inf if math.isnan(t.rel) else t.rel))

    def __repr__(self) -> str:
        first = self.first_divergence
        extra = f", skipped={self.skipped!r}" if self.skipped else ""
        extra += f", first_divergence={first.path!r}" if first is not None else ""
        extra += f", errors={len(self.errors)}" if self.errors else ""
        return f"StageResult(name={self.name!r}, passed={self.passed}, tensors={len(self.tensors)}{extra})"

    def to_dict(self) -> dict:
        worst = self.worst
        return {
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 4),
            "errors": list(self.errors),
            "worst_rel": _num(worst.rel) if worst is not None else None,
            "worst_path": worst.path if worst is not None else None,
            "first_divergence": self.first_divergence.path if self.first_divergence is not None else None,
            "tensors": [t.to_dict() for t in self.tensors],
            "rows": self.rows,
            "findings": [f.to_dict() for f in self.findings],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        return cls(name=d["name"], tensors=[TensorDiff.from_dict(t) for t in d.get("tensors", [])],
                   rows=d.get("rows", []), findings=[Finding.from_dict(f) for f in d.get("findings", [])],
                   skipped=d.get("skipped"), seconds=d.get("seconds", 0.0), errors=d.get("errors", []),
                   info=d.get("info", {}))


class ParityFailure(AssertionError):
    """A failed check, raised by :meth:`CheckResult.raise_for_failure` / :meth:`CheckResult.assert_ok`.
    An ``AssertionError``, so pytest shows it as a test failure; the first line of the message is the summary
    (first divergence and cause); ``.result`` is the :class:`CheckResult`."""

    def __init__(self, result: "CheckResult", message: str | None = None):
        super().__init__(message if message is not None else str(result))
        self.result = result


ParityFailure.__module__ = "parity"  # public as parity.ParityFailure (and shorter in pytest's summary line)


@dataclass
class Skipped:
    """A stage a check did not run: why, and what it would have added (:data:`STAGE_ADDS`)."""

    stage: str
    reason: str
    adds: str = ""

    def line(self) -> str:
        return f"{self.stage} stage skipped ({self.reason})" + (f": {self.adds}" if self.adds else "")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(eq=False)
class Divergence:
    """Where a check first diverged: the stage, the tensor (None where the stage failed without one:
    structure errors, a port that raised) and the finding that explains it (None when no rule named one).
    Unpacks as ``stage, tensor = result.first_divergence``."""

    stage: StageResult
    tensor: TensorDiff | None
    cause: Finding | None = None

    @property
    def path(self) -> str | None:
        return self.tensor.path if self.tensor is not None else None

    @property
    def where(self) -> str:
        """``forward_eval base/bn1``; the stage alone when no tensor diverged."""
        return f"{self.stage.name} {self.path}" if self.path else self.stage.name

    def describe(self) -> str:
        """The torch.testing-style detail of the tensor, or the stage's errors."""
        if self.tensor is not None:
            return self.tensor.describe()
        return "\n".join(self.stage.errors) or "failed"

    def __iter__(self):
        return iter((self.stage, self.tensor))

    def __getitem__(self, i):
        return (self.stage, self.tensor)[i]

    def __call__(self) -> "Divergence":
        """Itself: ``result.first_divergence()`` reads as the property does where a divergence exists (a passing
        result's property is None: test it before calling)."""
        return self

    def __repr__(self) -> str:
        cause = f", cause={self.cause.cause!r}" if self.cause is not None else ""
        return f"Divergence({self.where!r}{cause})"


@dataclass
class CheckResult:
    """The whole check: truthy when every stage passed. ``str(result)`` is the summary and the first cause;
    ``result.raise_for_failure()`` raises :class:`ParityFailure` (an ``AssertionError``) when it failed."""

    pair: str
    dtype: str
    device: str
    seed: int
    batch: int
    optimizer: dict
    config: dict
    stages: list[StageResult] = field(default_factory=list)
    #: named causes (severity ``error``: explains a failure; ``warning``: differs, harmless here)
    findings: list[Finding] = field(default_factory=list)
    conversion: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0
    reference_source: str = "keras"  # or "trace:<path>"
    #: initialisation parity (the freshly built port's initialisers against the reference's): matters for
    #: training from scratch, never evidence of a divergence here (the check copies the reference's weights)
    initialisation: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    def __bool__(self):
        return self.passed

    def stage(self, name: str) -> StageResult | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None

    def _ordered(self) -> list[StageResult]:
        return sorted(self.stages, key=lambda s: STAGE_ORDER.index(s.name) if s.name in STAGE_ORDER else 99)

    @property
    def first_divergence(self) -> Divergence | None:
        """The first numeric divergence in stage order, else the first failed stage (structure errors);
        None when the check passed. Same kind of member as :attr:`StageResult.first_divergence`."""
        ordered = self._ordered()
        for s in ordered:  # a structural verdict (``info["verdict"]``: e.g. an incomplete alignment) comes first
            if s.info.get("verdict") and not s.passed:
                return Divergence(s, None, self.cause_for(s.info["verdict"]))
        for s in ordered:
            if s.name != "structure" and s.first_divergence is not None:
                return Divergence(s, s.first_divergence, self.cause_for(s.first_divergence.path))
        for s in ordered:
            if not s.passed:
                diff = s.first_divergence
                return Divergence(s, diff, self.cause_for(diff.path if diff is not None else None))
        return None

    def cause_for(self, path: str | None) -> Finding | None:
        """The finding that best explains a divergence at ``path``: same path first, else the first error."""
        errors = [f for f in self.findings if f.severity == "error"]
        if path is not None:
            base = path.split(":")[0]
            for f in errors:
                if f.path == path or f.path == base:
                    return f
        return errors[0] if errors else None

    def causes(self) -> list[Finding]:
        """Every finding, as a person reads them: the first divergence's cause first, then by severity
        (error, warning, info), by how early the finding shows (stage order, then the position of its
        layer's first failed tensor in that stage), then as found."""
        fd = self.first_divergence
        first = fd.cause if fd is not None else None
        position: dict[tuple[str, str], int] = {}
        for s in self.stages:
            for i, t in enumerate(s.tensors):
                if not t.passed:
                    position.setdefault((s.name, t.path.split(":")[0].split("@")[0]), i)

        def key(item):
            n, f = item
            stage = f.stage or "structure"
            return (f is not first, SEVERITY_RANK.get(f.severity, len(SEVERITY_RANK)),
                    STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER),
                    position.get((stage, f.path), math.inf), n)

        return [f for _, f in sorted(enumerate(self.findings), key=key)]

    @property
    def skipped(self) -> list[Skipped]:
        """The stages of a full check (:data:`STAGE_ADDS`) this check did not run, and the ones it ran that
        were skipped (e.g. the ONNX leg without onnxruntime), each with what it would have added."""
        ran = {s.name: s for s in self.stages}
        out = [Skipped(name, "not among the stages run", adds) for name, adds in STAGE_ADDS.items()
               if name not in ran]
        out += [Skipped(s.name, s.skipped, STAGE_ADDS.get(s.name, "")) for s in self._ordered() if s.skipped]
        return out

    def _no_cause_note(self) -> str:
        """Why no cause is named, when a stage that names causes was skipped."""
        missing = [k.stage for k in self.skipped if k.stage in CAUSE_STAGES]
        if not missing:
            return ""
        return "; no cause named: " + "; ".join(f"{m} stage skipped (it names {CAUSE_STAGES[m]})" for m in missing)

    def summary_line(self) -> str:
        n_t = sum(len(s.tensors) for s in self.stages)
        ran = [s.name for s in self.stages if not s.skipped]
        if self.passed:
            worst = [(s.name, s.worst) for s in self.stages if s.worst is not None]
            w = max(worst, key=lambda p: p[1].rel, default=None)
            wtxt = f"; worst {w[0]} {w[1].path} rel {w[1].rel:.1e}" if w else ""
            return (f"PASSED {self.pair} [{self.dtype}, {self.device}, batch {self.batch}]: "
                    f"{len(ran)} stages, {n_t} tensors{wtxt}")
        fd = self.first_divergence
        stage, diff = fd if fd is not None else (None, None)
        cause = fd.cause if fd is not None else None
        ctxt = f"; cause: {cause.message}" if cause else self._no_cause_note()
        if diff is not None:
            if diff.note.startswith("shape mismatch"):
                return f"FAILED: first divergence at {stage.name} {diff.path}: {diff.note}{ctxt}"
            return (f"FAILED: first divergence at {stage.name} {diff.path} max|Δ| {diff.max_abs:.3g} "
                    f"(allowed {diff.allowed:.3g}){ctxt}")
        err = stage.errors[0] if stage is not None and stage.errors else "unknown"
        return f"FAILED: {stage.name if stage is not None else '?'}: {err}{ctxt}"

    def headline(self) -> str:
        """Where and why, in one line a test report can show alone: ``forward_eval base/bn1: BatchNorm eps
        1e-05 in the port, 0.001 in the reference -> set eps=0.001 (Keras default)``; without a named cause, the
        figures and what was skipped; the summary line when the check passed."""
        fd = self.first_divergence
        if fd is None:
            return self.summary_line()
        if fd.cause is not None:
            return f"{fd.where}: {fd.cause.message}" + (f" -> {fd.cause.fix}" if fd.cause.fix else "")
        if fd.tensor is not None:
            what = (fd.tensor.note if fd.tensor.note.startswith("shape mismatch") else
                    f"max|Δ| {fd.tensor.max_abs:.3g} (allowed {fd.tensor.allowed:.3g})")
        else:
            what = fd.stage.errors[0] if fd.stage.errors else "failed"
        return f"{fd.where}: {what}" + (self._no_cause_note() or "; no cause named")

    def __str__(self) -> str:
        """The summary line and, when the check failed, the first cause's fix and where else it applies."""
        lines = [self.summary_line()]
        fd = self.first_divergence
        cause = fd.cause if fd is not None else None
        if cause is not None:
            same = [f for f in self.findings if (f.cause, f.message) == (cause.cause, cause.message)]
            more = f" (and {len(same) - 1} more layers)" if len(same) > 1 else ""
            where = f" at {cause.path}{more}"
            lines.append(f"  cause: {cause.cause}{where}" + (f" -> {cause.fix}" if cause.fix else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        fd = self.first_divergence
        extra = ""
        if fd is not None:
            extra = f", first_divergence={fd.where!r}"
            extra += f", cause={fd.cause.cause!r}" if fd.cause is not None else ""
        return (f"CheckResult(pair={self.pair!r}, passed={self.passed}, dtype={self.dtype!r}{extra}, "
                f"stages={[s.name for s in self.stages]!r})")

    def raise_for_failure(self) -> "CheckResult":
        """Raise :class:`ParityFailure` (an ``AssertionError`` whose first line is the summary) unless the
        check passed; returns the result, so ``parity.check(...).raise_for_failure()`` chains."""
        __tracebackhide__ = True  # pytest: the failure points at the caller's line
        if not self.passed:
            raise ParityFailure(self)
        return self

    #: the same, named as a test reads it
    assert_ok = raise_for_failure

    def to_dict(self) -> dict:
        fd = self.first_divergence
        return {
            "schema": SCHEMA,
            "pair": self.pair,
            "passed": self.passed,
            "summary": self.summary_line(),
            "first_divergence": ({"stage": fd.stage.name, "path": fd.path,
                                  "cause": fd.cause.cause if fd.cause is not None else None} if fd else None),
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "batch": self.batch,
            "optimizer": self.optimizer,
            "config": self.config,
            "reference_source": self.reference_source,
            "seconds": round(self.seconds, 3),
            "environment": self.environment,
            "conversion": self.conversion,
            "findings": [f.to_dict() for f in self.findings],
            "initialisation": [f.to_dict() for f in self.initialisation],
            "skipped": [k.to_dict() for k in self.skipped],
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        if d.get("schema") != SCHEMA:
            raise ValueError(f"expected a report with schema {SCHEMA!r}. Received: {d.get('schema')!r}.")
        return cls(pair=d["pair"], dtype=d["dtype"], device=d["device"], seed=d["seed"], batch=d["batch"],
                   optimizer=d["optimizer"], config=d["config"],
                   stages=[StageResult.from_dict(s) for s in d["stages"]],
                   findings=[Finding.from_dict(f) for f in d.get("findings", [])],
                   conversion=d.get("conversion", {}), environment=d.get("environment", {}),
                   seconds=d.get("seconds", 0.0), reference_source=d.get("reference_source", "keras"),
                   initialisation=[Finding.from_dict(f) for f in d.get("initialisation", [])])
