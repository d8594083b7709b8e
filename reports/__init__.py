"""Render a ``CheckResult`` as ``report.json`` (canonical, lossless), ``report.md`` and ``report.html``
(self-contained, with plots). Renders result objects only: imports no framework (torch, TensorFlow, Keras).

    from reports import write_reports, load_report
    paths = write_reports(result, "out/")        # {"json": ..., "md": ..., "html": ...}
    again = load_report(paths["json"])          # a CheckResult
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from parity.core.results import CheckResult

from .html import render_html
from .json_report import as_dict, load_report, to_json
from .markdown import render_markdown

__all__ = ["write_reports", "to_json", "render_markdown", "render_html", "load_report"]

#: permissions of a written report (a temp file is created 0600)
REPORT_MODE = 0o644


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory and ``os.replace``: a reader
    sees the old file or the new one, never a partial one, and a failure leaves no temp file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, REPORT_MODE)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_reports(result: CheckResult | dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir`` (created if absent), each
    atomically; every report is rendered before any is written. Returns ``{"json", "md", "html"}`` paths."""
    d = as_dict(result)
    texts = {"json": to_json(d), "md": render_markdown(d), "html": render_html(d)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"report.{kind}" for kind in texts}
    for kind, text in texts.items():
        _write_atomic(paths[kind], text)
    return paths
