"""The report every conversion returns (after safetensors' strict loading: missing / unexpected keys)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: Variable names (Keras, torch) that hold a BatchNorm variance: a variance is >= 0 by definition, and eval-mode
#: BatchNorm divides by ``sqrt(var + eps)``, which is NaN for a variance below ``-eps``
#: (keras/src/layers/normalization/batch_normalization.py; torch/nn/functional.py ``batch_norm``).
VARIANCE_NAMES = ("moving_variance", "running_var")


class ConversionError(ValueError):
    """A strict conversion found missing/unexpected keys or shape mismatches. ``.report`` has the details."""

    def __init__(self, message: str, report: "ConversionReport"):
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    direction: str = "keras->torch"
    #: (source key, destination key, conventions applied)
    mapped: list[tuple[str, str, str]] = field(default_factory=list)
    #: destination keys that expected a value and got none
    missing: list[str] = field(default_factory=list)
    #: source keys with no destination
    unexpected: list[str] = field(default_factory=list)
    #: (key, expected shape, received shape)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    #: keys whose arrays hold NaN or inf
    nonfinite: list[str] = field(default_factory=list)
    #: values no layer can use, with the reason ("bn1/moving_variance: 1 of 8 values negative (min -1)")
    invalid: list[str] = field(default_factory=list)
    #: every convention applied, once each ("HWIO->OIHW", "BN moving_variance -> running_var (biased, as is)")
    conventions: list[str] = field(default_factory=list)
    #: what the converter had to assume ("layers matched by order: file names differ")
    assumptions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches or self.nonfinite or self.invalid)

    def __bool__(self):
        return self.ok

    def convention(self, text: str) -> None:
        if text not in self.conventions:
            self.conventions.append(text)

    def assume(self, text: str) -> None:
        if text not in self.assumptions:
            self.assumptions.append(text)

    def problems(self) -> list[str]:
        out = [f"missing {k}" for k in self.missing]
        out += [f"unexpected {k}" for k in self.unexpected]
        out += [f"non-finite values in {k}" for k in self.nonfinite]
        out += [f"invalid {k}" for k in self.invalid]
        out += [f"shape {k}: expected {tuple(e)}, received {tuple(r)}" for k, e, r in self.shape_mismatches]
        return out

    def summary(self) -> str:
        return (f"{self.direction}: {len(self.mapped)} mapped, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.shape_mismatches)} shape mismatches"
                + (f", {len(self.nonfinite)} non-finite" if self.nonfinite else "")
                + (f", {len(self.invalid)} invalid" if self.invalid else ""))

    def raise_if_failed(self) -> None:
        if not self.ok:
            probs = self.problems()
            more = f" (+{len(probs) - 3} more)" if len(probs) > 3 else ""
            raise ConversionError(f"{self.summary()}: {'; '.join(probs[:3])}{more}", self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape_mismatches"] = [[k, list(e), list(r)] for k, e, r in self.shape_mismatches]
        d["mapped"] = [list(m) for m in self.mapped]
        d["ok"] = self.ok
        return d

    def merge(self, other: "ConversionReport") -> "ConversionReport":
        self.mapped += other.mapped
        self.missing += other.missing
        self.unexpected += other.unexpected
        self.shape_mismatches += other.shape_mismatches
        self.nonfinite += other.nonfinite
        self.invalid += other.invalid
        for c in other.conventions:
            self.convention(c)
        for a in other.assumptions:
            self.assume(a)
        return self


def check_values(key: str, var: str, a, report: ConversionReport) -> None:
    """Record in ``report`` what makes array ``a`` (variable ``var``, reported as ``key``) unusable: NaN or inf
    (:attr:`ConversionReport.nonfinite`), a negative BatchNorm variance (:attr:`ConversionReport.invalid`)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        return
    finite = np.isfinite(a)
    if not finite.all():
        report.nonfinite.append(key)
    if var in VARIANCE_NAMES:
        neg = int(np.count_nonzero(finite & (a < 0)))
        if neg:
            report.invalid.append(f"{key}: {neg} of {a.size} values negative (min {float(a[finite].min()):.3g}); a "
                                  "BatchNorm variance is >= 0 and eval mode takes sqrt(variance + eps)")
