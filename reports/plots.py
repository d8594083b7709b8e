"""Inline SVG plots for the HTML report: per-tensor rel error of a stage, per-layer divergence over steps.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``, no pyplot): no global backend is selected
and no figure registry is touched, so a report rendered inside a notebook or a pytest run leaves that
process's matplotlib state as it was, and figures are freed with their last reference. Text stays text
(``svg.fonttype: none``, escaped by matplotlib's SVG writer); ids are salted with a constant so the same
result gives the same SVG.
"""
from __future__ import annotations

import io
import math

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .view import final_rel, top_series, trajectory_series

#: where a rel error of exactly 0 is drawn (a log axis has no 0)
REL_FLOOR = 1e-18
#: at most this many x tick labels; more tensors thin the labels to every k-th
MAX_XLABELS = 60
PASS_COLOR = "#1f77b4"
FAIL_COLOR = "#d62728"
_RC = {"svg.fonttype": "none", "svg.hashsalt": "parity.report", "font.size": 8}
#: no creator URL, date or RDF block in the SVG: the HTML must reference nothing outside itself
_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


def _plain_text(s: str) -> str:
    """``s`` as literal text: a ``$`` would otherwise start matplotlib mathtext."""
    return s.replace("$", r"\$")


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade_label(value: float, _pos=None) -> str:
    """``10⁻¹⁵`` as plain text for a log axis' decade ticks (matplotlib's default formatter writes mathtext,
    whose first parses cost ~0.35 s of CPU per report, measured over the plots of a minixception check)."""
    if not (value > 0 and math.isfinite(value)):
        return ""
    exponent = round(math.log10(value))
    if not math.isclose(value, 10.0 ** exponent, rel_tol=1e-9):
        return ""
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def _svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element (XML declaration and DOCTYPE stripped)."""
    buf = io.StringIO()
    # Fixed margins instead of bbox_inches="tight": the tight bounding box of ~60 rotated labels cost 1.3 s
    # of a 9 s minixception check (profiled); the figures reserve room for their labels themselves.
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def y_limits(values: list[float], rtols: list[float]) -> tuple[float, float]:
    """The log y-range of a plot: every drawn value and every positive allowed ``rtol`` inside it (a passing
    stage's errors sit far below its tolerance line, and the margin between them is what the plot shows),
    with room above for the legend and the annotation."""
    drawn = [v for v in values if math.isfinite(v) and v > 0] + [r for r in rtols if math.isfinite(r) and r > 0]
    if not drawn:
        return REL_FLOOR / 3, 1.0
    return min(drawn) / 3, max(drawn) * 30


def _uniform(values: list[float]) -> float | None:
    """The one value of ``values`` when they are all equal, else None."""
    return values[0] if values and all(v == values[0] for v in values) else None


def stage_errors_svg(stage: dict) -> str | None:
    """Rel error (``max|Δ| / scale``) per tensor of a stage, log y, against the allowed ``rtol``; None when
    the stage compared no tensors. Failed tensors are red, the first divergence is ringed and labelled;
    zeros are drawn at ``REL_FLOOR``, inf/nan as crosses above everything else."""
    tensors = stage.get("tensors") or []
    if not tensors:
        return None
    rel = [float(t["rel"]) for t in tensors]
    rtols = [float(t["rtol"]) for t in tensors]
    finite = [r for r in rel + rtols if math.isfinite(r) and r > 0]
    ceiling = max(finite, default=REL_FLOOR) * 100
    y = [max(r, REL_FLOOR) if math.isfinite(r) else ceiling for r in rel]
    x = list(range(len(tensors)))
    colors = [PASS_COLOR if t["passed"] else FAIL_COLOR for t in tensors]
    first = next((i for i, t in enumerate(tensors) if not t["passed"]), None)
    step = math.ceil(len(tensors) / MAX_XLABELS)
    ticks = sorted(set(x[::step]) | ({first} if first is not None else set()))

    notes = []
    if any(r == 0 for r in rel):
        notes.append(f"zeros drawn at {REL_FLOOR:g}")
    if any(not math.isfinite(r) for r in rel):
        notes.append("× = inf/nan, drawn at the top")
    if step > 1:
        notes.append(f"1 label in {step} shown")

    with rc_context(_RC):
        fig = Figure(figsize=(min(max(6.0, 0.15 * len(ticks) + 2), 18.0), 5.5))
        fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.42)
        ax = fig.add_subplot()
        finite_i = [i for i in x if math.isfinite(rel[i])]
        nonfinite_i = [i for i in x if not math.isfinite(rel[i])]
        ax.scatter(finite_i, [y[i] for i in finite_i], c=[colors[i] for i in finite_i], s=14, zorder=3)
        ax.scatter(nonfinite_i, [y[i] for i in nonfinite_i], c=[colors[i] for i in nonfinite_i], marker="x", s=30,
                   zorder=3)
        ax.plot(x, y, color="0.8", lw=0.6, zorder=2)
        rtol = _uniform(rtols)
        if rtol is not None and rtol > 0:
            ax.axhline(rtol, color=FAIL_COLOR, ls="--", lw=1, label=f"allowed rtol {rtol:g}")
        else:
            ax.step(x, [r if r > 0 else math.nan for r in rtols], where="mid", color=FAIL_COLOR, ls="--", lw=1,
                    label="allowed rtol")
        if first is not None:
            ax.scatter([first], [y[first]], s=140, facecolors="none", edgecolors=FAIL_COLOR, lw=1.5, zorder=4,
                       label="first divergence")
            ax.annotate(_plain_text(f"first divergence: {tensors[first]['path']}"), (first, y[first]),
                        xytext=(12, -24), textcoords="offset points", color=FAIL_COLOR,
                        arrowprops={"arrowstyle": "-", "color": FAIL_COLOR})
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_decade_label))
        ax.set_ylim(*y_limits(y, rtols))
        ax.set_xticks(ticks, [_plain_text(tensors[i]["path"]) for i in ticks], rotation=90, fontsize=6)
        ax.set_xlim(-0.5, len(tensors) - 0.5)
        ax.set_ylabel("rel error = max|Δ| / scale (log)")
        title = f"{stage['name']}: rel error per tensor"
        ax.set_title(_plain_text(title + (f"\n({'; '.join(notes)})" if notes else "")))
        ax.grid(True, axis="y", which="major", color="0.92")
        ax.legend(loc="best", fontsize=7)
        return _svg(fig)


def trajectory_svg(stage: dict) -> str | None:
    """Per-layer rel error over training steps (log y), one line per path; the ``TOP_SERIES`` largest by
    final value are coloured and in the legend, the rest grey; zeros are drawn at ``REL_FLOOR``, inf/nan
    leave gaps. None unless the stage's ``info`` has ``steps`` and ``series``."""
    found = trajectory_series(stage)
    if found is None:
        return None
    steps, series = found
    top = top_series(series)
    rtols = [float(t["rtol"]) for t in stage.get("tensors") or []]
    rtol = _uniform(rtols)
    with rc_context(_RC):
        fig = Figure(figsize=(10.0, 4.5))
        fig.subplots_adjust(left=0.1, right=0.62, top=0.9, bottom=0.12)
        ax = fig.add_subplot()
        for p, values in series.items():
            if p in top:
                continue
            y = [max(float(v), REL_FLOOR) for v in values]
            ax.plot(steps[:len(y)], y, color="0.8", lw=0.7, zorder=2)
        for p in top:
            y = [max(float(v), REL_FLOOR) for v in series[p]]
            ax.plot(steps[:len(y)], y, lw=1.5, marker=".", zorder=3,
                    label=_plain_text(f"{p} ({final_rel(series[p]):.1e})"))
        if rtol is not None and rtol > 0:
            ax.axhline(rtol, color=FAIL_COLOR, ls="--", lw=1, label=f"allowed rtol {rtol:g}")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_decade_label))
        ax.set_ylim(*y_limits([max(float(v), REL_FLOOR) for vs in series.values() for v in vs], rtols))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("rel error = max|Δ| / scale (log)")
        rest = f"; top {len(top)} of {len(series)} by final value in colour" if len(series) > len(top) else ""
        ax.set_title(_plain_text(f"{stage['name']}: per-layer divergence over steps\n(zeros at {REL_FLOOR:g}{rest})"))
        ax.grid(True, which="major", color="0.92")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=6)
        return _svg(fig)
