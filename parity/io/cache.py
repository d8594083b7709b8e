"""The reference cache: a check of a registered pair stores its reference run (the trace format ``parity record``
writes, :mod:`parity.io.trace`) under a cache directory, keyed by a content hash of everything that determines
that run; a later check with the same key replays it, so the edit-check loop of a port imports neither
TensorFlow nor Keras and recomputes nothing on the reference side.

What the key hashes (:func:`cache_key`):

- the source bytes of the reference builder's module and of every project or user-package module it imports,
  followed through their imports (found statically, nothing is imported): for a registered pair
  ``reference_keras/<pair>.py`` and the ``parity.core`` modules it uses; the pair's module (taps, optimizer,
  configs); the modules that run the reference and read weight files (:data:`REFERENCE_MACHINERY`);
  never the port (``ported_torch`` or the user's ``--port`` module) — editing the port is what the cache is for;
- the weights file's bytes (``--weights``), the config, seed, batch, dtype, stages, steps and optimizer;
- the Keras, TensorFlow, NumPy and h5py versions, read from the installed package metadata
  (``importlib.metadata``: TensorFlow is not imported), and the environment variables that change
  TensorFlow's CPU numerics (:data:`NUMERICS_ENVIRONMENT`).

Where: ``$PARITY_CACHE_DIR``, else ``$XDG_CACHE_HOME/parity``, else ``~/.cache/parity`` (the XDG Base
Directory specification's default). Bounded: least recently used entries are removed once the directory holds
more than ``$PARITY_CACHE_MAX_BYTES`` (default :data:`DEFAULT_MAX_BYTES`). An entry is written atomically by
``record`` (a temporary file, then a rename) and is never trusted: it is read with the same reader as any
trace (:func:`parity.io.trace.load_trace`: bounded JSON, safetensors arrays, nothing imported or called), its
settings must equal the ones asked for, and an entry that fails any of this is discarded with a warning and
recomputed. The pair and the port come from the command line (the registry), never from the entry.

When it is on: ``parity check NAME`` of a registered pair (not with ``--onnx``, which exports the Keras model
again, nor with ``--no-cache`` or ``PARITY_NO_CACHE=1``). ``parity.check`` / ``parity.compare`` in Python never
use it (a live model may have been changed in memory since its source was written). The test suite sets
``PARITY_CACHE_DIR`` to a temporary directory and ``PARITY_NO_CACHE=1`` (``tests/conftest.py``): no test
touches a person's cache, and only the tests of this module turn it on.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Callable

from parity.core.atomic import atomic_output
from parity.core.errors import UsageError
from parity.core.options import optimizer_spec, parse_stages
from parity.core.spec import PairSpec
from parity.harness import check as harness_check
from parity.io.trace import SCHEMA as TRACE_SCHEMA
from parity.io.trace import load_trace, optimizer_to_dict, record

#: version of the key's layout: a change here makes every older entry a miss
KEY_SCHEMA = "parity.io.cache/1"
#: the file of the cache directory that remembers what each source file imports (:class:`ImportMemo`)
IMPORTS_MEMO = "imports-memo.json"
#: its layout's version: a memo of another version is ignored (and rewritten)
IMPORTS_MEMO_SCHEMA = "parity.io.cache.imports/1"
#: files it remembers at most (the least recently used dropped): a reference's closure is ~40-50 files
IMPORTS_MEMO_MAX = 4096
#: a larger memo file is not read (4096 files of ~40 imports are ~2 MB)
IMPORTS_MEMO_MAX_BYTES = 8 << 20
#: the cache directory, if set
CACHE_DIR_ENV = "PARITY_CACHE_DIR"
#: the size bound in bytes, if set
MAX_BYTES_ENV = "PARITY_CACHE_MAX_BYTES"
#: ``1`` turns the cache off (as ``--no-cache`` does)
NO_CACHE_ENV = "PARITY_NO_CACHE"
#: the size bound when ``PARITY_CACHE_MAX_BYTES`` is not set: a full-size Xception entry is ~2.9 GB
DEFAULT_MAX_BYTES = 4 << 30
#: an entry's file name: ``<key>`` + this
ENTRY_SUFFIX = ".safetensors"
#: a temporary file an interrupted writer left behind is removed after this many seconds
STALE_TMP_SECONDS = 3600
#: modules that run the reference side and read weight files: their source is part of every key
REFERENCE_MACHINERY = ("parity.backends.keras_side", "parity.backends.weights", "parity.core.data",
                       "parity.optim.adapters")
#: top-level packages whose modules are followed from the reference builder (with the builder's own package)
PROJECT_PACKAGES = ("parity", "weight_converters", "reference_keras")
#: port-side packages: never part of a key (an edit of the port must hit the cache)
PORT_PACKAGES = ("ported_torch",)
#: distributions whose versions determine the reference's numbers (TensorFlow is published under several names)
VERSIONED = (("keras",), ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tf-nightly"),
             ("numpy",), ("h5py",))
#: environment variables that change TensorFlow's CPU kernels or their numerics (see :mod:`parity.core.env`)
NUMERICS_ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")


def _warn(msg: str) -> None:
    print(f"parity: warning: {msg}", file=sys.stderr, flush=True)


# -- where and whether -----------------------------------------------------------------------------------------
def default_dir() -> str:
    """``$PARITY_CACHE_DIR``, else ``$XDG_CACHE_HOME/parity``, else ``~/.cache/parity``."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.path.abspath(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "parity")


