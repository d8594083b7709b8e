"""Shared modules: the torch side reports a module that runs several times in one forward (``[Block()] * 8``
shares one set of weights) once per tap or once per outermost module; this pass turns those reports into one
finding per shared module, placed at the first layer where the sharing shows in the numbers."""
from __future__ import annotations

import re

from parity.core.results import Finding
from parity.diagnosis.common import Run, base
from parity.diagnosis.registry import result_rule

CALLS = re.compile(r"called (\d+)x")
MODULE = re.compile(r"module `([^`]+)`")
ALIASES = re.compile(r"aliases: (.*)")
PARAM_GAP = re.compile(r"([\d,]+) parameters fewer in the port")


@result_rule(order=20)
def consolidate_shared(run: Run) -> None:
    """One finding per shared module, placed at the first layer where the sharing shows in the numbers
    (a ``[Block()] * 8`` list loads the *last* position's weights into the one block, so the first position
    already diverges), saying which module, how often, under which names, and the fix. Accepts the torch
    side's findings whether it reports one per tap or one per outermost shared module."""
    res = run.result
    shared = [f for f in res.findings if f.cause == "shared_module"]
    if not shared:
        return
    groups = _groups(run, shared)
    diverged = [base(t.path) for st in res.stages if st.name != "structure" for t in st.tensors if not t.passed]
    new = [_group_finding(run, names, g, diverged) for names, g in groups.items()]
    res.findings[:] = new + [f for f in res.findings if f.cause != "shared_module"]
    st = res.stage("structure")
    if st is not None:
        st.findings = [f for f in st.findings if f.cause != "shared_module"] + new


def _groups(run: Run, shared: list[Finding]) -> dict[frozenset, dict]:
    """The shared-module findings grouped by the set of names the one module is registered under."""
    aliases_of = _aliases(run)
    groups: dict[frozenset, dict] = {}
    for f in shared:
        m = CALLS.search(f.message)
        n = int(m.group(1)) if m else 0
        m = MODULE.search(f.message)
        port = run.port_path(f.path) or f.path
        owner = m.group(1) if m else (port.rsplit(".", 1)[0] if "." in port else port)
        names = set(aliases_of.get(owner) or [owner])
        m = ALIASES.search(f.evidence or "")
        if m:
            names |= {a.strip() for a in m.group(1).split(",") if a.strip()}
        g = groups.setdefault(frozenset(names), {"owner": owner, "calls": n, "paths": [], "evidence": []})
        g["calls"] = max(g["calls"], n)
        g["paths"].append(f.path)
        if f.evidence and f.evidence not in g["evidence"]:
            g["evidence"].append(f.evidence)
        gap = PARAM_GAP.search(f.message)
        if gap and gap.group(0) not in g["evidence"]:
            g["evidence"].append(gap.group(0))
    return groups


def _group_finding(run: Run, names: frozenset, g: dict, diverged: list[str]) -> Finding:
    n, owner = g["calls"], g["owner"]

    def under(p):
        port = run.port_path(p) or ""
        return any(port == a or port.startswith(a + ".") for a in names)

    in_group = [p for p in run.tap_paths() if under(p)]
    members = set(in_group) | set(g["paths"])
    first = next((d for d in diverged if d in members), None) or (in_group[0] if in_group else g["paths"][0])
    ordered = sorted(names, key=lambda a: (len(a), a))
    alias_txt = ""
    if len(ordered) > 1:
        more = " ..." if len(ordered) > 3 else ""
        alias_txt = (f"; the same object is registered as {', '.join(ordered[:3])}{more} "
                     f"({len(ordered)} names, e.g. nn.ModuleList([block] * {len(ordered)}))")
    ev = [f"{len(in_group) or len(g['paths'])} tapped layers run on the shared weights"] + g["evidence"]
    return Finding(
        "shared_module", first,
        f"port module {owner} runs {n}x in one forward: {n} positions share one set of weights{alias_txt}; "
        f"the reference has {n} distinct layers there",
        f"create one module per position: nn.ModuleList([Block() for _ in range({n})]) (not [Block()] * {n})",
        stage="structure", evidence="; ".join(ev))


def _aliases(run: Run) -> dict[str, list[str]]:
    """Every name of every port module, by each of its names (a module registered twice has two)."""
    if run.ts is None:
        return {}
    by_id: dict[int, list[str]] = {}
    for path, m in run.ts.module.named_modules(remove_duplicate=False):
        by_id.setdefault(id(m), []).append(path)
    out = {}
    for names in by_id.values():
        for n in names:
            out[n] = names
    return out
