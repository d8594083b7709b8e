"""The HTML report: one self-contained file (inline CSS, inline SVG plots, no scripts, no external URLs).

Same content and order as the Markdown report (see :mod:`reports.view`) plus, per stage with tensors, a plot
of the rel error per tensor and, for a trajectory stage, the per-layer divergence over steps. Laid out for
a 1280 px window: the verdict and the first divergence fill the first screen, wide tables scroll inside their
own box instead of widening the page. The template is a
string constant here, so it ships with the module (no package data to declare). Every user string is
escaped by jinja2's autoescape; only the SVGs drawn by :mod:`reports.plots` are inserted as markup.
"""
from __future__ import annotations

import functools

from parity.core.results import CheckResult

from .json_report import as_dict
from .plots import stage_errors_svg, trajectory_svg
from .view import INITIALISATION_NOTE, build_view

TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>parity: {{ v.pair }} {{ v.verdict }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1240px; margin: 1rem auto; padding: 0 1rem; }
h1 { margin: .5rem 0; font-size: 1.6rem; }
h1 .PASSED, .pass { color: #1a7f37; }
h1 .FAILED, .FAIL { color: #cf222e; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 1.6rem; font-size: 1.25rem; }
pre { background: #f6f8fa; padding: .6rem .75rem; white-space: pre-wrap; overflow-wrap: anywhere; margin: .4rem 0; }
#summary { font-size: 13px; }
#first-divergence { border-left: 4px solid #cf222e; padding: .1rem .9rem .4rem; background: #fff8f7; }
#first-divergence h2 { margin-top: .4rem; border: 0; }
#first-divergence ul { margin: .3rem 0; padding-left: 1.2rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 2px 6px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
td { max-width: 36rem; }
th { background: #f6f8fa; white-space: nowrap; }
tr.fail td { background: #ffebe9; }
tr.first td { background: #ffcecb; font-weight: 600; }
tr.skip td { color: #6e7781; }
.note { color: #57606a; }
.plot svg { max-width: 100%; height: auto; }
summary { cursor: pointer; margin: .5rem 0; }
</style>
</head>
<body>
{% macro table(t) -%}
<div class="scroll"><table>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row, mark in t.marked_rows() %}
<tr{% if mark %} class="{{ mark }}"{% endif %}>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table></div>
{%- endmacro %}
<h1 id="verdict">parity: {{ v.pair }} <span class="{{ v.verdict }}">{{ v.verdict }}</span></h1>
<pre id="summary">{{ v.summary }}</pre>
{% if v.first_divergence %}
{% set fd = v.first_divergence %}
<section id="first-divergence">
<h2>First divergence: <code>{{ fd.where }}</code></h2>
<pre>{{ fd.detail }}</pre>
{% if fd.cause %}
<ul>
<li>cause: <strong>{{ fd.cause.cause }}</strong> at <code>{{ fd.cause.path }}</code>{{ fd.also }}: {{ fd.cause.message }}</li>
{% if fd.cause.fix %}<li>fix: <strong>{{ fd.cause.fix }}</strong></li>{% endif %}
{% if fd.cause.evidence %}<li>evidence: {{ fd.cause.evidence }}</li>{% endif %}
</ul>
{% endif %}
{% for note in fd.no_cause %}<p>No cause named: {{ note }}</p>{% endfor %}
</section>
{% endif %}
{% if v.findings %}
<h2 id="causes">Causes</h2>
{{ table(v.findings) }}
{% endif %}
{% if v.skipped %}
<h2 id="not-run">Not run</h2>
{{ table(v.skipped) }}
{% endif %}
<h2 id="stages">Stages</h2>
{{ table(v.stages) }}
{% if plots %}
<h2 id="plots">Plots</h2>
{% for name, svg in plots %}<div class="plot">{{ svg }}</div>
{% endfor %}
{% endif %}
{% if v.structure %}
<h2 id="structure">Structure</h2>
{{ table(v.structure) }}
{% endif %}
{% if v.alignment %}
<h2 id="alignment">Alignment</h2>
{{ table(v.alignment) }}
{% endif %}
{% if v.conversion %}
<h2 id="conversion">Weight conversion</h2>
{{ table(v.conversion) }}
{% endif %}
{% for s in v.stage_views %}
<h2 id="stage-{{ loop.index }}">Stage <code>{{ s.name }}</code>:
<span class="{{ s.verdict }}">{{ s.verdict }}</span></h2>
{% if s.skipped %}<p>Skipped: {{ s.skipped }}</p>{% endif %}
{% if s.errors %}
<p>Errors:</p>
<ul>{% for e in s.errors %}<li>{{ e }}</li>{% endfor %}</ul>
{% endif %}
{% if s.info %}{{ table(s.info) }}{% endif %}
{% if s.trajectory %}
<p>Largest divergence over steps:</p>
{{ table(s.trajectory) }}
{% endif %}
{% if s.tensors %}
<details>
<summary>tensors ({{ s.tensors.rows | length }}{% if s.failed %}: {{ s.failed }} failed{% endif %}{% if s.first %}, first divergence {{ s.first }}{% endif %})</summary>
{{ table(s.tensors) }}
</details>
{% endif %}
{% endfor %}
{% if v.initialisation %}
<h2 id="initialisation">Initialisation</h2>
<p class="note">{{ initialisation_note }}</p>
{{ table(v.initialisation) }}
{% endif %}
<h2 id="settings">Settings</h2>
{{ table(v.settings) }}
{% if v.optimizer %}
<h2 id="optimizer">Optimizer</h2>
{{ table(v.optimizer) }}
{% endif %}
{% if v.environment %}
<h2 id="environment">Environment</h2>
{{ table(v.environment) }}
{% endif %}
</body>
</html>
"""

@functools.cache
def _template():
    """The compiled template. jinja2 is imported here, on the first page drawn, not with the module: a check
    that writes no HTML (``--format json``, the API) does not pay for it."""
    from jinja2 import Environment, StrictUndefined

    return Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                       undefined=StrictUndefined).from_string(TEMPLATE)


def _markup(svg: str | None):
    """An SVG from :mod:`reports.plots` (which escaped its text) marked safe for the template."""
    from markupsafe import Markup

    return Markup(svg) if svg is not None else None


def render_html(d: CheckResult | dict) -> str:
    """The report as one self-contained HTML page from a ``CheckResult`` or its canonical dict."""
    v = build_view(as_dict(d))
    plots = []
    for s in v.stage_views:
        for svg in (trajectory_svg(s.raw), stage_errors_svg(s.raw)):
            if svg is not None:
                plots.append((s.name, _markup(svg)))
    return _template().render(v=v, plots=plots, initialisation_note=INITIALISATION_NOTE)
