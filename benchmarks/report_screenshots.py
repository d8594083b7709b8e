"""The README's report screenshots, made by a check rather than by hand: a FAILED check of minixception (its CI
size, ``--fast``) against the planted port ``tests.planted_ports:bn_eps_1e5`` (BatchNorm eps 1e-5 instead of
Keras' 1e-3), its reports, and the first screen of its HTML report in headless Chromium at 1280 px.

    .venv/bin/python benchmarks/report_screenshots.py    # -> docs/report-failed.png, parity-report/readme-failed/

Needs TensorFlow, PyTorch and a Chromium-family browser (``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import parity  # noqa: F401  (environment before the frameworks)
from parity.harness import check
from parity.pairs import registry
from reports import write_reports
from reports.browser import VIEWPORT, find_browser, layout, screenshot

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "tests.planted_ports:bn_eps_1e5"
#: a PNG committed to the repository stays below this (the README's budget)
MAX_PNG_BYTES = 300_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder of the PNG (default: docs/)")
    ap.add_argument("--reports", default=str(ROOT / "parity-report" / "readme-failed"),
                    help="folder of the reports (default: parity-report/readme-failed/, not committed)")
    args = ap.parse_args(argv)
    if find_browser() is None:
        print("report_screenshots: expected a Chromium-family browser on PATH. Received: none. Install one "
              "(`apt-get install chromium`) or set PARITY_BROWSER.", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests.planted_ports
    spec = registry.get("minixception")
    result = check(spec, port=PLANTED, config=dict(spec.fast_config))
    assert not result.passed, "the planted bug was expected to fail the check"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_reports(result, args.reports)
    png = screenshot(paths["html"], out / "report-failed.png", size=VIEWPORT)
    boxes = layout(paths["html"])
    size = png.stat().st_size
    print(result.summary_line())
    print(f"{png} ({size:,} bytes, {VIEWPORT[0]}x{VIEWPORT[1]}); first divergence block at "
          f"{boxes['boxes']['first-divergence']['top']:.0f}-{boxes['boxes']['first-divergence']['bottom']:.0f} px; "
          f"page {boxes['scrollWidth']} px wide")
    if size > MAX_PNG_BYTES:
        print(f"warning: {png} is {size:,} bytes, over the {MAX_PNG_BYTES:,} bytes a committed PNG may take",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
