"""reports: JSON is lossless and canonical, Markdown and HTML show the facts a user acts on, the HTML is
self-contained and escaped, writes are atomic, and the package imports no framework."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from parity.core.results import SCHEMA, CheckResult, Finding, StageResult, TensorDiff
from reports import load_report, render_html, render_markdown, to_json, write_reports

F64 = 1e-10  # the float64 forward rtol of parity.core.spec.FLOAT64_POLICY


def _diff(path, max_abs, scale=1.0, rtol=F64, shape=(2, 3), mismatched=0, **kw):
    return TensorDiff(path=path, shape=shape, max_abs=max_abs, scale=scale, allowed=rtol * scale, rtol=rtol,
                      mismatched=mismatched, numel=math.prod(shape), **kw)


def _check(stages, findings=(), **kw):
    base = dict(pair="mini_xception", dtype="float64", device="cpu", seed=0, batch=4,
                optimizer={"kind": "sgd", "lr": 0.01}, config={"input_shape": [48, 48, 1]},
                environment={"python": "3.12.3", "numpy": "2.4.6"}, seconds=1.5)
    base.update(kw)
    return CheckResult(stages=list(stages), findings=list(findings), **base)


def passing() -> CheckResult:
    structure = StageResult("structure", rows=[
        {"path": "conv1", "kind": "conv2d", "params": 72},
        {"path": "bn1", "kind": "batchnorm", "params": 16, "eps": 1e-3},
    ])
    forward = StageResult("forward_eval", seconds=0.25, tensors=[
        _diff("conv1", 0.0), _diff("bn1", 3e-17, scale=2.0), _diff("output", 1e-16, extra={"onnx_ort_max_abs": 1e-8}),
    ])
    conversion = {"direction": "keras->torch", "mapped": [["conv1/kernel", "conv1.weight", "HWIO->OIHW"]],
                  "missing": [], "unexpected": [], "shape_mismatches": [], "nonfinite": [],
                  "conventions": ["HWIO->OIHW"], "assumptions": [], "ok": True}
    return _check([structure, forward], conversion=conversion)


FIX = "set eps=1e-3 (Keras default)"


def failing() -> CheckResult:
    forward = StageResult("forward_eval", tensors=[
        _diff("conv1", 1e-17),
        _diff("block1/bn2", 3.1e-3, shape=(1, 3), mismatched=2, index=(0, 1), ref_value=0.5, port_value=0.5031,
              cosine=0.99998),
        _diff("output", 1e-2, shape=(1, 3), mismatched=3),
    ])
    gradients = StageResult("gradients", tensors=[_diff("output:weight", 1.0, shape=(3,), mismatched=3)])
    finding = Finding(cause="bn_epsilon", path="block1/bn2", stage="forward_eval",
                      message="BatchNorm eps 1e-05 in the port, 1e-03 in the reference",
                      evidence="var 0.02: eps changes the normalised value by 2e-3", fix=FIX)
    return _check([StageResult("structure"), forward, gradients], findings=[finding])


def skipped() -> CheckResult:
    return _check([StageResult("forward_eval", tensors=[_diff("conv1", 0.0)]),
                   StageResult("onnx", skipped="onnxruntime is not installed")])


def nonfinite() -> CheckResult:
    return _check([StageResult("forward_eval", tensors=[
        _diff("conv1", 1e-17),
        _diff("bn1", math.inf, mismatched=6, ref_value=1.0, port_value=math.inf),
        _diff("zero_scale", 1e-3, scale=0.0),
        _diff("output", math.nan, mismatched=6, cosine=math.nan),
    ])])


def trajectory() -> CheckResult:
    steps = [1, 2, 3]
    series = {f"layer{i}": [10.0 ** (-15 + i), 10.0 ** (-14 + i), 10.0 ** (-13 + i)] for i in range(12)}
    series["flat"] = [0.0, 0.0, 0.0]
    traj = StageResult("trajectory", tensors=[_diff("output", 1e-12, rtol=1e-8)],
                       info={"steps": steps, "series": series, "lr": 0.01})
    return _check([StageResult("forward_eval", tensors=[_diff("conv1", 0.0)]), traj])


ALL = {"passing": passing, "failing": failing, "skipped": skipped, "nonfinite": nonfinite,
       "trajectory": trajectory}


@pytest.fixture(params=list(ALL))
def result(request) -> CheckResult:
    return ALL[request.param]()


def test_write_reports_writes_three_files_and_no_temp_files(result, tmp_path):
    out = tmp_path / "new" / "dir"
    paths = write_reports(result, out)
    assert set(paths) == {"json", "md", "html"}
    assert all(p.is_file() and p.parent == out for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]


def test_write_reports_accepts_the_dict_and_overwrites(tmp_path):
    write_reports(failing(), tmp_path)
    paths = write_reports(passing().to_dict(), tmp_path)
    assert json.loads(paths["json"].read_text())["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]


def test_json_round_trip_is_exact(result):
    text = to_json(result)
    d = json.loads(text)
    assert d["schema"] == SCHEMA == "parity.report/1"
    assert CheckResult.from_dict(d).to_dict() == result.to_dict()
    assert text == to_json(CheckResult.from_dict(d)) and text.endswith("}\n")


def test_json_keeps_inf_and_nan_as_strings():
    d = json.loads(to_json(nonfinite()))
    bn1, output = d["stages"][0]["tensors"][1], d["stages"][0]["tensors"][3]
    assert (bn1["max_abs"], bn1["port_value"], output["max_abs"], output["cosine"]) == ("inf", "inf", "nan", "nan")


def test_json_names_a_nonfinite_float_in_free_form_info():
    r = _check([StageResult("step", info={"loss": [1.0, math.nan]})])
    with pytest.raises(ValueError, match=r"expected finite floats.*Received: a non-finite float at "
                                         r"report\.stages\[0\]\.info\.loss\[1\]"):
        to_json(r)


def test_load_report_reads_back_what_write_reports_wrote(tmp_path):
    r = failing()
    assert load_report(write_reports(r, tmp_path)["json"]).to_dict() == r.to_dict()


@pytest.mark.parametrize("content, received", [
    ('{"schema": "other/2"}', "Received: schema 'other/2'"),
    ('{"pair": "x"}', "Received: an object without a 'schema' key"),
    ("[1, 2]", "Received: a JSON list"),
    ("not json", "Received: text that is not JSON"),
])
def test_load_report_rejects_a_file_that_is_not_a_report(tmp_path, content, received):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="expected") as e:
        load_report(path)
    assert "expected a parity report (a JSON object with schema 'parity.report/1')" in str(e.value)
    assert received in str(e.value)


def test_renderers_reject_a_dict_that_is_not_a_report():
    with pytest.raises(ValueError, match="expected a parity report .* Received: a dict with schema None"):
        render_markdown({"pair": "x"})


def test_markdown_shows_summary_first_divergence_and_fix():
    r = failing()
    md = render_markdown(r.to_dict())
    assert r.summary_line() in md
    assert md.startswith("# parity: mini_xception — FAILED\n")
    assert "## First divergence" in md and "At **forward_eval block1/bn2**" in md
    assert "Mismatched elements: 2 / 3; greatest absolute difference 0.0031 at index (0, 1)" in md
    assert f"- fix: {FIX}" in md
    assert "| error | bn_epsilon | block1/bn2 | forward_eval |" in md
    assert "| forward_eval | FAIL | 3 | 1.00e-02 | output | block1/bn2 | 0.00 |  |" in md


def test_markdown_tables_settings_structure_conversion_tensors_and_extra_columns():
    md = render_markdown(passing())
    assert "| dtype | float64 |" in md and "| config.input_shape | 48; 48; 1 |" in md
    assert "| optimizer | value |" in md and "| kind | sgd |" in md and "| lr | 0.01 |" in md  # key/value, no JSON
    assert "| python | 3.12.3 |" in md
    assert "| path | kind | params | eps |" in md and "| conv1 | conv2d | 72 |  |" in md
    assert "| mapped | 1 |  |" in md and "| conventions | 1 | HWIO->OIHW |" in md
    assert ("| path | shape | max_abs | scale | rel | allowed | mismatched/numel | pass | onnx_ort_max_abs |"
            in md)
    assert "| output | 2×3 | 1e-16 | 1 | 1.00e-16 | 1e-10 | 0 / 6 | pass | 1e-08 |" in md
    assert "| forward_eval | pass | 3 | 1.00e-16 | output |  | 0.25 |  |" in md


def test_markdown_shows_skip_reason_and_nonfinite_values():
    md = render_markdown(skipped())
    assert "| onnx | skipped | 0 |  |  |  | 0.00 | onnxruntime is not installed |" in md
    md = render_markdown(nonfinite())
    assert "| bn1 | 2×3 | inf | 1 | inf |" in md and "| output | 2×3 | nan | 1 | nan |" in md


def test_markdown_lists_the_trajectory_top_series():
    md = render_markdown(trajectory())
    assert "| path | rel at step 3 | max rel over steps |" in md
    assert "| layer11 | 1.00e-02 | 1.00e-02 |" in md and "| layer1 |" not in md


def test_html_is_self_contained_with_plots(result):
    html = render_html(result)
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)", html, re.I)
    without_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    assert result.summary_line().replace("&", "&amp;") in html


def test_html_draws_one_error_plot_per_stage_with_tensors_and_a_trajectory_plot():
    assert render_html(failing()).count("<svg") == 2  # forward_eval and gradients; structure has no tensors
    html = render_html(trajectory())
    assert html.count("<svg") == 3 and "per-layer divergence over steps" in html
    assert "first divergence: block1/bn2" in render_html(failing())


def test_html_escapes_user_strings():
    evil = "block1/<script>alert(1)</script>"
    r = _check([StageResult("forward_eval", tensors=[_diff(evil, 1.0, mismatched=6), _diff("a$b$", 0.0)])],
               findings=[Finding(cause="c", path=evil, message="<b>bold</b>", fix="x & y")])
    html = render_html(r)
    assert "<script" not in html and "<b>bold" not in html
    assert "block1/&lt;script&gt;alert(1)&lt;/script&gt;" in html and "x &amp; y" in html


def test_reports_imports_no_framework():
    code = "import reports, sys; assert not {'torch', 'tensorflow', 'keras'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_structure_failure_conversion_problems_and_stage_findings_are_shown():
    shape = Finding(cause="shape", path="conv1", stage="structure", message="kernel shape differs")
    structure = StageResult("structure", errors=["conv1: expected kernel (3, 3, 1, 8). Received: (3, 3, 1, 4)."],
                            findings=[shape])
    conversion = {"mapped": [], "missing": ["conv1.bias"], "unexpected": [],
                  "shape_mismatches": [["conv1.weight", [8, 1, 3, 3], [4, 1, 3, 3]]], "nonfinite": []}
    md = render_markdown(_check([structure], findings=[shape], conversion=conversion))
    assert "At **structure**:" in md and "conv1: expected kernel (3, 3, 1, 8). Received: (3, 3, 1, 4)." in md
    assert md.count("| error | shape | conv1 | structure | kernel shape differs |") == 1
    assert "| shape_mismatches | 1 | conv1.weight: expected [8, 1, 3, 3], received [4, 1, 3, 3] |" in md
    assert "| missing | 1 | conv1.bias |" in md


def test_a_user_pairs_alignment_is_a_table_in_markdown_and_html():
    """``parity.compare`` puts its automatic alignment in the structure stage's info: both reports show it
    as a table (an unaligned layer marked), not as a truncated blob in the stage's info."""
    rows = [{"ref": "conv", "port": "0", "kind": "conv2d", "status": "aligned"},
            {"ref": None, "port": "1", "kind": "relu", "status": "fused"},
            {"ref": "extra_dense", "port": None, "kind": "dense", "status": "unaligned"}]
    r = _check([StageResult("structure", info={"alignment": rows}),
                StageResult("forward_eval", tensors=[_diff("conv", 0.0)])])
    md = render_markdown(r)
    assert "## Alignment" in md
    section = md.split("## Alignment", 1)[1].split("\n## ", 1)[0]
    assert "| ref | port | kind | status |" in section and "| extra_dense |  | dense | unaligned |" in section
    html = render_html(r)
    table = html.split(">Alignment</h2>", 1)[1].split("</table>", 1)[0]
    assert '<tr class="fail"><td>extra_dense</td>' in table and "<td>fused</td>" in table
    assert "alignment" not in md.split("## Stage `structure`", 1)[1].split("\n## ", 1)[0]


