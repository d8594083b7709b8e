"""The pair registry (after timm's model registry). Pairs register themselves in ``parity/pairs/*.py``;
those modules hold only data and strings, so listing pairs imports no framework."""
from __future__ import annotations

import importlib
import os
import pkgutil

from parity.core.errors import UsageError
from parity.core.spec import PairSpec

_PAIRS_DIR = os.path.dirname(os.path.abspath(__file__))
"""The built-in pair modules live beside the registry (``parity/pairs/*.py``)."""

_REGISTRY: dict[str, PairSpec] = {}
_LOADED = False
#: built-in pair modules that failed to import: {module: "ErrorType: message"} (shown by ``parity list``)
BROKEN: dict[str, str] = {}


class UnknownPair(UsageError, KeyError):
    """A pair name that is not registered (the user can fix it: exit 2)."""


def register(spec: PairSpec) -> PairSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"pair {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in sorted(pkgutil.iter_modules([_PAIRS_DIR]), key=lambda m: m.name):
        if info.name == "registry":
            continue
        try:
            importlib.import_module(f"parity.pairs.{info.name}")
        except Exception as exc:  # one broken pair module must not take the others down
            BROKEN[info.name] = f"{type(exc).__name__}: {exc}"


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> PairSpec:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in BROKEN:
            raise UnknownPair(f"pair {name!r} failed to load: {BROKEN[name]}. Reinstall parity or report it.") from None
        raise UnknownPair(
            f"unknown pair {name!r}. Expected one of: {', '.join(sorted(_REGISTRY))}. "
            "Run `parity list`, or pass your own models with --reference mod:fn --port mod:fn."
        ) from None


def all_specs() -> list[PairSpec]:
    return [get(n) for n in names()]
