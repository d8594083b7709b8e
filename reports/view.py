"""What a report shows, built once from the canonical dict for every renderer, in the order a person reads it.

``build_view`` turns a ``CheckResult.to_dict()`` into plain strings in :class:`Table` objects. Every renderer
lays them out in :data:`SECTION_ORDER`: the verdict, the first divergence with its cause and fix, the other
causes (ranked by severity and by how early they show, one row per cause with the layers it applies to),
the stages a cut check did not run and what they would have added, the per-stage table, the plots, the
structure / alignment / conversion tables, the per-stage tensors, the initialisation differences (they matter
for training from scratch and never explain a divergence here: the check copies the reference's weights),
then settings, optimizer and environment. ``markdown`` and ``html`` only lay these out, so both show the
same facts; the JSON report keeps everything (the tables here truncate long lists, the JSON never does).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from parity.core.results import CheckResult, Finding, Skipped

#: conversion-report keys in display order; any other key follows them
CONVERSION_KEYS = ("mapped", "missing", "unexpected", "shape_mismatches", "nonfinite", "conventions", "assumptions")
#: list entries shown per conversion key before "(+k more)"
MAX_ENTRIES = 50
#: trajectory series listed (and labelled in the plot), largest final rel error first
TOP_SERIES = 10
#: free-form ``info`` values longer than this are cut (the JSON report has them whole)
MAX_INFO_CHARS = 300
#: layers named in a grouped cause's "where" cell before "(+k more)"
MAX_PATHS = 4
#: the order of a report's sections (every renderer follows it; ``tests/reports`` pins it)
SECTION_ORDER = ("verdict", "first divergence", "causes", "not run", "stages", "plots", "structure", "alignment",
                 "weight conversion", "tensors", "initialisation", "settings", "optimizer", "environment")
#: settings shown first, in this order (the rest of the run's settings follow)
SETTINGS_KEYS = ("dtype", "device", "seed", "batch", "reference_source", "seconds")
#: what the initialisation section says before its table
INITIALISATION_NOTE = ("How the freshly built port initialises its parameters, against the reference's "
                       "initialisers. This matters when the port is trained from scratch; it cannot cause a "
                       "divergence in this check, which copies the reference's weights into the port.")


def num(x: Any, spec: str = ".3g") -> str:
    """A number for a table cell: ``spec`` for floats, inf/nan strings as they are, None as empty."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    return format(x, spec)


def cell(v: Any) -> str:
    """Any free-form value (structure rows, info, extra columns) as one table cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return num(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def verdict(passed: bool, skipped: str | None = None) -> str:
    """A stage or tensor result as one word: ``pass``, ``FAIL`` or ``skipped``."""
    return "skipped" if skipped else ("pass" if passed else "FAIL")


@dataclass
class Table:
    """A table of strings; ``marks`` holds one style hint per row: ``fail``, ``first`` (the first
    divergence), ``skip`` or ``""``."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)

    def add(self, row: list[str], mark: str = "") -> None:
        self.rows.append(row)
        self.marks.append(mark)

    def marked_rows(self) -> Iterator[tuple[list[str], str]]:
        return zip(self.rows, self.marks)

    def __bool__(self):
        return bool(self.rows)


@dataclass
class Divergence:
    """The first divergence: where, the torch.testing-style detail (or the stage's errors), its cause, the
    other layers the same cause names, and why no cause is named when a stage that names them was skipped."""

    stage: str
    path: str | None
    detail: str
    cause: Finding | None
    also_at: list[str] = field(default_factory=list)
    no_cause: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.stage} {self.path}" if self.path else self.stage

    @property
    def also(self) -> str:
        """`` (and 13 more layers: a, b, c, d (+9 more))`` or empty."""
        return f" (and {len(self.also_at)} more layers: {_paths(self.also_at)})" if self.also_at else ""


@dataclass
class StageView:
    name: str
    verdict: str
    skipped: str | None
    errors: list[str]
    tensors: Table
    info: Table
    #: the trajectory's top series by final rel error (empty for other stages)
    trajectory: Table
    #: the stage's canonical dict (the plots read it)
    raw: dict
    #: how many of its tensors failed, and the first that did (the collapsed tensor table's caption)
    failed: int = 0
    first: str = ""


