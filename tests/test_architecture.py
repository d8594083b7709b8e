"""The package's layering holds: every import points down (or sideways within one layer), there are no import
cycles, the model packages import only ``parity.core``, and framework-free project modules are imported at the
top of a file (an import hidden in a function is reserved for modules that load a framework).

The layers, lowest first (README, "How it is built")::

    parity.core -> parity.optim -> parity.pairs -> parity.backends -> parity.diagnosis -> parity.stages
        -> parity.harness -> parity.user -> parity.io -> entry points (parity, parity.cli, parity.pytest_plugin)

Outside ``parity``: ``weight_converters`` imports nothing of the project but itself; ``reference_keras``,
``ported_torch`` and ``reports`` import only ``parity.core`` (and themselves, ``weight_converters`` for reports
never)."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("parity", "weight_converters", "reference_keras", "ported_torch", "reports")
LAYERS = ("parity.core", "parity.optim", "parity.pairs", "parity.backends", "parity.diagnosis", "parity.stages",
          "parity.harness", "parity.user", "parity.io", "parity")
"""Lowest first; ``parity`` itself (``__init__``, ``__main__``, ``cli``, ``pytest_plugin``) is the top."""
FRAMEWORKS = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "onnxscript", "matplotlib", "h5py",
              "jinja2", "markupsafe")
"""Heavy imports a module may defer into a function (``parity list`` must not pay for them; h5py, jinja2 and
markupsafe: a check that reads no weights file or writes no HTML page does not pay for them either)."""
LAZY_ENTRY_POINTS = ("parity", "parity.pytest_plugin")
"""Entry points loaded where no check runs, which defer the harness: ``import parity`` (``parity.__getattr__``)
stays light for ``parity list``, and pytest loads the plugin in every run of an environment where parity is
installed."""
MAY_IMPORT = {
    "weight_converters": ("weight_converters",),
    "reference_keras": ("reference_keras", "parity.core"),
    "ported_torch": ("ported_torch", "parity.core"),
    "reports": ("reports", "parity.core"),
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for top in PROJECT:
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import name refers to (``parity.core.spec.PairSpec`` -> ``parity.core.spec``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str) -> list[tuple[str, bool, int]]:
    """(imported project module, at top level?, line) for every import in ``mod``."""
    tree = ast.parse(MODULES[mod].read_text())
    is_pkg = MODULES[mod].name == "__init__.py"
    out = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append((a.name, top, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                for a in child.names:
                    out.append((f"{base}.{a.name}", top, child.lineno))
            visit(child, top)

    visit(tree, True)
    res = []
    for name, top, line in out:
        r = _resolve(name)
        if r is not None and r != mod:
            res.append((r, top, line))
        elif r is None and name.split(".")[0] in FRAMEWORKS:
            res.append(("<framework>:" + name.split(".")[0], top, line))
    return res


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(mod: str) -> int | None:
    if not mod.startswith("parity"):
        return None
    best = None
    for i, prefix in enumerate(LAYERS):
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > len(LAYERS[best]):
                best = i
    return best


def _loads_framework() -> set[str]:
    """Project modules that import a framework at module level, directly or through another project module."""
    heavy = {m for m, imps in GRAPH.items() if any(t and i.startswith("<framework>") for i, t, _ in imps)}
    changed = True
    while changed:
        changed = False
        for m, imps in GRAPH.items():
            if m not in heavy and any(t and i in heavy for i, t, _ in imps):
                heavy.add(m)
                changed = True
    return heavy


def test_layers_import_downward_only():
    bad = []
    for mod, imps in GRAPH.items():
        for target, _top, line in imps:
            if target.startswith("<framework>"):
                continue
            top = mod.split(".")[0]
            if top in MAY_IMPORT:
                if not any(target == p or target.startswith(p + ".") for p in MAY_IMPORT[top]):
                    bad.append(f"{mod}:{line} imports {target} ({top} may import only {', '.join(MAY_IMPORT[top])})")
                continue
            lm, lt = _layer(mod), _layer(target)
            if lm is not None and lt is not None and lt > lm:
                bad.append(f"{mod}:{line} imports {target}: layer {LAYERS[lt]} is above {LAYERS[lm]}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import (top level and inside functions)."""
    edges = {m: sorted({t for t, _, _ in imps if t in MODULES}) for m, imps in GRAPH.items()}
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    assert not sccs, "import cycles: " + "; ".join(" <-> ".join(c) for c in sccs)


def test_framework_free_imports_at_top():
    """An import inside a function hides the dependency graph; it is only for modules that load a framework."""
    heavy = _loads_framework()
    bad = []
    for mod, imps in GRAPH.items():
        if mod in LAZY_ENTRY_POINTS:
            continue
        for target, top, line in imps:
            if not top and not target.startswith("<framework>") and target not in heavy:
                bad.append(f"{mod}:{line} imports {target} inside a function")
    assert not bad, f"{len(bad)} framework-free imports inside functions:\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg", ["reference_keras", "ported_torch"])
def test_model_packages_set_no_environment(pkg):
    """The entry points configure the process (``parity.core.env``); importing a model package does not."""
    text = (ROOT / pkg / "__init__.py").read_text()
    assert "env" not in {n for n, _, _ in GRAPH[pkg]} and "parity.core.env" not in text


def test_entry_points_configure_environment():
    """``parity``, its CLI and the benchmarks set the environment before any framework import."""
    for mod in ("parity", "parity.cli"):
        assert any(t == "parity.core.env" and top for t, top, _ in GRAPH[mod]), mod
