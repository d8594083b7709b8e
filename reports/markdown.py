"""The Markdown report: the same content as the HTML report, in the same order (:data:`reports.view.SECTION_ORDER`),
without plots."""
from __future__ import annotations

import re

from parity.core.results import CheckResult

from .json_report import as_dict
from .view import INITIALISATION_NOTE, Divergence, Table, build_view


def _cell(text: str) -> str:
    """A table cell: pipes escaped, line breaks as ``<br>`` so a row stays one line."""
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def _fence(text: str) -> list[str]:
    """``text`` verbatim in a fenced block (a fence longer than any backtick run inside it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence, ""]


def _divergence(fd: Divergence) -> list[str]:
    lines = ["## First divergence", "", f"At **{fd.where}**:", ""] + _fence(fd.detail)
    if fd.cause is not None:
        c = fd.cause
        lines += [f"- cause: **{c.cause}** at `{c.path}`{fd.also}: {c.message}"]
        lines += [f"- fix: {c.fix}"] if c.fix else []
        lines += [f"- evidence: {c.evidence}"] if c.evidence else []
        lines += [""]
    for note in fd.no_cause:
        lines += [f"- no cause named: {note}", ""]
    return lines


def render_markdown(d: CheckResult | dict) -> str:
    """The report as Markdown (GitHub-flavoured tables) from a ``CheckResult`` or its canonical dict."""
    v = build_view(as_dict(d))
    out = [f"# parity: {v.pair} — {v.verdict}", ""] + _fence(v.summary)
    if v.first_divergence is not None:
        out += _divergence(v.first_divergence)
    if v.findings:
        out += ["## Causes", ""] + _table(v.findings)
    if v.skipped:
        out += ["## Not run", ""] + _table(v.skipped)
    out += ["## Stages", ""] + _table(v.stages)
    if v.structure:
        out += ["## Structure", ""] + _table(v.structure)
    if v.alignment:
        out += ["## Alignment", ""] + _table(v.alignment)
    if v.conversion:
        out += ["## Weight conversion", ""] + _table(v.conversion)
    for s in v.stage_views:
        out += [f"## Stage `{s.name}`: {s.verdict}", ""]
        out += [f"Skipped: {s.skipped}", ""] if s.skipped else []
        out += ["Errors:", ""] + [f"- {e}" for e in s.errors] + [""] if s.errors else []
        out += _table(s.info) if s.info else []
        out += ["Largest divergence over steps:", ""] + _table(s.trajectory) if s.trajectory else []
        out += _table(s.tensors) if s.tensors else []
    if v.initialisation:
        out += ["## Initialisation", "", INITIALISATION_NOTE, ""] + _table(v.initialisation)
    out += ["## Settings", ""] + _table(v.settings)
    if v.optimizer:
        out += ["## Optimizer", ""] + _table(v.optimizer)
    if v.environment:
        out += ["## Environment", ""] + _table(v.environment)
    return "\n".join(out).rstrip("\n") + "\n"
