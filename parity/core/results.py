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


@dataclass
class CheckResult:
    """The whole check: truthy when every stage passed."""

    pair: str
    dtype: str
    device: str
    seed: int
    batch: int
    optimizer: dict
    config: dict
    stages: list[StageResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    conversion: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0
    reference_source: str = "keras"  # or "trace:<path>"

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

    def first_divergence(self) -> tuple[StageResult, TensorDiff | None] | None:
        """The first numeric divergence in stage order; else the first failed stage (structure errors)."""
        ordered = sorted(self.stages, key=lambda s: STAGE_ORDER.index(s.name) if s.name in STAGE_ORDER else 99)
        for s in ordered:
            if s.name != "structure" and s.first_divergence is not None:
                return s, s.first_divergence
        for s in ordered:
            if not s.passed:
                return s, s.first_divergence
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

    def summary_line(self) -> str:
        n_t = sum(len(s.tensors) for s in self.stages)
        ran = [s.name for s in self.stages if not s.skipped]
        if self.passed:
            worst = [(s.name, s.worst) for s in self.stages if s.worst is not None]
            w = max(worst, key=lambda p: p[1].rel, default=None)
            wtxt = f"; worst {w[0]} {w[1].path} rel {w[1].rel:.1e}" if w else ""
            return (f"PASSED {self.pair} [{self.dtype}, {self.device}, batch {self.batch}]: "
                    f"{len(ran)} stages, {n_t} tensors{wtxt}")
        fd = self.first_divergence()
        stage, diff = fd if fd else (None, None)
        if diff is not None:
            cause = self.cause_for(diff.path)
            ctxt = f"; cause: {cause.message}" if cause else ""
            if diff.note.startswith("shape mismatch"):
                return f"FAILED: first divergence at {stage.name} {diff.path}: {diff.note}{ctxt}"
            return (f"FAILED: first divergence at {stage.name} {diff.path} max|Δ| {diff.max_abs:.3g} "
                    f"(allowed {diff.allowed:.3g}){ctxt}")
        err = stage.errors[0] if stage and stage.errors else "unknown"
        return f"FAILED: {stage.name if stage else '?'}: {err}"

    def to_dict(self) -> dict:
        fd = self.first_divergence()
        return {
            "schema": SCHEMA,
            "pair": self.pair,
            "passed": self.passed,
            "summary": self.summary_line(),
            "first_divergence": ({"stage": fd[0].name, "path": fd[1].path if fd[1] is not None else None} if fd else None),
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
                   seconds=d.get("seconds", 0.0), reference_source=d.get("reference_source", "keras"))
