"""Shared machinery of the families whose Keras variables map 1:1 onto torch keys with at most a reshape
(embedding, layer/group normalisation, PReLU): one table per family, the same functions as
:mod:`weight_converters.recurrent` so :mod:`weight_converters.keras` treats every family alike."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from weight_converters.report import ConversionReport


class RenamedFamily:
    """``kinds``: tap kind -> {Keras variable: torch key}; ``notes``: tap kind -> the convention written into the
    report; ``to_torch`` / ``to_keras``: optional per-(kind, var) reshapes (default: copy)."""

    def __init__(self, kinds: dict[str, dict[str, str]], notes: dict[str, str],
                 to_torch: Callable[[str, str, np.ndarray], np.ndarray] | None = None,
                 to_keras: Callable[[str, str, np.ndarray, tuple | None], np.ndarray] | None = None):
        self.KINDS = kinds
        self.notes = notes
        self._to_torch = to_torch
        self._to_keras = to_keras

    def var_to_torch(self, kind: str, var: str, a: np.ndarray, report: ConversionReport | None = None):
        a = np.asarray(a)
        out = self._to_torch(kind, var, a) if self._to_torch else a
        if report is not None and kind in self.notes:
            report.convention(self.notes[kind])
        return np.array(out, copy=True)

    def var_to_keras(self, kind: str, var: str, w: np.ndarray, shape: tuple | None = None):
        w = np.asarray(w)
        out = self._to_keras(kind, var, w, shape) if self._to_keras else w
        return np.array(out, copy=True)

    def layer_to_torch(self, kind: str, variables: Mapping[str, np.ndarray], report: ConversionReport):
        out = {}
        for var, a in variables.items():
            if var not in self.KINDS[kind]:
                report.unexpected.append(var)
                continue
            out[self.KINDS[kind][var]] = self.var_to_torch(kind, var, a, report)
        return out

    def layer_to_keras(self, kind: str, state: Mapping[str, np.ndarray], variables, report: ConversionReport,
                       shapes: Mapping[str, tuple] | None = None):
        out = {}
        for var in variables:
            key = self.KINDS[kind][var]
            if key not in state:
                report.missing.append(var)
                continue
            out[var] = self.var_to_keras(kind, var, state[key], (shapes or {}).get(var))
        return out

    def torch_keys(self, kind: str, variables) -> set[str]:
        return {self.KINDS[kind][v] for v in variables if v in self.KINDS[kind]}