def default_max_bytes() -> int:
    text = os.environ.get(MAX_BYTES_ENV)
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{MAX_BYTES_ENV}: expected a number of bytes >= 0. Received: {text[:40]!r}. "
                         f"Unset it for the default ({DEFAULT_MAX_BYTES >> 30} GB).")
    return value


def enabled(*, no_cache: bool = False, onnx: bool = False, registered: bool = True) -> bool:
    """Whether a CLI check uses the cache: a registered pair, no ``--onnx``, no ``--no-cache``, no
    ``PARITY_NO_CACHE=1``."""
    return registered and not onnx and not no_cache and os.environ.get(NO_CACHE_ENV, "") in ("", "0")


# -- the key ---------------------------------------------------------------------------------------------------
def _module_file(name: str) -> str | None:
    """The source file of module ``name``, found without importing it (only its top-level package's location
    is looked up, which imports nothing)."""
    parts = name.split(".")
    top = sys.modules.get(parts[0])
    locations = list(getattr(top, "__path__", None) or ())
    if top is None:
        try:
            found = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
        if found is None:
            return None
        if found.submodule_search_locations is None:
            return found.origin if len(parts) == 1 and found.origin and found.origin.endswith(".py") else None
        locations = list(found.submodule_search_locations)
    elif not locations:
        f = getattr(top, "__file__", None)
        return f if len(parts) == 1 and f and f.endswith(".py") else None
    for base in locations:
        stem = os.path.join(base, *parts[1:])
        for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def _scan_imports(data: bytes, path: str, module: str) -> set[str]:
    tree = ast.parse(data, filename=path)
    is_pkg = os.path.basename(path) == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            if base:
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return names


def imported_names(path: str, module: str, memo: "ImportMemo | None" = None) -> set[str]:
    """Every module name ``path`` imports (top level and inside functions; ``from a import b`` gives ``a`` and
    ``a.b``; relative imports resolved against ``module``). With ``memo``, a file whose bytes were scanned
    before is not parsed again."""
    with open(path, "rb") as f:
        data = f.read()
    if memo is None:
        return _scan_imports(data, path, module)
    return memo.names(data, path, module)


