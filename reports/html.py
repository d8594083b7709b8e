"""The HTML report: one self-contained file (inline CSS, inline SVG plots, no scripts, no external URLs).

Same content as the Markdown report (see :mod:`reports.view`) plus, per stage with tensors, a plot of the
rel error per tensor and, for a trajectory stage, the per-layer divergence over steps. The template is a
string constant here, so it ships with the module (no package data to declare). Every user string is
escaped by jinja2's autoescape; only the SVGs drawn by :mod:`reports.plots` are inserted as markup.
"""
from __future__ import annotations

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from parity.core.results import CheckResult

from .json_report import as_dict
from .view import build_view

TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>parity: {{ v.pair }} {{ v.verdict }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1280px; margin: 2rem auto; padding: 0 1rem; }
h1 .PASSED, .pass { color: #1a7f37; }
h1 .FAILED, .FAIL { color: #cf222e; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
pre { background: #f6f8fa; padding: .75rem; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr.fail td { background: #ffebe9; }
tr.first td { background: #ffcecb; font-weight: 600; }
tr.skip td { color: #6e7781; }
.plot svg { max-width: 100%; height: auto; }
summary { cursor: pointer; margin: .5rem 0; }
</style>
</head>
<body>
{% macro table(t) -%}
<table>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row, mark in t.marked_rows() %}
<tr{% if mark %} class="{{ mark }}"{% endif %}>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{%- endmacro %}
<h1>parity: {{ v.pair }} <span class="{{ v.verdict }}">{{ v.verdict }}</span></h1>
<pre>{{ v.summary }}</pre>

<h2>Settings</h2>
{{ table(v.settings) }}
{% if v.environment %}
<h2>Environment</h2>
{{ table(v.environment) }}
{% endif %}
<h2>Stages</h2>
{{ table(v.stages) }}
{% if v.findings %}
<h2>Findings</h2>
{{ table(v.findings) }}
{% endif %}
{% if v.first_divergence %}
{% set fd = v.first_divergence %}
<h2>First divergence</h2>
<p>At <strong>{{ fd.stage }}{% if fd.path %} {{ fd.path }}{% endif %}</strong>:</p>
<pre>{{ fd.detail }}</pre>
{% if fd.cause %}
<ul>
<li>cause: <strong>{{ fd.cause.cause }}</strong> at <code>{{ fd.cause.path }}</code>: {{ fd.cause.message }}</li>
{% if fd.cause.evidence %}<li>evidence: {{ fd.cause.evidence }}</li>{% endif %}
{% if fd.cause.fix %}<li>fix: {{ fd.cause.fix }}</li>{% endif %}
</ul>
{% endif %}
{% endif %}
{% if v.structure %}
<h2>Structure</h2>
{{ table(v.structure) }}
{% endif %}
{% if v.alignment %}
<h2>Alignment</h2>
{{ table(v.alignment) }}
{% endif %}
{% if v.conversion %}
<h2>Weight conversion</h2>
{{ table(v.conversion) }}
{% endif %}
{% for s, errors_plot, steps_plot in stages %}
<h2 id="stage-{{ loop.index }}">Stage <code>{{ s.name }}</code>:
<span class="{{ s.verdict }}">{{ s.verdict }}</span></h2>
{% if s.skipped %}<p>Skipped: {{ s.skipped }}</p>{% endif %}
{% if s.errors %}
<p>Errors:</p>
<ul>{% for e in s.errors %}<li>{{ e }}</li>{% endfor %}</ul>
{% endif %}
{% if s.info %}{{ table(s.info) }}{% endif %}
{% if steps_plot %}<div class="plot">{{ steps_plot }}</div>{% endif %}
{% if s.trajectory %}
<p>Largest divergence over steps:</p>
{{ table(s.trajectory) }}
{% endif %}
{% if errors_plot %}<div class="plot">{{ errors_plot }}</div>{% endif %}
{% if s.tensors %}
<details{% if s.verdict == "FAIL" %} open{% endif %}>
<summary>tensors ({{ s.tensors.rows | length }})</summary>
{{ table(s.tensors) }}
</details>
{% endif %}
{% endfor %}
</body>
</html>
"""

_TEMPLATE = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                        undefined=StrictUndefined).from_string(TEMPLATE)


def _markup(svg: str | None) -> Markup | None:
    """An SVG from :mod:`reports.plots` (matplotlib escaped its text) marked safe for the template."""
    return Markup(svg) if svg is not None else None


def render_html(d: CheckResult | dict) -> str:
    """The report as one self-contained HTML page from a ``CheckResult`` or its canonical dict."""
    from .plots import stage_errors_svg, trajectory_svg  # matplotlib (~0.4 s) only when a page is drawn

    v = build_view(as_dict(d))
    stages = [(s, _markup(stage_errors_svg(s.raw)), _markup(trajectory_svg(s.raw))) for s in v.stage_views]
    return _TEMPLATE.render(v=v, stages=stages)