# -- the cause first ---------------------------------------------------------------------------------------------
def _sections(md: str) -> list[str]:
    return [line[3:] for line in md.splitlines() if line.startswith("## ")]


def with_initialisation() -> CheckResult:
    r = failing()
    r.initialisation = [Finding(cause="init", path="conv1", stage="structure", severity="warning",
                                message="weight init: reference glorot_uniform, port kaiming_uniform(a=sqrt(5))",
                                fix="nn.init.xavier_uniform_(m.weight)", evidence="std ratio port/reference 0.589")]
    r.stages[0].rows = [{"path": "conv1", "kind": "conv2d", "status": "ok"}]
    return r


def test_markdown_sections_in_reading_order():
    """verdict -> first divergence -> causes -> stages -> structure -> per-stage tensors -> initialisation ->
    settings, optimizer, environment last."""
    md = render_markdown(with_initialisation())
    order = _sections(md)
    assert order[:4] == ["First divergence", "Causes", "Not run", "Stages"], order  # failing() ran 3 stages
    assert order.index("Structure") < order.index("Stage `forward_eval`: FAIL") < order.index("Initialisation")
    assert order[-3:] == ["Settings", "Optimizer", "Environment"]


def test_html_sections_in_reading_order():
    html = render_html(with_initialisation())
    ids = ["verdict", "first-divergence", "causes", "stages", "plots", "structure", "stage-1", "initialisation",
           "settings", "optimizer", "environment"]
    where = [html.index(f'id="{i}"') for i in ids]
    assert where == sorted(where), dict(zip(ids, where))