@dataclass
class ReportView:
    pair: str
    verdict: str
    summary: str
    settings: Table
    environment: Table
    stages: Table
    #: the causes, ranked, one row per cause (the layers it applies to in one cell)
    findings: Table
    first_divergence: Divergence | None
    structure: Table
    conversion: Table
    stage_views: list[StageView]
    #: a user pair's automatic alignment (reference layer <-> port module), empty for registered pairs
    alignment: Table = None  # type: ignore[assignment]
    #: the optimizer as key / value rows (its rules one row each)
    optimizer: Table = None  # type: ignore[assignment]
    #: initialisation differences (``CheckResult.initialisation``), no stage or divergence evidence
    initialisation: Table = None  # type: ignore[assignment]
    #: stages the check did not run, why, and what each would have added
    skipped: Table = None  # type: ignore[assignment]


def _readable(v: Any) -> str:
    """A settings value for a person: a mapping as ``key: value, …``, a list as ``a; b``, empty as ``none``."""
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_readable(x)}" for k, x in v.items()) if v else "none"
    if isinstance(v, (list, tuple)):
        return "; ".join(_readable(x) for x in v) if v else "none"
    return cell(v)


def _settings(d: dict) -> Table:
    """The run's settings, one row each; the model config one row per key."""
    t = Table(["setting", "value"])
    for key in SETTINGS_KEYS:
        if key in d:
            t.add([key, cell(d.get(key))])
    config = d.get("config") or {}
    for key, v in (config.items() if isinstance(config, dict) else [("config", config)]):
        t.add([f"config.{key}", _readable(v)])
    return t


def _optimizer(d: dict) -> Table:
    """The optimizer as a key / value list: scalar settings first, then mappings, its rules one row each."""
    opt = d.get("optimizer") or {}
    t = Table(["optimizer", "value"])
    if not isinstance(opt, dict):
        t.add(["optimizer", _readable(opt)])
        return t
    scalars = [(k, v) for k, v in opt.items() if not isinstance(v, (dict, list, tuple))]
    nested = [(k, v) for k, v in opt.items() if isinstance(v, (dict, list, tuple)) and k != "rules"]
    for k, v in sorted(scalars, key=lambda kv: (kv[0] != "kind", kv[0])) + nested:
        t.add([k, _readable(v)])
    for i, rule in enumerate(opt.get("rules") or [], 1):
        t.add([f"rule {i}", cell(rule)])
    return t


def _environment(d: dict) -> Table:
    t = Table(["component", "version"])
    for k, v in (d.get("environment") or {}).items():
        t.add([str(k), _readable(v)])
    return t


def _stage_table(result: CheckResult) -> Table:
    """One row per stage; worst tensor and first divergence come from the tensors themselves."""
    t = Table(["stage", "result", "tensors", "worst rel", "worst path", "first divergence", "seconds", "skipped"])
    for s in result.stages:
        v = verdict(s.passed, s.skipped)
        worst, first = s.worst, s.first_divergence
        t.add([s.name, v, str(len(s.tensors)), num(worst.rel, ".2e") if worst is not None else "",
               worst.path if worst is not None else "", first.path if first is not None else "",
               num(s.seconds, ".2f"), s.skipped or ""],
              {"FAIL": "fail", "skipped": "skip"}.get(v, ""))
    return t


def _paths(paths: list[str]) -> str:
    """``a, b, c, d (+k more)``."""
    more = f" (+{len(paths) - MAX_PATHS} more)" if len(paths) > MAX_PATHS else ""
    return ", ".join(paths[:MAX_PATHS]) + more


def _all_findings(result: CheckResult) -> list[Finding]:
    """The check's findings, then each stage's not already listed (stage filled in where it is left out)."""
    found = list(result.findings)
    for s in result.stages:
        for f in s.findings:
            if f not in found:
                found.append(f if f.stage else Finding(**{**f.to_dict(), "stage": s.name}))
    return found


def _findings(result: CheckResult) -> Table:
    """The causes as a person reads them (:meth:`CheckResult.causes`: the first divergence's cause, then
    by severity and by how early they show), one row per cause and message with every layer it names."""
    ranked = result.causes()
    ranked += [f for f in _all_findings(result) if f not in ranked]
    groups: dict[tuple, list[Finding]] = {}
    for f in ranked:
        groups.setdefault((f.severity, f.cause, f.message, f.fix), []).append(f)
    t = Table(["severity", "cause", "where", "shows first in", "message", "fix", "evidence"])
    for (sev, cause, message, fix), fs in groups.items():
        paths = list(dict.fromkeys(f.path for f in fs))
        t.add([sev, cause, _paths(paths), fs[0].stage or "", message, fix, fs[0].evidence],
              "fail" if sev == "error" else "")
    return t


