"""The canonical JSON report: ``CheckResult.to_dict()``, nothing added, nothing lost.

``to_json`` is deterministic (sorted keys, two-space indent, trailing newline) and strict (``allow_nan=False``:
the result objects already encode inf/nan as the strings ``"inf"``/``"nan"``), so
``CheckResult.from_dict(json.loads(to_json(r))).to_dict() == r.to_dict()``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from parity.core.results import SCHEMA, CheckResult

_EXPECTED = f"expected a parity report (a JSON object with schema {SCHEMA!r})"


def as_dict(result: CheckResult | dict) -> dict:
    """The canonical dict of ``result``: a ``CheckResult`` or a dict that is already one."""
    if isinstance(result, CheckResult):
        return result.to_dict()
    if isinstance(result, dict):
        if result.get("schema") != SCHEMA:
            raise ValueError(f"{_EXPECTED}. Received: a dict with schema {result.get('schema')!r}. "
                             f"Pass a CheckResult or its to_dict().")
        return result
    raise TypeError(f"{_EXPECTED} or a CheckResult. Received: {type(result).__name__}.")


def _plain(obj: Any) -> Any:
    """``json`` fallback: numpy scalars and arrays (anything with ``tolist``) as Python numbers and lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"expected JSON-serialisable report values. Received: {type(obj).__name__}.")


def _nonfinite_at(obj: Any, where: str) -> str | None:
    """Where the first float inf/nan sits in ``obj`` (``stages[3].info.loss``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        items = ((f"{where}.{k}", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for w, v in items:
        found = _nonfinite_at(v, w)
        if found:
            return found
    return None


def to_json(result: CheckResult | dict) -> str:
    """Canonical JSON text of ``result`` (a ``CheckResult`` or its dict), ending in a newline."""
    d = as_dict(result)
    try:
        return json.dumps(d, indent=2, sort_keys=True, allow_nan=False, default=_plain) + "\n"
    except ValueError as e:
        where = _nonfinite_at(d, "report")
        if where is None:
            raise
        raise ValueError(f"expected finite floats in the report (inf/nan as the strings 'inf'/'nan', as "
                         f"parity.core.results encodes them). Received: a non-finite float at {where}.") from e


def load_report(path: str | os.PathLike) -> CheckResult:
    """Read a ``report.json`` back into a ``CheckResult``; ``ValueError`` when the file is not a parity report."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {_EXPECTED}. Received: text that is not JSON ({e}). "
                         f"Pass the report.json written by reports.write_reports.") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: {_EXPECTED}. Received: a JSON {type(d).__name__}. "
                         f"Pass the report.json written by reports.write_reports.")
    if d.get("schema") != SCHEMA:
        received = f"schema {d['schema']!r}" if "schema" in d else "an object without a 'schema' key"
        raise ValueError(f"{path}: {_EXPECTED}. Received: {received}. "
                         f"Pass the report.json written by reports.write_reports.")
    try:
        return CheckResult.from_dict(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: {_EXPECTED} and every field of it. Received: a {SCHEMA} report that does "
                         f"not load ({type(e).__name__}: {e}).") from None