class ImportMemo:
    """What each source file imports, remembered by the file's content digest in :data:`IMPORTS_MEMO` of the
    cache directory, so a later key does not parse the ~40 files of a reference's closure again (``ast.parse`` of
    them took 0.13 s of a 2.5 s cached check on the 2-core VM; a memo hit takes none of it).

    The file is data only (JSON: digest, module name, a list of module names), read with a size bound and
    discarded whole when it is not what this class writes; it is written atomically, and only when a file was
    parsed. It cannot make a key skip a changed file: a changed file has a new digest, which is parsed. Whoever can
    write it can write cache entries too (same directory), so it adds nothing to trust.
    """

    def __init__(self, directory: str | None):
        self.path = os.path.join(directory, IMPORTS_MEMO) if directory else None
        self.table: dict[str, list[str]] = {}
        self.changed = False
        if self.path is None:
            return
        try:
            if os.path.getsize(self.path) > IMPORTS_MEMO_MAX_BYTES:
                return
            with open(self.path, "rb") as f:
                table = json.loads(f.read())
        except (OSError, ValueError, RecursionError):
            return
        if isinstance(table, dict) and table.get("schema") == IMPORTS_MEMO_SCHEMA and \
                isinstance(table.get("files"), dict) and all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
                    for k, v in table["files"].items()):
            self.table = table["files"]

    def names(self, data: bytes, path: str, module: str) -> set[str]:
        is_pkg = os.path.basename(path) == "__init__.py"
        key = f"{hashlib.blake2b(data, digest_size=20).hexdigest()}:{module}:{int(is_pkg)}"
        found = self.table.pop(key, None)
        if found is None:
            found = sorted(_scan_imports(data, path, module))
            self.changed = True
        self.table[key] = found  # the most recently used last
        return set(found)

    def save(self) -> None:
        """Write the memo if a file was parsed (the oldest beyond :data:`IMPORTS_MEMO_MAX` dropped); a
        directory that cannot be written is no error: the next key parses again."""
        if not self.changed or self.path is None:
            return
        keep = dict(list(self.table.items())[-IMPORTS_MEMO_MAX:])
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_output(self.path, "w", label="reference cache", encoding="utf-8") as f:
                json.dump({"schema": IMPORTS_MEMO_SCHEMA, "files": keep}, f, separators=(",", ":"))
            self.changed = False
        except (OSError, UsageError):
            pass


def source_closure(roots, follow: tuple[str, ...], memo: ImportMemo | None = None) -> dict[str, str]:
    """``{module: file}`` of ``roots`` and of every module they import, transitively, whose top-level package
    is in ``follow`` (packages of :data:`PORT_PACKAGES` excepted), and the ``__init__.py`` of each package on
    the way (its bytes; what it imports is not followed: a package's ``__init__`` of this project re-exports,
    and following it would make every module a source of every reference). Static: nothing is imported."""
    followed: set[str] = set()
    out: dict[str, str] = {}
    todo = [(name, True) for name in roots]
    while todo:
        name, traverse = todo.pop()
        if (name in out and not traverse) or name.split(".")[0] in PORT_PACKAGES:
            continue
        if name in out and name in followed:
            continue
        path = out.get(name) or _module_file(name)
        if path is None:
            continue
        out[name] = path
        if traverse:
            followed.add(name)
            for imp in imported_names(path, name, memo):
                if imp.split(".")[0] in follow and imp not in followed:
                    todo.append((imp, True))
        parent = name.rpartition(".")[0]
        if parent and parent not in out:
            # importing a.b runs a/__init__.py first: its bytes count, the package's other modules do not
            todo.append((parent, False))
    return out


def _module_of(target) -> str | None:
    if isinstance(target, str):
        return target.partition(":")[0] or None
    return getattr(target, "__module__", None)


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def installed_versions() -> dict[str, str | None]:
    """Versions of :data:`VERSIONED` from the installed package metadata (imports none of them)."""
    out: dict[str, str | None] = {}
    for names in VERSIONED:
        out[names[0]] = None
        for name in names:
            try:
                out[names[0]] = f"{name}=={metadata.version(name)}"
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