def _initialisation(result: CheckResult) -> Table:
    """Initialisation differences: where, what, the fix; never a stage or a divergence's figures."""
    t = Table(["path", "initialisation", "fix", "measured"])
    for f in result.initialisation:
        t.add([f.path, f.message, f.fix, f.evidence])
    return t


def _skipped(skipped: list[Skipped]) -> Table:
    t = Table(["stage", "why not run", "what it would have added"])
    for k in skipped:
        t.add([k.stage, k.reason, k.adds], "skip")
    return t


def _first_divergence(result: CheckResult) -> Divergence | None:
    fd = result.first_divergence
    if fd is None:
        return None
    also: list[str] = []
    if fd.cause is not None:
        same = [f.path for f in result.findings if (f.cause, f.message) == (fd.cause.cause, fd.cause.message)]
        also = [p for p in dict.fromkeys(same) if p != fd.cause.path]
    no_cause = [] if fd.cause is not None else [k.line() for k in result.skipped if k.stage == "structure"]
    return Divergence(fd.stage.name, fd.path, fd.describe(), fd.cause, also, no_cause)


#: structure columns shown first (the verdict of a row next to its layer), the rest in first-seen order
STRUCTURE_FIRST = ("path", "status", "kind", "reference", "port", "ref_shape", "port_shape", "ref_trainable",
                   "ref_non_trainable", "port_params", "port_buffers", "num_batches_tracked")


def _structure(d: dict) -> Table:
    """The structure stage's rows, one column per key (:data:`STRUCTURE_FIRST`, then the union in first-seen
    order); a row whose status is not ``ok`` is marked."""
    rows = next((s.get("rows") or [] for s in d["stages"] if s["name"] == "structure"), [])
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    columns = [c for c in STRUCTURE_FIRST if c in seen] + [c for c in seen if c not in STRUCTURE_FIRST]
    t = Table(columns)
    for r in rows:
        t.add([cell(r.get(c)) for c in columns], "" if r.get("status") in (None, "ok") else "fail")
    return t


def _alignment(d: dict) -> Table:
    """The structure stage's ``info["alignment"]`` (``parity.user.align``): one row per pair of layers, union of keys."""
    rows = next(((s.get("info") or {}).get("alignment") or [] for s in d["stages"] if s["name"] == "structure"), [])
    columns: dict[str, None] = {}
    for r in rows:
        if isinstance(r, dict):
            columns.update(dict.fromkeys(r))
    t = Table(list(columns))
    for r in rows:
        if isinstance(r, dict):
            t.add([cell(r.get(c)) for c in columns], mark="" if r.get("status") in (None, "aligned", "fused") else "fail")
    return t


def _entry(key: str, item: Any) -> str:
    """One conversion-list entry: ``key: expected …, received …`` for a shape mismatch, ``a → b → c`` for
    a tuple (a mapping: source, destination, conventions), the value itself otherwise."""
    if key == "shape_mismatches" and isinstance(item, (list, tuple)) and len(item) == 3:
        k, expected, received = item
        return f"{k}: expected {cell(expected)}, received {cell(received)}"
    if isinstance(item, (list, tuple)):
        return " → ".join(cell(x) for x in item)
    return cell(item)


def _conversion(d: dict) -> Table:
    """The weight conversion: a count per list (mapped: the count only) and the entries of the others."""
    conv = d.get("conversion") or {}
    t = Table(["item", "count", "entries"])
    keys = [k for k in CONVERSION_KEYS if k in conv] + [k for k in conv if k not in CONVERSION_KEYS]
    for k in keys:
        v = conv[k]
        if not isinstance(v, (list, tuple)):
            t.add([k, "", cell(v)])
            continue
        shown = [] if k == "mapped" else [_entry(k, x) for x in v[:MAX_ENTRIES]]
        more = f" (+{len(v) - len(shown)} more)" if shown and len(v) > len(shown) else ""
        problem = k in ("missing", "unexpected", "shape_mismatches", "nonfinite") and v
        t.add([k, str(len(v)), "; ".join(shown) + more], "fail" if problem else "")
    return t