def test_initialisation_is_its_own_section_never_a_cause():
    r = with_initialisation()
    md = render_markdown(r)
    causes = md.split("## Causes", 1)[1].split("\n## ", 1)[0]
    init = md.split("## Initialisation", 1)[1].split("\n## ", 1)[0]
    assert "glorot_uniform" not in causes and "| conv1 | weight init: reference glorot_uniform" in init
    assert "cannot cause a divergence in this check" in init and "forward_eval" not in init
    d = json.loads(to_json(r))
    assert d["initialisation"][0]["cause"] == "init" and all(f["cause"] != "init" for f in d["findings"])
    assert CheckResult.from_dict(d).initialisation == r.initialisation


def test_causes_ranked_grouped_with_every_layer():
    """One row per cause, the first divergence's first; its layers in one cell; warnings after errors."""
    late = Finding(cause="momentum", path="output", stage="gradients", message="late error")
    warn = Finding(cause="param_count", path="conv1", stage="structure", message="counts differ", severity="warning")
    r = failing()
    r.findings = [warn, late] + [Finding(cause="bn_epsilon", path=p, stage="forward_eval", message="eps differs",
                                         fix=FIX) for p in ("block1/bn2", "b/bn", "c/bn", "d/bn", "e/bn", "f/bn")]
    assert [f.cause for f in r.causes()][:2] == ["bn_epsilon", "bn_epsilon"] and r.causes()[-1] is warn
    md = render_markdown(r)
    rows = [line for line in md.split("## Causes", 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| error | bn_epsilon | block1/bn2, b/bn, c/bn, d/bn (+2 more) | forward_eval |")
    assert rows[2].startswith("| error | momentum | output | gradients |") and rows[3].startswith("| warning |")
    assert "(and 5 more layers: b/bn, c/bn, d/bn, e/bn (+1 more))" in md


def test_skipped_stages_say_what_they_would_have_added():
    """--stages forward_eval finds the layer but no rule names a cause: the result says the structure stage
    was skipped and what it names."""
    r = _check([StageResult("forward_eval", tensors=[_diff("bn1", 1e-3, mismatched=6)])])
    skipped = {k.stage: k for k in r.skipped}
    assert set(skipped) == {"structure", "forward_train", "gradients", "step", "isolated"}
    assert "config causes" in skipped["structure"].adds and skipped["structure"].reason == "not among the stages run"
    assert r.summary_line().endswith("; no cause named: structure stage skipped (it names config causes: eps, "
                                     "momentum, padding, strides, bias)")
    assert r.headline().startswith("forward_eval bn1: max|Δ| 0.001 (allowed 1e-10); no cause named: structure")
    md = render_markdown(r)
    assert "- no cause named: structure stage skipped (not among the stages run): it names config causes" in md
    assert "| structure | not among the stages run | it names config causes" in md
    assert json.loads(to_json(r))["skipped"][0]["stage"] == "structure"
    assert not failing().skipped or all(k.stage != "structure" for k in failing().skipped)


def test_optimizer_is_a_readable_key_value_list_not_json():
    r = passing()
    r.optimizer = {"kind": "sgd", "lr": 0.01, "l2": {"conv1": 0.01}, "lr_schedule": [], "rules": ["rule one", "two"]}
    md = render_markdown(r)
    opt = md.split("## Optimizer", 1)[1].split("\n## ", 1)[0]
    assert "| kind | sgd |" in opt and "| l2 | conv1: 0.01 |" in opt and "| lr_schedule | none |" in opt
    assert "| rule 1 | rule one |" in opt and "{" not in opt


def test_check_result_str_repr_and_raise_for_failure():
    r = failing()
    assert str(r) == (r.summary_line() + f"\n  cause: bn_epsilon at block1/bn2 -> {FIX}")
    assert repr(r) == ("CheckResult(pair='mini_xception', passed=False, dtype='float64', first_divergence="
                       "'forward_eval block1/bn2', cause='bn_epsilon', stages=['structure', 'forward_eval', "
                       "'gradients'])")
    assert len(repr(r)) < 300 and repr(r.stages[1]).startswith("StageResult(name='forward_eval', passed=False, "
                                                               "tensors=3, first_divergence='block1/bn2')")
    fd = r.first_divergence
    stage, tensor = fd
    assert (stage.name, tensor.path, fd.cause.cause, fd.where) == ("forward_eval", "block1/bn2", "bn_epsilon",
                                                                  "forward_eval block1/bn2")
    assert r.stage("forward_eval").first_divergence is tensor  # the same kind of member on both
    with pytest.raises(AssertionError) as e:
        r.raise_for_failure()
    assert type(e.value).__name__ == "ParityFailure" and e.value.result is r
    assert str(e.value).splitlines()[0] == r.summary_line()
    with pytest.raises(AssertionError):
        r.assert_ok()
    ok = passing()
    assert ok.raise_for_failure() is ok and ok.assert_ok() is ok and ok.first_divergence is None
    assert str(ok) == ok.summary_line() and "\n" not in str(ok)


def test_plot_y_range_holds_the_tolerance_line():
    """A passing stage's errors (~1e-16) sit far below its tolerance (1e-10): the y-range holds both."""
    from reports.plots import y_limits

    low, high = y_limits([1e-16, 3e-17, 1e-18], [1e-10, 1e-10, 1e-10])
    assert low <= 1e-18 and high >= 1e-10 * 10
    low, high = y_limits([1e-3, 5e-2], [1e-10])
    assert low <= 1e-10 <= high and high >= 5e-2
