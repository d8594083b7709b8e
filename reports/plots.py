"""Inline SVG plots for the HTML report: per-tensor rel error of a stage, per-layer divergence over steps.

Written as SVG text directly (no plotting library): a report is a few scatter/line plots on a log y axis, and
drawing them with matplotlib cost 1.3-1.9 s of CPU per check (its import plus tick and text layout), measured
with ``python -X importtime`` and cProfile over a cached minixception check. Every string from the result
(layer paths, stage names) is XML-escaped; the same result gives the same SVG (no ids, dates or randomness);
the SVG references nothing outside itself.
"""
from __future__ import annotations

import math
from html import escape

from .view import final_rel, top_series, trajectory_series

#: where a rel error of exactly 0 is drawn (a log axis has no 0)
REL_FLOOR = 1e-18
#: at most this many x tick labels; more tensors thin the labels to every k-th
MAX_XLABELS = 60
PASS_COLOR = "#1f77b4"
FAIL_COLOR = "#d62728"
GRID_COLOR = "#ebebeb"
OTHER_COLOR = "#cccccc"
#: colours of the top trajectory series (matplotlib's "tab10" cycle, so the plots look as they did)
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
FONT = "font-family:DejaVu Sans,Arial,sans-serif"
#: average advance of one character, as a fraction of the font size (for sizing margins; DejaVu Sans ~0.6)
CHAR_WIDTH = 0.6
#: at most this many decade ticks on the y axis; a wider range labels every k-th decade
MAX_YTICKS = 10


def _decade_label(value: float, _pos=None) -> str:
    """``1e-15`` for a decade (plain text, readable and searchable), "" for anything else."""
    if not (value > 0 and math.isfinite(value)):
        return ""
    exponent = round(math.log10(value))
    if not math.isclose(value, 10.0 ** exponent, rel_tol=1e-9):
        return ""
    return f"1e{exponent}"


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


def _f(v: float) -> str:
    return f"{v:.1f}"