def _tensors(s: dict, first: str | None) -> Table:
    """Every tensor of a stage; ``note`` and the ``extra`` keys (union, first-seen order) as further columns.
    ``first``: the path of the stage's first divergence, marked ``first``."""
    tensors = s.get("tensors", [])
    extra: dict[str, None] = {}
    for t in tensors:
        extra.update(dict.fromkeys(t.get("extra") or {}))
    with_note = any(t.get("note") for t in tensors)
    table = Table(["path", "shape", "max_abs", "scale", "rel", "allowed", "mismatched/numel", "pass"]
                  + (["note"] if with_note else []) + list(extra))
    for t in tensors:
        row = [t["path"], "×".join(map(str, t["shape"])) or "scalar", num(t["max_abs"]), num(t["scale"]),
               num(t["rel"], ".2e"), num(t["allowed"]), f"{t['mismatched']} / {t['numel']}",
               "pass" if t["passed"] else "FAIL"]
        row += [t.get("note", "")] if with_note else []
        row += [cell((t.get("extra") or {}).get(k)) for k in extra]
        mark = "" if t["passed"] else ("first" if t["path"] == first else "fail")
        table.add(row, mark)
    return table


def trajectory_series(s: dict) -> tuple[list, dict[str, list]] | None:
    """``(steps, {path: [rel per step]})`` of a trajectory stage whose ``info`` carries them, else None."""
    info = s.get("info") or {}
    if s["name"] != "trajectory" or not info.get("steps") or not info.get("series"):
        return None
    return info["steps"], info["series"]


def final_rel(values: list) -> float:
    """A series' value at its last step, for ranking (nan ranks last, inf first). Values may be the
    strings ``"inf"``/``"nan"`` of the canonical dict, which ``float`` reads."""
    x = float(values[-1]) if values else math.nan
    return -math.inf if math.isnan(x) else x


def top_series(series: dict[str, list]) -> list[str]:
    """The ``TOP_SERIES`` paths with the largest final rel error."""
    return sorted(series, key=lambda p: final_rel(series[p]), reverse=True)[:TOP_SERIES]


def _trajectory(s: dict) -> Table:
    found = trajectory_series(s)
    if found is None:
        return Table([])
    steps, series = found
    t = Table(["path", f"rel at step {steps[-1]}", "max rel over steps"])
    for p in top_series(series):
        values = [float(v) for v in series[p]]
        finite = [v for v in values if not math.isnan(v)]
        t.add([p, num(series[p][-1] if series[p] else None, ".2e"), num(max(finite) if finite else None, ".2e")])
    return t


def _info(s: dict) -> Table:
    """A stage's free-form ``info``, one row per key (a trajectory's steps/series are shown as their own table)."""
    t = Table(["key", "value"])
    shown_elsewhere = ("steps", "series") if trajectory_series(s) else ()
    if s.get("name") == "structure":
        shown_elsewhere += ("alignment",)
    for k, v in (s.get("info") or {}).items():
        if k in shown_elsewhere:
            continue
        text = cell(v)
        t.add([str(k), text if len(text) <= MAX_INFO_CHARS else text[:MAX_INFO_CHARS] + " …"])
    return t


def build_view(d: dict) -> ReportView:
    """The report's content from its canonical dict (``CheckResult.to_dict()``). Per-stage values derived
    from the tensors (worst, first divergence, cause) are recomputed from the result objects: the tensors
    are the facts, the dict's derived fields a convenience for JSON readers."""
    result = CheckResult.from_dict(d)
    skipped = result.skipped
    stage_views = []
    for s, obj in zip(d["stages"], result.stages):
        first = obj.first_divergence
        stage_views.append(StageView(s["name"], verdict(obj.passed, obj.skipped), obj.skipped, list(obj.errors),
                                     _tensors(s, first.path if first is not None else None), _info(s),
                                     _trajectory(s), s, sum(not t.passed for t in obj.tensors),
                                     first.path if first is not None else ""))
    return ReportView(pair=d["pair"], verdict="PASSED" if d["passed"] else "FAILED",
                      summary=d["summary"], settings=_settings(d), environment=_environment(d),
                      stages=_stage_table(result), findings=_findings(result),
                      first_divergence=_first_divergence(result), structure=_structure(d),
                      conversion=_conversion(d), stage_views=stage_views, alignment=_alignment(d),
                      optimizer=_optimizer(d), initialisation=_initialisation(result), skipped=_skipped(skipped))
