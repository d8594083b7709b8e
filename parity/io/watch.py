"""``parity check NAME --watch``: one warm process for the edit-check loop of a port.

The reference run is obtained once (from the reference cache, :mod:`parity.io.cache`, or computed and kept
in a temporary one with ``--no-cache``) and held for the whole session. The port's source files (the port
builder's module, every loaded module of its package, and of ``ported_torch``) are polled every
:data:`POLL_SECONDS`; when one changes, the changed modules and the loaded modules that import them are
re-imported (``importlib.reload``, dependencies first) and only the port side, the comparison and the
diagnosis run again. The verdict line is printed first (stdout), the reports are written after. A module that
no longer imports (a syntax error mid-edit) is reported on stderr and the loop waits for the next save. An edit
of the reference's own sources is reported, not followed: the session keeps the reference it started with.
Ctrl-C ends the session; the exit status is the last verdict's (0 passed, 1 failed).

What a session keeps between checks, so that a check after an edit pays only for the port: the reference's
arrays once moved to the port's layout (``parity.stages.forward.PortLayoutMemo``, on disk), the initialisation
statistics of the rebuilt port's unchanged tensors, and its freed memory (``parity.core.env.keep_heap``).
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import tempfile
import time
from typing import Callable

from parity.core.env import keep_heap, release_heap
from parity.core.errors import UsageError
from parity.core.spec import resolve
from parity.diagnosis.initialisation import remember_samples
from parity.harness import _user_training
from parity.io.cache import (PORT_PACKAGES, ReferenceCache, Request, enabled, imported_names, make_request,
                             reference_for, reference_sources, run_port_check)
from parity.stages.forward import PortLayoutMemo
from reports import write_reports

#: how often the port's files are looked at (seconds): a save is seen within this
POLL_SECONDS = 0.2
#: a changed file is read once it has kept its size and time for this long (seconds), looked at up to
#: ``SETTLE_LOOKS`` times
SETTLE_SECONDS = 0.03
SETTLE_LOOKS = 30
#: the exit status of a session stopped before its first verdict (128 + SIGINT, the shell's convention)
EXIT_INTERRUPTED = 130


def _module_name(port) -> str | None:
    if isinstance(port, str):
        return port.partition(":")[0] or None
    return getattr(port, "__module__", None)


def watched_modules(port_module: str) -> dict[str, str]:
    """``{module: source file}`` the loop watches: loaded modules of the port module's top-level package and of
    :data:`parity.io.cache.PORT_PACKAGES` (what the port is made of), and the port module itself."""
    tops = {port_module.split(".")[0], *PORT_PACKAGES}
    out = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if mod is None or not f or not f.endswith(".py") or name.split(".")[0] not in tops:
            continue
        out[name] = f
    return out


def _stamp(path: str):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


def reload_order(changed: set[str], files: dict[str, str]) -> list[str]:
    """``changed`` and every watched module that imports one of them (transitively), dependencies first."""
    deps = {}
    for name, path in files.items():
        try:
            deps[name] = {m for m in imported_names(path, name) if m in files and m != name}
        except (OSError, SyntaxError, ValueError):
            deps[name] = set()
    affected = set(changed)
    grew = True
    while grew:
        grew = False
        for name, d in deps.items():
            if name not in affected and d & affected:
                affected.add(name)
                grew = True
    order: list[str] = []
    seen: set[str] = set()

    def visit(name, stack=()):
        if name in seen or name in stack:
            return
        for d in sorted(deps.get(name, ())):
            if d in affected:
                visit(d, stack + (name,))
        seen.add(name)
        order.append(name)

    for name in sorted(affected):
        visit(name)
    return order


class Watcher:
    """The state of one ``--watch`` session (see the module docstring)."""

    def __init__(self, req: Request, *, device: str = "cpu", port=None, out_dir: str, use_cache: bool = True,
                 progress: Callable[[str], None] | None = None, poll: float = POLL_SECONDS, out=None, err=None):
        self.req, self.device, self.port, self.out_dir = req, device, port, out_dir
        self.use_cache = use_cache
        self.say = progress or (lambda msg: None)
        self.poll = poll
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.port_module = _module_name(port if port is not None else req.spec.port)
        self.ref = None
        self.ref_files: dict[str, str] = {}
        self.ref_stamps: dict[str, tuple | None] = {}
        self.stamps: dict[str, tuple] = {}
        self.files: dict[str, str] = {}
        self.last_code: int | None = None
        self._tmp = None
        self._kept = False

    def _print(self, line: str, *, err: bool = False) -> None:
        stream = self.err if err else self.out
        print(line, file=stream, flush=True)

    def start(self) -> None:
        if not self._kept:  # each check reuses the memory the one before freed (parity.core.env.keep_heap)
            self._kept = keep_heap()
        cache = ReferenceCache() if self.use_cache else None
        if cache is not None and not cache.writable():
            self._print(f"parity: warning: reference cache {cache.directory}: expected a writable directory; "
                        "this session keeps its reference in a temporary one", err=True)
            cache = None
        if cache is None:  # the reference lives in a temporary directory for this session only
            self._tmp = tempfile.TemporaryDirectory(prefix="parity-watch-")
            cache = ReferenceCache(self._tmp.name, max_bytes=1 << 62)
        self.ref_files = reference_sources(self.req)
        self.ref_stamps = {name: _stamp(path) for name, path in self.ref_files.items()}
        self.ref = reference_for(self.req, cache, self.say)
        self.ref.run.port_layout = PortLayoutMemo()  # moved to the port's layout once, for every check
        remember_samples(True)  # the rebuilt port's initialisation statistics: the same bytes, described once
        stop = getattr(self.say, "stop", None)  # a live progress display ends here: the loop prints lines
        if callable(stop):
            stop()
        self.say = lambda msg: None

    def close(self) -> None:
        memo = getattr(getattr(self.ref, "run", None), "port_layout", None)
        if memo is not None:
            memo.close()
        self.ref = None
        if self._kept:
            self._kept = False
            release_heap()
        remember_samples(False)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _discover(self, since_ns: int) -> None:
        """Watch the modules the port has loaded so far. A file first seen now is stamped as it is, unless it
        was written after ``since_ns`` (the start of the check that imported it): then it counts as changed."""
        if not self.port_module:
            return
        self.files = watched_modules(self.port_module)
        for name, path in self.files.items():
            if name not in self.stamps:
                st = _stamp(path)
                self.stamps[name] = None if st is not None and st[0] >= since_ns else st

    def _settled(self) -> dict[str, tuple | None]:
        """The watched files' stamps once two looks :data:`SETTLE_SECONDS` apart agree (an editor that writes
        in place truncates first: the half-written file is not imported)."""
        now = {name: _stamp(path) for name, path in self.files.items()}
        for _ in range(SETTLE_LOOKS):
            time.sleep(SETTLE_SECONDS)
            again = {name: _stamp(path) for name, path in self.files.items()}
            if again == now:
                break
            now = again
        return now

    def reference_changed(self) -> list[str]:
        """Sources of the reference that changed since the session began (said once: the session keeps the
        reference it started with; a new session computes the new one)."""
        out = [name for name, path in self.ref_files.items() if _stamp(path) != self.ref_stamps.get(name)]
        if out:
            self._print(f"parity: watch: the reference's source changed ({', '.join(sorted(out)[:5])}); this "
                        "session keeps comparing against the reference it started with: restart to recompute it",
                        err=True)
            self.ref_stamps.update({name: _stamp(self.ref_files[name]) for name in out})
        return out

    def changed(self) -> set[str]:
        """Watched modules whose file changed since the last look."""
        out = set()
        for name, path in self.files.items():
            if _stamp(path) != self.stamps.get(name):
                out.add(name)
        return out

    def reload(self, changed: set[str]) -> bool:
        """Re-import ``changed`` and its importers; False (with the error on stderr) if one fails to import."""
        for name in reload_order(changed, self.files):
            mod = sys.modules.get(name)
            if mod is None:
                continue
            try:
                importlib.reload(mod)
            except Exception as exc:  # the user's file mid-edit: say so, wait for the next save
                self._print(f"parity: watch: {name} does not import ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}); waiting for the next save", err=True)
                return False
        return True

    def check_once(self) -> int:
        """Port side, comparison, diagnosis; the verdict first, then the reports. Returns 0 or 1."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = run_port_check(self.req, self.ref, device=self.device, port=self.port, progress=self.say)
        except UsageError as exc:
            self.last_code = 1
            self._print(f"parity: error: {exc.args[0] if exc.args else exc}", err=True)
            self._print(f"FAILED: the port could not be checked ({' '.join(str(exc).split())[:160]})")
            return 1
        code = self.last_code = 0 if result.passed else 1  # before any output: Ctrl-C may follow the verdict
        self._print(result.summary_line())
        t1, c1 = time.perf_counter(), time.process_time()
        fd = result.first_divergence
        fd = fd() if callable(fd) else fd
        if fd is not None and fd[1] is not None:
            self._print(f"  first divergence at {fd[0].name} {fd[1].path}: {fd[1].describe()}", err=True)
        paths = write_reports(result, self.out_dir)
        self._print(f"  verdict in {t1 - t0:.2f} s ({c1 - c0:.2f} s CPU); reports {paths['html']} "
                    f"({time.perf_counter() - t1:.2f} s); watching for changes (Ctrl-C ends)", err=True)
        return code

    def run(self, *, max_checks: int | None = None, on_check: Callable[[int], None] | None = None) -> int:
        """The loop; returns the last verdict's exit status on Ctrl-C (or after ``max_checks`` checks)."""
        checks = 0
        try:
            if self.ref is None:
                self.start()
            since = time.time_ns()
            self.check_once()
            checks += 1
            self._discover(since)
            if on_check is not None:
                on_check(checks)
            while max_checks is None or checks < max_checks:
                time.sleep(self.poll)
                if self.ref_files:
                    self.reference_changed()
                changed = self.changed()
                if not changed:
                    continue
                since = time.time_ns()
                # stamped before the files are read again: a save during the reload is seen at the next look
                self.stamps.update(self._settled())
                self._print(f"parity: watch: changed {', '.join(sorted(changed))}", err=True)
                if not self.reload(changed):
                    continue
                self.check_once()
                checks += 1
                self._discover(since)  # a module the new port imports is watched from now on
                if on_check is not None:
                    on_check(checks)
        except KeyboardInterrupt:
            self._print("parity: watch: stopped", err=True)
        finally:
            self.close()
        return self.last_code if self.last_code is not None else EXIT_INTERRUPTED