class _Canvas:
    """One plot: a frame of ``width`` x ``height`` px with a plot area inside the margins, a linear x axis
    and a log10 y axis; collects SVG elements as text."""

    def __init__(self, width, height, *, left, right, top, bottom, xlim, ylim):
        self.width, self.height = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = top, height - bottom
        self.xlim = xlim
        self.ly = (math.log10(ylim[0]), math.log10(ylim[1]))
        self.parts: list[str] = []

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x0 + (v - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        lo, hi = self.ly
        return self.y1 - (math.log10(v) - lo) / ((hi - lo) or 1.0) * (self.y1 - self.y0)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x, y, s, *, size=8, anchor="start", color="#000", rotate=None, weight=None) -> None:
        extra = f' transform="rotate({rotate} {_f(x)} {_f(y)})"' if rotate is not None else ""
        extra += f' font-weight="{weight}"' if weight else ""
        self.add(f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}" fill="{color}"{extra}>'
                 f"{escape(s)}</text>")

    def polyline(self, points, *, color, width=1.0, dash=None) -> None:
        if len(points) < 2:
            return
        pts = " ".join(f"{_f(a)},{_f(b)}" for a, b in points)
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}"{d}/>')

    def hline(self, v: float, *, color, dash="5,3") -> None:
        """The tolerance line at ``v`` across the plot area (``class="rtol"``)."""
        y = self.y(v)
        self.add(f'<line class="rtol" x1="{_f(self.x0)}" y1="{_f(y)}" x2="{_f(self.x1)}" y2="{_f(y)}" stroke="{color}" '
                 f'stroke-width="1" stroke-dasharray="{dash}"/>')

    def y_axis(self, label: str) -> None:
        """Decade ticks and grid lines (labelled ``1e-15``...), the frame and the y label."""
        lo, hi = math.ceil(self.ly[0] - 1e-9), math.floor(self.ly[1] + 1e-9)
        every = max(1, math.ceil((hi - lo + 1) / MAX_YTICKS))
        for e in range(lo, hi + 1):
            if e % every:
                continue
            y = self.y(10.0 ** e)
            self.add(f'<line x1="{_f(self.x0)}" y1="{_f(y)}" x2="{_f(self.x1)}" y2="{_f(y)}" '
                     f'stroke="{GRID_COLOR}" stroke-width="1"/>')
            self.add(f'<line x1="{_f(self.x0 - 4)}" y1="{_f(y)}" x2="{_f(self.x0)}" y2="{_f(y)}" stroke="#000"/>')
            self.text(self.x0 - 6, y + 3, _decade_label(10.0 ** e), anchor="end")
        cy = (self.y0 + self.y1) / 2
        self.text(14, cy, label, anchor="middle", rotate=-90)

    def frame(self) -> None:
        self.add(f'<rect x="{_f(self.x0)}" y="{_f(self.y0)}" width="{_f(self.x1 - self.x0)}" '
                 f'height="{_f(self.y1 - self.y0)}" fill="none" stroke="#000" stroke-width="0.8"/>')

    def title(self, lines: list[str]) -> None:
        for i, line in enumerate(lines):
            self.text(self.width / 2, 14 + 12 * i, line, size=10 if i == 0 else 8, anchor="middle")

    def legend(self, entries: list[tuple[str, str, str]], x: float, y: float, *, size=7, across=False) -> None:
        """``entries`` of (kind: "dot"|"dash"|"ring"|"line", colour, label) stacked down from (x, y), or in one
        row when ``across`` (outside the plot area, so no mark hides a point)."""
        for i, (kind, color, label) in enumerate(entries):
            cy = y if across else y + i * (size + 5)
            if kind == "dot":
                self.add(f'<circle cx="{_f(x + 8)}" cy="{_f(cy)}" r="2.5" fill="{color}"/>')
            elif kind == "ring":
                self.add(f'<circle cx="{_f(x + 8)}" cy="{_f(cy)}" r="5" fill="none" stroke="{color}" '
                         f'stroke-width="1.5"/>')
            else:
                d = ' stroke-dasharray="5,3"' if kind == "dash" else ""
                self.add(f'<line x1="{_f(x)}" y1="{_f(cy)}" x2="{_f(x + 16)}" y2="{_f(cy)}" stroke="{color}" '
                         f'stroke-width="1.5"{d}/>')
            self.text(x + 20, cy + size / 3, label, size=size)
            if across:
                x += 20 + len(label) * size * CHAR_WIDTH + 14

    def svg(self, aria: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{escape(aria)}" style="{FONT}">')
        background = f'<rect width="{self.width}" height="{self.height}" fill="#fff"/>'
        return "\n".join([head, background, *self.parts, "</svg>"])


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
    n = len(tensors)
    first = next((i for i, t in enumerate(tensors) if not t["passed"]), None)
    step = math.ceil(n / MAX_XLABELS)
    ticks = sorted(set(range(0, n, step)) | ({first} if first is not None else set()))
    labels = {i: str(tensors[i]["path"]) for i in ticks}

    notes = []
    if any(r == 0 for r in rel):
        notes.append(f"zeros drawn at {REL_FLOOR:g}")
    if any(not math.isfinite(r) for r in rel):
        notes.append("× = inf/nan, drawn at the top")
    if step > 1:
        notes.append(f"1 label in {step} shown")

    label_size = 7
    longest = min(max(len(s) for s in labels.values()), 48)
    bottom = 16 + longest * label_size * CHAR_WIDTH
    width = int(min(max(600, 11 * len(ticks) + 160), 1400))
    top = 60 if notes else 48
    c = _Canvas(width, int(300 + bottom + top - 48), left=70, right=16, top=top, bottom=bottom,
                xlim=(-0.5, n - 0.5), ylim=y_limits(y, rtols))
    c.title([f"{stage['name']}: rel error per tensor"] + ([f"({'; '.join(notes)})"] if notes else []))
    c.y_axis("rel error = max|Δ| / scale (log)")
    for i in ticks:
        x = c.x(i)
        color = FAIL_COLOR if i == first else "#000"
        c.add(f'<line x1="{_f(x)}" y1="{_f(c.y1)}" x2="{_f(x)}" y2="{_f(c.y1 + 4)}" stroke="#000"/>')
        s = labels[i] if len(labels[i]) <= 48 else "…" + labels[i][-47:]
        c.text(x + label_size / 3, c.y1 + 7, s, size=label_size, anchor="end", rotate=-90, color=color)

    rtol = _uniform(rtols)
    if rtol is not None and rtol > 0:
        c.hline(rtol, color=FAIL_COLOR)
        rtol_label = f"allowed rtol {rtol:g}"
    else:  # a step line: each tensor's own rtol over its x cell
        pts = []
        for i, r in enumerate(rtols):
            if r > 0 and math.isfinite(r):
                pts += [(c.x(i - 0.5), c.y(r)), (c.x(i + 0.5), c.y(r))]
            else:
                c.polyline(pts, color=FAIL_COLOR, dash="5,3")
                pts = []
        c.polyline(pts, color=FAIL_COLOR, dash="5,3")
        rtol_label = "allowed rtol"
    c.polyline([(c.x(i), c.y(v)) for i, v in enumerate(y)], color=OTHER_COLOR, width=0.6)
    for i, v in enumerate(y):
        color = PASS_COLOR if tensors[i]["passed"] else FAIL_COLOR
        px, py = c.x(i), c.y(v)
        if math.isfinite(rel[i]):
            c.add(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="2.2" fill="{color}"/>')
        else:
            c.add(f'<path d="M{_f(px - 3)},{_f(py - 3)}l6,6m0,-6l-6,6" stroke="{color}" stroke-width="1.5"/>')
    legend = [("dot", PASS_COLOR, "passed"), ("dash", FAIL_COLOR, rtol_label)]
    if first is not None:
        px, py = c.x(first), c.y(y[first])
        c.add(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="6" fill="none" stroke="{FAIL_COLOR}" stroke-width="1.5"/>')
        text = f"first divergence: {tensors[first]['path']}"
        right = px + 12 + len(text) * 8 * CHAR_WIDTH <= c.x1
        tx, ty = (px + 12, py + 20) if right else (px - 12, py + 20)
        ty = min(ty, c.y1 - 4)
        c.add(f'<line x1="{_f(px)}" y1="{_f(py)}" x2="{_f(tx)}" y2="{_f(ty - 3)}" stroke="{FAIL_COLOR}"/>')
        c.text(tx, ty, text, anchor="start" if right else "end", color=FAIL_COLOR)
        legend += [("dot", FAIL_COLOR, "failed"), ("ring", FAIL_COLOR, "first divergence")]
    c.frame()
    c.legend(legend, c.x0, c.y0 - 8, across=True)
    return c.svg(f"{stage['name']}: rel error per tensor")


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
    drawn = [max(float(v), REL_FLOOR) for vs in series.values() for v in vs]
    xs = [float(s) for s in steps] or [0.0]
    lo, hi = min(xs), max(xs)
    c = _Canvas(1000, 450, left=70, right=330, top=48, bottom=44, xlim=(lo - 0.5, hi + 0.5) if lo == hi else
                (lo - (hi - lo) * 0.04, hi + (hi - lo) * 0.04), ylim=y_limits(drawn, rtols))
    rest = f"; top {len(top)} of {len(series)} by final value in colour" if len(series) > len(top) else ""
    c.title([f"{stage['name']}: per-layer divergence over steps", f"(zeros at {REL_FLOOR:g}{rest})"])
    c.y_axis("rel error = max|Δ| / scale (log)")
    every = max(1, math.ceil(len(steps) / 12))
    for s in steps[::every]:
        x = c.x(float(s))
        c.add(f'<line x1="{_f(x)}" y1="{_f(c.y1)}" x2="{_f(x)}" y2="{_f(c.y1 + 4)}" stroke="#000"/>')
        c.text(x, c.y1 + 14, f"{s:g}" if isinstance(s, float) else str(s), anchor="middle")
    c.text((c.x0 + c.x1) / 2, c.y1 + 32, "step", anchor="middle")

    def line(values, color, width):
        pts = []
        for s, v in zip(steps, values):
            v = float(v)
            if not math.isfinite(v):  # a gap
                c.polyline(pts, color=color, width=width)
                pts = []
                continue
            pts.append((c.x(float(s)), c.y(max(v, REL_FLOOR))))
        c.polyline(pts, color=color, width=width)
        return pts

    for p, values in series.items():
        if p not in top:
            line(values, OTHER_COLOR, 0.7)
    legend = []
    for k, p in enumerate(top):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        for px, py in line(series[p], color, 1.5):
            c.add(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="2" fill="{color}"/>')
        legend.append(("line", color, f"{p} ({final_rel(series[p]):.1e})"))
    if rtol is not None and rtol > 0:
        c.hline(rtol, color=FAIL_COLOR)
        legend.append(("dash", FAIL_COLOR, f"allowed rtol {rtol:g}"))
    c.frame()
    size = 7
    c.legend(legend, c.x1 + 10, (c.y0 + c.y1) / 2 - len(legend) * (size + 5) / 2, size=size)
    return c.svg(f"{stage['name']}: per-layer divergence over steps")