@dataclasses.dataclass
class Request:
    """The settings of one check's reference run, resolved as the check resolves them."""

    spec: PairSpec
    reference: str | Callable | None
    config: dict[str, Any]
    dtype: str
    seed: int
    batch: int
    stages: tuple[str, ...]
    steps: int
    optimizer: Any  # OptimizerSpec
    weights: str | None


def make_request(spec: PairSpec, *, stages=None, dtype: str = "float64", batch: int | None = None, seed: int = 0,
                 optimizer=None, steps: int = 1, weights: str | None = None, config: dict | None = None,
                 reference=None) -> Request:
    stage_list = parse_stages(stages) if isinstance(stages, (str, type(None))) else tuple(stages)
    return Request(spec=spec, reference=reference, config=spec.config(**(config or {})), dtype=dtype, seed=seed,
                   batch=batch or spec.default_batch, stages=tuple(stage_list), steps=steps,
                   optimizer=optimizer_spec(spec, optimizer), weights=weights)


def reference_sources(req: Request, memo: ImportMemo | None = None) -> dict[str, str]:
    """``{module: file}`` of every source the reference run depends on (see the module docstring)."""
    ref_target = req.reference if req.reference is not None else req.spec.reference
    roots = [m for m in (_module_of(ref_target), _module_of(req.spec.taps), *REFERENCE_MACHINERY) if m]
    follow = tuple(sorted({*PROJECT_PACKAGES, *(m.split(".")[0] for m in roots)} - set(PORT_PACKAGES)))
    return source_closure(roots, follow, memo)


def key_material(req: Request, memo: ImportMemo | None = None) -> dict[str, Any]:
    """Everything the key hashes, as JSON-able data (source files by content digest)."""
    spec = req.spec
    ref_target = req.reference if req.reference is not None else spec.reference
    ref_module = _module_of(ref_target)
    files = reference_sources(req, memo)
    if ref_module and ref_module not in files:
        raise UsageError(f"reference cache: expected the reference builder's module {ref_module!r} as a source "
                         "file. Received: no such file on the module path. Pass --no-cache.")
    weights = None
    if req.weights is not None:
        if not os.path.isfile(req.weights):
            raise UsageError(f"--weights {req.weights}: expected a file. Received: no such file. Check the path.")
        weights = _file_digest(req.weights)
    return {
        "schema": KEY_SCHEMA, "trace_schema": TRACE_SCHEMA,
        "pair": spec.name, "reference": ref_target if isinstance(ref_target, str) else f"{ref_module}:"
        f"{getattr(ref_target, '__qualname__', '?')}",
        "sources": {m: _file_digest(p) for m, p in sorted(files.items())},
        "weights": weights,
        "config": _jsonable(req.config), "dtype": req.dtype, "seed": req.seed, "batch": req.batch,
        "stages": sorted(req.stages), "steps": req.steps,
        "optimizer": _jsonable(dataclasses.asdict(req.optimizer)),
        "spec": _jsonable({"loss": dataclasses.asdict(spec.loss), "input_range": spec.input_range,
                           "randomize_bn": spec.randomize_bn, "reference_shared": spec.reference_shared,
                           "weights_format": spec.weights_format}),
        "versions": installed_versions(), "python": platform.python_version(), "machine": platform.machine(),
        "environment": {k: os.environ.get(k) for k in NUMERICS_ENVIRONMENT},
    }