def watch(req: Request, **kwargs) -> int:
    """Run a ``--watch`` session (see :class:`Watcher`); returns 0 or 1, the last verdict."""
    return Watcher(req, **kwargs).run()


def watch_from_cli(spec, args, config: dict, stages, out_dir: str, progress=None) -> int:
    """``parity check ... --watch`` from the parsed command line (``args``: the ``check`` options)."""
    if getattr(args, "onnx", False):
        raise UsageError("--watch: expected a check without --onnx (the ONNX leg exports the Keras model again on "
                         "every run). Received: --onnx. Drop one of them.")
    if getattr(args, "json", False):
        raise UsageError("--watch: expected human output (one verdict line per change). Received: --json. "
                         "Drop --json; the JSON report is written to --out on every change.")
    registered = bool(getattr(args, "name", None))
    spec = _with_user_training(spec, args, config)
    req = make_request(spec, stages=stages, dtype=args.dtype, batch=args.batch, seed=args.seed,
                       optimizer=args.optimizer, steps=args.steps, weights=args.weights, config=config,
                       reference=args.reference if registered else None)
    return watch(req, device=args.device, port=args.port if registered else None, out_dir=out_dir,
                 use_cache=enabled(no_cache=args.no_cache, registered=registered), progress=progress)


def _with_user_training(spec, args, config: dict):
    """``--port-optimizer`` / ``--port-loss`` with ``--watch``: the reference trains once with its compiled
    configuration; the user's functions are looked up again on every check (``module:function`` read from
    ``sys.modules``, so a reloaded module's new function is the one called)."""
    names = {k: getattr(args, k, None) for k in ("port_optimizer", "port_loss")}
    if not any(names.values()):
        return spec
    def late(target):
        @functools.wraps(resolve(target))  # the same signature (a loss factory is told from a loss by it)
        def fn(*a, **kw):
            return resolve(target)(*a, **kw)

        return fn

    opt, loss = (late(v) if isinstance(v, str) else v for v in names.values())
    return _user_training(spec, False, config, args.dtype, opt, loss)
