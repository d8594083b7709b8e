"""The report's SVG plots: well-formed, self-contained, log axis with plain-text decade labels, the tolerance
line inside the plot area, the first divergence marked; and a check that writes them never imports matplotlib."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reports.plots import REL_FLOOR, stage_errors_svg, trajectory_svg

ROOT = Path(__file__).resolve().parents[2]
NS = "{http://www.w3.org/2000/svg}"


def _tensor(path, rel, rtol=1e-10):
    return {"path": path, "rel": rel, "rtol": rtol, "passed": rel <= rtol}


def _stage(rels, rtol=1e-10):
    return {"name": "forward_eval", "tensors": [_tensor(f"block{i}/<conv&{i}>", r, rtol) for i, r in enumerate(rels)]}


def _plot_area(root):
    """(top, bottom) of the plot frame: the last unfilled rect (the frame is drawn over the data)."""
    frame = [r for r in root.iter(NS + "rect") if r.get("fill") == "none"][-1]
    top = float(frame.get("y"))
    return top, top + float(frame.get("height"))


def test_passing_stage_shows_its_tolerance_line_inside_the_plot_with_plain_decade_labels():
    svg = stage_errors_svg(_stage([1e-16, 3e-17, 0.0]))
    root = ET.fromstring(svg)  # well-formed XML: every user string escaped
    top, bottom = _plot_area(root)
    rtol = [ln for ln in root.iter(NS + "line") if ln.get("class") == "rtol"]
    assert len(rtol) == 1 and top <= float(rtol[0].get("y1")) <= bottom
    texts = [t.text for t in root.iter(NS + "text")]
    assert {"1e-10", "1e-16", "1e-18"} <= set(texts), texts
    assert "block0/<conv&0>" in texts and "allowed rtol 1e-10" in texts
    assert f"zeros drawn at {REL_FLOOR:g}" in svg and "<conv" not in svg.replace("&lt;conv", "")


def test_first_divergence_is_ringed_labelled_and_its_tick_red():
    svg = stage_errors_svg(_stage([1e-16, 1e-16, 1e-3, float("inf")]))
    root = ET.fromstring(svg)
    texts = {t.text: t for t in root.iter(NS + "text")}
    assert texts["first divergence: block2/<conv&2>"].get("fill") == "#d62728"
    assert texts["block2/<conv&2>"].get("fill") == "#d62728" and texts["block1/<conv&1>"].get("fill") == "#000"
    rings = [c for c in root.iter(NS + "circle") if c.get("fill") == "none" and c.get("r") == "6"]
    assert len(rings) == 1
    assert "× = inf/nan" in svg and re.search(r"<path d=\"M[^\"]+l6,6", svg)


def test_svg_is_deterministic_and_references_nothing_outside():
    stage = _stage([1e-12 * (i + 1) for i in range(200)])
    a, b = stage_errors_svg(stage), stage_errors_svg(stage)
    assert a == b and "1 label in 4 shown" in a
    assert not re.search(r"href|url\(|<script|<image", a)


def test_trajectory_colours_the_top_series_and_holds_the_rtol():
    series = {f"layer{i}": [1e-16 * 10 ** i, 0.0, float("nan"), 1e-15 * 10 ** i] for i in range(12)}
    stage = {"name": "trajectory", "tensors": [_tensor("x", 1e-3)], "info": {"steps": [0, 1, 2, 3], "series": series}}
    root = ET.fromstring(trajectory_svg(stage))
    texts = [t.text for t in root.iter(NS + "text")]
    assert "layer11 (1.0e-04)" in texts and not any(t.startswith("layer0 ") for t in texts)
    assert "step" in texts and "allowed rtol 1e-10" in texts
    top, bottom = _plot_area(root)
    rtol = [ln for ln in root.iter(NS + "line") if ln.get("class") == "rtol"]
    assert len(rtol) == 1 and top <= float(rtol[0].get("y1")) <= bottom
    assert trajectory_svg({"name": "trajectory", "tensors": []}) is None


_HARNESS = """
import sys
from parity.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("MODULES", "matplotlib" in sys.modules, "torch._dynamo" in sys.modules)
sys.exit(code)
"""


def test_a_cached_check_writing_its_html_report_imports_neither_matplotlib_nor_dynamo(tmp_path):
    """The edit loop's check (reference from the cache). A check that runs Keras cannot promise it: importing
    keras imports ``matplotlib.pyplot`` (``keras/src/visualization/plot_image_gallery.py``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PARITY_CACHE_DIR=str(tmp_path / "cache"), PARITY_NO_CACHE="0")
    out = tmp_path / "out"
    for run in ("fills the cache", "from the cache"):
        p = subprocess.run([sys.executable, "-c", _HARNESS, "check", "minixception", "--fast", "--out", str(out)],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
        assert p.returncode in (0, 1), (run, p.stderr[-3000:])
    assert json.loads((out / "report.json").read_text())["environment"]["reference_cache"]["hit"] is True
    assert (out / "report.html").read_text().count("<svg") >= 5
    assert p.stdout.strip().splitlines()[-1] == "MODULES False False", p.stdout[-2000:]