def cache_key(req: Request, memo: ImportMemo | None = None) -> str:
    """The content hash (hex, 32 characters) of :func:`key_material`."""
    text = json.dumps(key_material(req, memo), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


# -- the store ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CachedReference:
    """A reference run and where it came from."""

    run: Any  # ReferenceRun
    key: str
    path: str
    hit: bool
    recorded: str

    def describe(self) -> str:
        return f"reference from cache (key {self.key[:12]}, recorded {self.recorded})" if self.hit else \
            f"reference computed and cached (key {self.key[:12]})"


class ReferenceCache:
    """One cache directory: entries ``<key>.safetensors``, least recently used removed beyond ``max_bytes``."""

    def __init__(self, directory: str | None = None, max_bytes: int | None = None,
                 warn: Callable[[str], None] = _warn):
        self.directory = os.path.abspath(directory) if directory else default_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.warn = warn

    def writable(self) -> bool:
        """Whether entries can be written here (the directory is created if needed)."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError:
            return False
        return os.access(self.directory, os.W_OK | os.X_OK)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key + ENTRY_SUFFIX)

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, path) of every entry, oldest first."""
        out = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(ENTRY_SUFFIX) or name.startswith("."):
                continue
            p = os.path.join(self.directory, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def _discard(self, path: str, why: str) -> None:
        self.warn(f"reference cache entry {path} discarded: {why}. Recomputing the reference.")
        try:
            os.unlink(path)
        except OSError:
            pass

    def lookup(self, key: str, req: Request):
        """The cached run for ``key`` (validated against ``req``), or None. A corrupt or mismatching entry is
        removed (with a warning)."""
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            _check_complete(path)
            run, _ = load_trace(path)
            _check_settings(run.meta, req)
        except UsageError as exc:
            self._discard(path, str(exc.args[0] if exc.args else exc))
            return None
        try:
            os.utime(path)  # the LRU clock: last use
        except OSError:
            pass
        return run

    def store(self, key: str, req: Request, progress=None) -> str:
        """Run the reference and write it as entry ``key`` (atomically); then keep the cache within its bound."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(key)
        record(req.spec, path, stages=req.stages, dtype=req.dtype, batch=req.batch, seed=req.seed,
               optimizer=req.optimizer, steps=req.steps, weights=req.weights, config=req.config,
               reference=req.reference, progress=progress)
        self.evict(keep=path)
        return path

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the directory holds at most ``max_bytes`` (``keep``, the
        entry just written, last of all), and temporary files older than :data:`STALE_TMP_SECONDS`."""
        removed = []
        now = time.time()
        try:
            for name in os.listdir(self.directory):
                p = os.path.join(self.directory, name)
                if name.startswith(".") and name.endswith(".tmp"):
                    try:
                        if now - os.stat(p).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(p)
                    except OSError:
                        pass
        except FileNotFoundError:
            return removed
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        order = [e for e in entries if e[2] != keep] + [e for e in entries if e[2] == keep]
        for _, size, p in order:
            if total <= self.max_bytes:
                break
            try:
                os.unlink(p)
                removed.append(p)
                total -= size
            except OSError:
                pass
        return removed


def _check_complete(path: str) -> None:
    """The file is as long as its safetensors header says (a truncated entry is refused before any lazy read)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise UsageError("expected a safetensors file. Received: fewer than 8 bytes")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise UsageError(f"expected a header of {n} bytes. Received: a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            raise UsageError(f"expected a safetensors header. Received: {type(exc).__name__}") from None
    if 8 + n + end != size:
        raise UsageError(f"expected {8 + n + end} bytes. Received: {size} (truncated or appended to)")


def _check_settings(meta: dict, req: Request) -> None:
    """The entry was recorded with exactly the settings asked for (the key says so; the file must agree)."""
    want = {"pair": req.spec.name, "dtype": req.dtype, "seed": req.seed, "batch": req.batch, "steps": req.steps,
            "stages": sorted(req.stages), "config": _jsonable(req.config),
            "optimizer": _jsonable(optimizer_to_dict(req.optimizer))}  # as the trace stores it (data only)
    got = {k: meta.get(k) for k in want}
    got["stages"] = sorted(got["stages"] or ())
    got["config"] = _jsonable(got["config"])
    got["optimizer"] = _jsonable(got["optimizer"])
    for k in want:
        if want[k] != got[k]:
            raise UsageError(f"expected {k} {str(want[k])[:80]}. Received: {str(got[k])[:80]}")


# -- the check ---------------------------------------------------------------------------------------------------
class CacheUnavailable(UsageError):
    """The cache directory cannot be written: the check runs without the cache (with a warning)."""


def reference_for(req: Request, cache: ReferenceCache | None = None, progress=None) -> CachedReference:
    """The reference run for ``req``: from the cache, or computed (TensorFlow), stored, and read back through
    the same reader, so a first and a later check compare against the same bytes."""
    say = progress or (lambda msg: None)
    cache = cache or ReferenceCache()
    memo = ImportMemo(cache.directory)
    key = cache_key(req, memo)
    memo.save()
    run = cache.lookup(key, req)
    hit = run is not None
    if not hit:
        if not cache.writable():
            raise CacheUnavailable(f"reference cache {cache.directory}: expected a writable directory. Received: "
                                   f"one that cannot be created or written. Set {CACHE_DIR_ENV} to another "
                                   "directory, or pass --no-cache.")
        say(f"reference: not in the cache ({key[:12]}), computing it")
        path = cache.store(key, req, progress=say)
        run, _ = load_trace(path)
        _check_settings(run.meta, req)
    run.meta["config"] = dict(req.config)  # the settings asked for (equal, as checked), with their own types
    info = CachedReference(run=run, key=key, path=cache.path(key), hit=hit,
                           recorded=str(run.meta.get("recorded_at", "?")))
    if hit:
        say(info.describe())
    return info


def annotate(result, ref: CachedReference) -> None:
    """Say in the result where its reference came from."""
    # what the reports show under the settings: the key (which entry) and when the reference was computed
    result.reference_source = f"cache:{ref.key} (recorded {ref.recorded})"
    env = getattr(result, "environment", None)
    if isinstance(env, dict):
        env["reference_cache"] = {"key": ref.key, "hit": ref.hit, "recorded": ref.recorded, "path": ref.path,
                                  "summary": ref.describe()}


def cached_check(spec: PairSpec, *, stages=None, dtype: str = "float64", device: str = "cpu", batch=None,
                 seed: int = 0, optimizer=None, steps: int = 1, weights=None, config=None, port=None, reference=None,
                 onnx: bool = False, progress=None, cache: ReferenceCache | None = None, **more):
    """``parity.harness.check`` with the reference from the cache (see the module docstring). With ``onnx`` the
    Keras model is exported again anyway, and other ``check`` arguments (``more``: the user's own training
    step) are the harness's alone: those checks run as without a cache."""
    if onnx or any(v is not None for v in more.values()):
        return harness_check(spec, stages=stages, dtype=dtype, device=device, batch=batch, seed=seed,
                             optimizer=optimizer, steps=steps, weights=weights, config=config, port=port,
                             reference=reference, onnx=onnx, progress=progress, **more)
    req = make_request(spec, stages=stages, dtype=dtype, batch=batch, seed=seed, optimizer=optimizer, steps=steps,
                       weights=weights, config=config, reference=reference)
    try:
        ref = reference_for(req, cache, progress)
    except CacheUnavailable as exc:
        (cache.warn if cache is not None else _warn)(f"{exc.args[0]} Checking without the cache.")
        return harness_check(spec, stages=stages, dtype=dtype, device=device, batch=batch, seed=seed,
                             optimizer=optimizer, steps=steps, weights=weights, config=config, port=port,
                             reference=reference, progress=progress)
    return run_port_check(req, ref, device=device, port=port, progress=progress)


def run_port_check(req: Request, ref: CachedReference, *, device: str = "cpu", port=None, progress=None):
    """The port side, the comparison and the diagnosis against ``ref``'s run (which stays reusable)."""
    result = harness_check(req.spec, stages=req.stages, dtype=req.dtype, device=device, batch=req.batch, seed=req.seed,
                   optimizer=req.optimizer, steps=req.steps, config=req.config, port=port,
                   reference_run=ref.run, progress=progress)
    annotate(result, ref)
    return result
