"""The HTML report in a real headless browser at 1280 px: the verdict and the first divergence (with its cause
and fix) are on the first screen, no table widens the page, and the screenshot shows the verdict. Skipped
where no Chromium-family browser is installed (``apt-get install chromium``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from parity.core.results import CheckResult, Finding, StageResult, TensorDiff
from reports import write_reports
from reports.browser import VIEWPORT, find_browser, layout, screenshot

pytestmark = pytest.mark.skipif(find_browser() is None, reason="no Chromium-family browser installed")

LAYERS = [f"block{b}/sepconv{c}/{part}" for b in range(1, 5) for c in (1, 2) for part in ("", "bn", "relu")]
FIX = "set eps=0.001 (Keras default)"
#: the verdict's colour in reports/html.py (h1 .FAILED), as RGB
FAILED_RGB = (0xCF, 0x22, 0x2E)


def _diff(path, rel, rtol=1e-10, shape=(8, 16, 30, 30)):
    n = math.prod(shape)
    return TensorDiff(path=path, shape=shape, max_abs=rel * 2.0, scale=2.0, allowed=rtol * 2.0, rtol=rtol,
                      mismatched=n if rel > rtol else 0, numel=n, index=(1, 4, 5, 2) if rel > rtol else None,
                      ref_value=2.07887, port_value=2.08126, cosine=1.0)


def big_failure() -> CheckResult:
    """A FAILED check the size of minixception's: 14 layers with the same cause, 20 initialisation
    differences, a wide structure table with long names, six stages of tensors, a long optimizer."""
    bns = [p for p in LAYERS if p.endswith("bn")]
    rows = [{"path": p, "kind": "batchnorm" if p.endswith("bn") else "separable_conv2d",
             "reference": f"{p.replace('/', '_')}_with_a_long_keras_name (SeparableConv2D)",
             "port": f"{p.replace('/', '.')}.a_long_torch_module_path (BatchNorm2d)", "ref_trainable": 1312,
             "ref_non_trainable": 64, "port_params": 1312, "port_buffers": 64, "num_batches_tracked": 1,
             "ref_shape": [32, 30, 30], "port_shape": [32, 30, 30], "status": "differs" if p in bns else "ok"}
            for p in LAYERS]
    structure = StageResult("structure", rows=rows, errors=[f"{p}: BatchNorm eps 1e-05 in the port, 0.001 in the "
                                                            "reference" for p in bns])
    stages = [structure] + [StageResult(name, tensors=[_diff(p, 1e-3 if i else 1e-16) for i, p in enumerate(LAYERS)])
                            for name in ("forward_eval", "forward_train", "gradients", "step", "isolated")]
    findings = [Finding("bn_eps", p, "BatchNorm eps 1e-05 in the port, 0.001 in the reference", FIX,
                        stage="forward_eval", evidence="eval-mode output scales by sqrt(var+0.001)/sqrt(var+1e-05)")
                for p in bns]
    init = [Finding("init", p, "weight init: reference glorot_uniform (U(+-0.204)), port kaiming_uniform(a=sqrt(5)) "
                    "(torch default)", "nn.init.xavier_uniform_(m.weight)", stage="structure", severity="warning",
                    evidence="std ratio port/reference 0.589") for p in LAYERS[:20]]
    optimizer = {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "l2": {p: 0.01 for p in LAYERS},
                 "rules": ["Keras 3 SGD keeps m = mu*m - lr*g and adds it (w += m); torch keeps buf = mu*buf + g "
                           "and subtracts lr*buf. With a constant lr, Keras m == -lr * torch buf."] * 4}
    return CheckResult(pair="minixception", dtype="float64", device="cpu", seed=0, batch=8, optimizer=optimizer,
                       config={"input_shape": [64, 64, 1], "num_classes": 7}, stages=stages, findings=findings,
                       initialisation=init, environment={"python": "3.11.7", "torch": "2.13.0"})


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    return write_reports(big_failure(), tmp_path_factory.mktemp("browser"))["html"]


def test_verdict_and_first_divergence_fill_the_first_screen_at_1280px(page):
    got = layout(page)
    height = min(got["innerHeight"], VIEWPORT[1])
    boxes = got["boxes"]
    assert boxes["verdict"]["bottom"] <= height and boxes["summary"]["bottom"] <= height
    # the whole first-divergence block (where, figures, cause, fix) is on the first screen
    assert boxes["first-divergence"]["bottom"] <= height, got
    # in reading order: ... causes before the structure table, settings last
    assert boxes["first-divergence"]["top"] < boxes["causes"]["top"] < boxes["structure"]["top"] \
        < boxes["settings"]["top"]


def test_no_table_widens_the_page_at_1280px(page):
    got = layout(page)
    assert got["scrollWidth"] <= got["innerWidth"] == VIEWPORT[0], got


def test_the_screenshot_shows_the_verdict(page, tmp_path):
    from PIL import Image

    png = screenshot(page, tmp_path / "first-screen.png")
    with Image.open(png) as im:
        assert im.size == VIEWPORT
        top = np.asarray(im.convert("RGB"))[:80].astype(int)  # the h1 line
    red = int((np.abs(top - np.array(FAILED_RGB)) <= 40).all(axis=-1).sum())
    assert red > 200, f"expected the red FAILED verdict in the first 80 px rows. Received: {red} red pixels."
    html = page.read_text()
    fd = html.index('id="first-divergence"')
    assert "forward_eval block1/sepconv1/bn" in html[fd:fd + 400] and FIX in html[fd:fd + 3000]
