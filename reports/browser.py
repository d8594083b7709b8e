"""The HTML report in a real headless browser (Chromium): a screenshot of its first screen and the layout
facts a person sees there, for the README's screenshots and the tests that keep the page readable at 1280 px.

No browser is a dependency: :func:`find_browser` returns None where none is installed, and the tests skip.
The report itself stays script-free; :func:`layout` measures a copy with one inline script appended, which
writes the measured boxes into the DOM that ``--dump-dom`` prints.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

#: executables tried, in order (Debian's ``chromium``, Ubuntu's ``chromium-browser``, Google's builds)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: the first screen the README and the tests mean: a 1280 px wide laptop window
VIEWPORT = (1280, 800)
#: elements measured by :func:`layout` (ids in :mod:`reports.html`)
MEASURED = ("verdict", "summary", "first-divergence", "causes", "structure", "settings")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
          "--disable-extensions", "--mute-audio")
_MEASURE = """
<script>
(function () {
  var out = {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
             innerHeight: window.innerHeight, boxes: {}};
  %s.forEach(function (id) {
    var e = document.getElementById(id);
    if (e) { var r = e.getBoundingClientRect();
             out.boxes[id] = {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; }
  });
  var p = document.createElement("pre"); p.id = "parity-layout"; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
})();
</script>
"""
_LAYOUT = re.compile(r'<pre id="parity-layout">(.*?)</pre>', re.S)


def find_browser() -> str | None:
    """The path of a Chromium-family browser, or None. ``PARITY_BROWSER`` names one explicitly."""
    explicit = os.environ.get("PARITY_BROWSER")
    if explicit:
        return shutil.which(explicit)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="parity-browser-") as profile:
        return subprocess.run([browser, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, size: tuple[int, int] = VIEWPORT,
               browser: str | None = None, timeout: float = 120) -> Path:
    """A PNG of the page's first ``size`` pixels (width, height) as Chromium draws it."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(f"expected a Chromium-family browser ({', '.join(BROWSERS)}) on PATH. Received: "
                                "none. Install one (e.g. `apt-get install chromium`) or set PARITY_BROWSER.")
    png = Path(png).resolve()
    res = _run(browser, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
                         Path(page).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}")
    return png


def layout(page: str | os.PathLike, *, size: tuple[int, int] = VIEWPORT, browser: str | None = None,
           timeout: float = 120) -> dict:
    """Where the report's sections are in a ``size`` window: ``{"scrollWidth", "innerWidth", "innerHeight",
    "boxes": {id: {top, bottom, left, right}}}`` (CSS pixels, from the top of the page)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("expected a Chromium-family browser on PATH. Received: none.")
    text = Path(page).read_text(encoding="utf-8")
    probe = text.replace("</body>", _MEASURE % json.dumps(list(MEASURED)) + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="parity-layout-") as d:
        page = Path(d) / "page.html"
        page.write_text(probe, encoding="utf-8")
        res = _run(browser, [f"--window-size={size[0]},{size[1]}", "--dump-dom", page.as_uri()], timeout)
    found = _LAYOUT.search(res.stdout)
    if found is None:
        raise RuntimeError(f"{browser} printed no layout (exit {res.returncode}): {res.stderr[-2000:]}")
    return json.loads(html.unescape(found.group(1)))
