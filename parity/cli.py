"""The ``parity`` command line.

The contract: a check's last stdout line is ``PASSED …`` or ``FAILED …`` (with ``--json``, stdout is exactly one
JSON document and that line goes to stderr). Exit codes:

- 0: passed (or a command that checks nothing, such as ``list`` and ``record``, succeeded);
- 1: a parity failure, and only that (a ``FAILED`` verdict);
- 2: bad input the user can fix (:class:`parity.core.errors.UsageError`): one line on stderr saying what was
  expected, what was received and what to do; a user's builder that raised is named with its exception;
- 3: a bug in parity itself: a one-line summary on stderr, the traceback written to a file (pytest's convention
  for internal errors). ``PARITY_DEBUG=1`` prints the traceback too.

Every argument is validated, and every ``module:function`` located, before TensorFlow or torch is imported
(:mod:`parity.core.options`). Progress goes to stderr: a live display on a terminal, nothing otherwise
(``--verbose``: one line per phase with memory figures).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import traceback

from parity.core import env as _env  # noqa: F401  (environment before any framework import)
from parity.core import spill
from parity.core.errors import UsageError
from parity.core.options import (ALL_STAGES, SEED_LIMIT, Target, check_batch, check_config_values,
                                 check_accepts, check_device_name, check_input_file, check_int, check_output_dir,
                                 check_output_file, expand_out, locate, optimizer_spec, parse_config, parse_stages,
                                 locate_module, plan_steps, resolve_user)
from parity.core.spec import PairSpec
from parity.harness import check
from parity.io.convert import FORMATS as CONVERT_FORMATS
from parity.io.convert import convert
from parity.io.cache import cached_check
from parity.io.cache import enabled as cache_enabled
from parity.io.watch import watch_from_cli
from parity.io.trace import record, replay
from parity.pairs import registry
from parity.user.align import parse_pins
from parity.user.pair import LOSSES, USER_ADAM, USER_SGD, is_model_file, parse_input_shape, spec_from_user_models
from reports import to_json, write_reports

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
"""128 + SIGINT, the shell's convention for a command stopped by Ctrl-C."""
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, the shell's convention for a reader that went away (``parity list | head -1``)."""
DEBUG_ENV = "PARITY_DEBUG"
"""Set to 1 to print tracebacks (internal errors, and the exception behind a user function's failure)."""
RUN_ID_ENV = "PARITY_RUN_ID"
"""``{run_id}`` in ``--out`` (e.g. CI's own run number); generated as ``<UTC timestamp>-<6 hex>`` when unset."""
TRACE_SUFFIXES = (".safetensors",)
"""What ``parity record -o`` writes (safetensors + a JSON header)."""
FULL_EXIT_ENV = "PARITY_FULL_EXIT"
"""Set to 1 to let the console script end through the interpreter's full teardown (see :func:`exit_quickly`)."""
DEFAULT_OUT = "parity-report/{pair}"
"""Where a check writes its reports without ``--out`` (replaced by the next check of the same pair)."""
PREVIOUS_REPORT_MAX_BYTES = 64 * 2**20
"""A previous ``report.json`` larger than this is not read for its verdict (the replacement is still named)."""


class CliError(UsageError):
    """A malformed command line: printed as ``parity: error: <message>`` and exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        raise CliError(f"{message}. Run `{self.prog} --help` for the options.")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("parity")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "0+unknown"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# -- progress ------------------------------------------------------------------------------------------------
def _rss_mb() -> str:
    """Current and peak resident memory (Linux /proc; empty elsewhere): big float64 checks are memory-bound."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return f"rss {now:,.0f} MB, peak {peak:,.0f} MB"
    except (OSError, ValueError, IndexError, ImportError):
        return ""


def expected_phases(stages, steps: int, *, onnx: bool = False, reference: bool = True) -> int:
    """How many progress messages a check emits (the bar's length): per side an eval pass and one train pass
    per step, the port's build, isolated layers, the ONNX leg, the diagnosis and the reports."""
    s = set(stages)
    evals = bool(s & {"structure", "forward_eval", "isolated"})
    trains = (steps if "step" in s else 1) if s & {"forward_train", "gradients", "step"} else 0
    sides = 2 if reference else 1
    return 1 + sides * (evals + trains) + ("isolated" in s) + bool(onnx) + 2


class Progress:
    """Progress on stderr. On a terminal: a live rich display (spinner, the current phase, a bar over the
    expected phases, elapsed time and ETA). Not on a terminal: silent, or with ``--verbose`` one plain line per
    phase. ``--verbose`` adds the process's memory (RSS) to each phase; ``--quiet`` silences everything."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, total: int | None = None):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.start = time.perf_counter()
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.live = self.console.is_terminal and not quiet
        self.total = total
        self._bar = None
        self._task = None
        self._phases = 0

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.progress import (BarColumn, Progress as RichProgress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                     TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                                     transient=True)
            self._bar.start()
            self._task = self._bar.add_task("starting (imports)", total=self.total)
        return self

    def __call__(self, msg: str) -> None:
        if self.quiet:
            return
        if self.verbose:
            line = f"[{time.perf_counter() - self.start:6.1f}s {_rss_mb()}] {msg}"
            if self._bar is not None:
                self._bar.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=sys.stderr, flush=True)
        if self._bar is not None:
            total = self.total if self.total is None else max(self.total, self._phases + 1)
            self._bar.update(self._task, description=msg, completed=self._phases, total=total)
        self._phases += 1

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the live display (before the results are printed); later messages are dropped."""
        self.quiet = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# -- validation (before any framework) -------------------------------------------------------------------------
def _run_id() -> tuple[str, str]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    given = os.environ.get(RUN_ID_ENV, "").strip()
    run_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", given) if given else f"{stamp}-{secrets.token_hex(3)}"
    return run_id, stamp


def _out_dir(args, pair: str, default: str = DEFAULT_OUT) -> str:
    """``--out`` (or the default) with ``{pair}``, ``{run_id}``, ``{timestamp}`` filled in, checked writable."""
    if not hasattr(args, "_run"):
        args._run = _run_id()
    run_id, stamp = args._run
    out = expand_out(args.out if args.out else default, pair=pair, run_id=run_id, timestamp=stamp)
    return check_output_dir(out, "--out")


def _builder_targets(args, spec: PairSpec | None) -> list[Target]:
    """The builders a check will call, located (not imported) and named by the option that chose them."""
    targets = []
    if spec is not None:  # a registered pair; --reference / --port replace its own builders
        if getattr(args, "reference", None) and not is_model_file(args.reference):
            targets.append(locate(args.reference, "--reference", "a Keras model"))
        elif isinstance(spec.reference, str):
            targets.append(locate(spec.reference, "", "the pair's Keras model"))
        if getattr(args, "port", None):
            targets.append(locate(args.port, "--port", "a torch.nn.Module"))
        elif isinstance(spec.port, str):
            targets.append(locate(spec.port, "", "the pair's torch module"))
    else:
        if is_model_file(args.reference):  # a saved model: checked as a file, loaded with safe_mode=True
            check_input_file(args.reference, "--reference", "saved Keras model (.keras, .h5)")
        else:
            targets.append(locate(args.reference, "--reference", "a Keras model"))
        targets.append(locate(args.port, "--port", "a torch.nn.Module"))
    return targets


def _validated_config(args, spec: PairSpec | None, targets: list[Target], fast: bool) -> dict:
    """``--config`` parsed, each value of its default's kind, each key an argument of every builder; the user's
    own builders are imported (not called) where their source alone cannot tell their signature."""
    overrides = parse_config(getattr(args, "config", None))
    for t in targets:
        if t.signature is None and t.option:  # a user's builder: the import answers (a framework, maybe)
            t.load()
    defaults: dict = {}
    for t in targets:
        if t.signature is not None:
            defaults.update({k: v for k, v in t.signature.defaults.items() if k not in defaults})
    if spec is not None:
        defaults.update(spec.default_config)
    overrides = check_config_values(overrides, defaults)
    full = dict(spec.fast_config if (spec is not None and fast) else {})
    full.update(overrides)
    passed = {**spec.default_config, **full} if spec is not None else full
    for t in targets:
        check_accepts(t, passed, user_keys=set(overrides))
    return full


def _validate_run(args, spec: PairSpec | None, *, with_device: bool = True) -> tuple[dict, tuple]:
    """Every run option of ``check`` / ``record``; returns (config, stages)."""
    stages = parse_stages(args.stages)
    args.steps = plan_steps(args.stages, args.steps)
    check_batch(args.batch, stages)
    check_int("--seed", args.seed, minimum=0, maximum=SEED_LIMIT)
    if with_device:
        check_device_name(args.device)
    if spec is not None:
        optimizer_spec(spec, args.optimizer)
    elif args.optimizer is not None and args.optimizer not in (USER_SGD.kind, USER_ADAM.kind):
        raise UsageError(f"--optimizer: expected one of {USER_ADAM.kind}, {USER_SGD.kind} for your own models. "
                         f"Received: {args.optimizer!r}.")
    if spec is not None:
        for opt in ("input_shape", "loss", "align", "custom_objects", "port_optimizer", "port_loss"):
            if getattr(args, opt, None):
                raise UsageError(f"--{opt.replace('_', '-')}: expected only with your own models (--reference "
                                 f"MOD:FN --port MOD:FN). Received: it with the registered pair {spec.name!r}, "
                                 "which fixes it. Drop the option.")
    if getattr(args, "weights", None) is not None:
        check_input_file(args.weights, "--weights", "weights file")
    if getattr(args, "input_shape", None) is not None:
        parse_input_shape(args.input_shape)
    if getattr(args, "loss", None) is not None and args.loss not in LOSSES:
        raise UsageError(f"--loss: expected one of {', '.join(LOSSES)}. Received: {args.loss!r}.")
    if getattr(args, "align", None):
        parse_pins(args.align)
    for opt, what in (("port_optimizer", "a torch optimizer from the port module"),
                      ("port_loss", "a loss(output, target)")):
        if getattr(args, opt, None):  # found (not imported) before any framework, like --port
            locate(getattr(args, opt), "--" + opt.replace("_", "-"), what)
            if opt == "port_optimizer" and getattr(args, "optimizer", None):
                raise UsageError("--optimizer: expected no parity optimizer with --port-optimizer (the reference "
                                 "trains with its model.compile(...) optimizer, the port with yours). Received: "
                                 f"--optimizer {args.optimizer}. Drop --optimizer.")
    if getattr(args, "custom_objects", None):
        if not is_model_file(getattr(args, "reference", None)):
            raise UsageError(f"--custom-objects {args.custom_objects}: expected only with a saved --reference model "
                             "(.keras, .h5). Received: it with a --reference builder, whose module defines its own "
                             "layers. Drop the option.")
        locate_module(args.custom_objects, "--custom-objects", "the saved model's custom layers")
    targets = _builder_targets(args, spec)
    return _validated_config(args, spec, targets, args.fast), stages


def _pair_or_user(args, command: str) -> PairSpec | None:
    if args.name:
        return registry.get(args.name)
    ref, port = getattr(args, "reference", None), getattr(args, "port", None)
    if ref and port:
        return None
    got = "--reference only" if ref else "--port only" if port else "neither"
    why = " (the port replay will check)" if command == "record" else ""
    raise CliError(f"{command}: expected a pair NAME (see `parity list`) or both --reference MOD:FN and --port "
                   f"MOD:FN{why}. Received: {got}.")


# -- rendering ---------------------------------------------------------------------------------------------------
def _console(stream):
    from rich.console import Console

    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 160, highlight=False, soft_wrap=False)


def stage_table(result):
    """The per-stage table (rich): result, tensors compared, worst relative error, seconds, where."""
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    t.add_column("stage")
    t.add_column("result")
    t.add_column("tensors", justify="right")
    t.add_column("worst rel", justify="right")
    t.add_column("seconds", justify="right")
    t.add_column("worst / first divergence", overflow="fold")
    for s in result.stages:
        if s.skipped:
            t.add_row(s.name, "skip", "", "", f"{s.seconds:.2f}", str(s.skipped))
            continue
        w, fd = s.worst, s.first_divergence
        fd = fd() if callable(fd) else fd
        where = (f"first: {fd.path}" if fd is not None else (w.path if w is not None else "")) or ""
        if not s.tensors and s.errors:
            where = s.errors[0]
        t.add_row(s.name, "ok" if s.passed else "[bold red]FAIL[/]", str(len(s.tensors)),
                  f"{w.rel:.1e}" if w is not None else "-", f"{s.seconds:.2f}", where)
    return t


def _previous_report(out_dir: str) -> str | None:
    """A description of the report a write to ``out_dir`` replaces (read as data: its verdict and time)."""
    path = os.path.join(out_dir, "report.json")
    try:
        st = os.stat(path)
    except OSError:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.st_mtime))
    verdict = ""
    if st.st_size <= PREVIOUS_REPORT_MAX_BYTES:
        try:
            with open(path, encoding="utf-8") as f:
                prev = json.load(f)
            if isinstance(prev, dict) and isinstance(prev.get("passed"), bool):
                verdict = ("PASSED " if prev["passed"] else "FAILED ")
        except (OSError, ValueError, RecursionError):
            pass
    return f"{verdict}report of {when}"


def _write(result, out_dir: str, say) -> tuple[dict, str | None]:
    replaced = _previous_report(out_dir)
    say(f"write reports to {out_dir}")
    try:
        paths = write_reports(result, out_dir)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: expected a writable directory for the reports. Received: "
                         f"{exc.strerror or exc}. Pass another --out.") from None
    return paths, replaced


def _report_lines(paths: dict, replaced: str | None, out_dir: str) -> list[str]:
    lines = [f"reports: {paths['json']}  {paths['md']}  {paths['html']}"]
    if replaced:
        lines.append(f"replaced the {replaced} in {out_dir}/ (keep every run with "
                     "--out 'parity-report/{pair}/{run_id}')")
    return lines


def _render(result, args, out_dir: str, say) -> int:
    paths, replaced = _write(result, out_dir, say)
    if isinstance(say, Progress):
        say.stop()
    if args.json:
        sys.stdout.write(to_json(result))
        sys.stdout.flush()
        for line in _report_lines(paths, replaced, out_dir):
            print(line, file=sys.stderr)
        print(result.summary_line(), file=sys.stderr)
        return EXIT_OK if result.passed else EXIT_FAILED
    con = _console(sys.stdout)
    con.print(stage_table(result))
    fd = result.first_divergence
    fd = fd() if callable(fd) else fd
    if fd is not None and fd[1] is not None:
        con.print(f"\nfirst divergence at {fd[0].name} {fd[1].path}:\n  {fd[1].describe()}", markup=False)
    errors = [f for f in result.findings if f.severity == "error"]
    if errors:
        con.print("\nfindings:")
        seen = set()
        for f in errors:
            key = (f.cause, f.message)
            if key in seen:
                continue
            seen.add(key)
            same = sum(1 for g in errors if (g.cause, g.message) == key)
            more = f" (and {same - 1} more layers)" if same > 1 else ""
            con.print(f"  {f.line()}{more}", markup=False)
    training = result.optimizer.get("training_configuration") if isinstance(result.optimizer, dict) else None
    if training:  # your own models: whose optimizer and loss the training stages compared
        con.print(f"\ntraining configuration: {training}", markup=False, soft_wrap=True)
    con.print("")
    for line in _report_lines(paths, replaced, out_dir):
        con.print(line, markup=False, soft_wrap=True)
    sys.stdout.flush()
    print(result.summary_line(), flush=True)
    return EXIT_OK if result.passed else EXIT_FAILED


# -- commands ------------------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    specs = registry.all_specs()
    if args.json:
        print(json.dumps([{"name": s.name, "summary": s.summary, "published_params": s.published_params,
                           "default_config": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in s.default_config.items()}} for s in specs], indent=2))
        return EXIT_OK
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    t.add_column("pair")
    t.add_column("parameters", justify="right")
    t.add_column("summary", overflow="fold")
    for s in specs:
        n = s.published_params.get("total")
        t.add_row(s.name, f"{n:,}" if n else "?", s.summary)
    for name, err in registry.BROKEN.items():
        t.add_row(name, "", f"(failed to load: {err})")
    _console(sys.stdout).print(t)
    return EXIT_OK


def _user_training_args(args) -> dict:
    """``--port-optimizer`` / ``--port-loss`` for :func:`parity.harness.check` (your own models only)."""
    return {k: getattr(args, k) for k in ("port_optimizer", "port_loss") if getattr(args, k, None)}


def cmd_check(args) -> int:
    spec = _pair_or_user(args, "check")
    cfg, stages = _validate_run(args, spec)
    out_dir = _out_dir(args, spec.name if spec is not None else "user")
    with Progress(quiet=args.quiet, verbose=args.verbose,
                  total=expected_phases(stages, args.steps, onnx=args.onnx)) as say:
        if spec is None:
            say("reference: build your model (imports TensorFlow)")
            spec = spec_from_user_models(args.reference, args.port, input_shape=args.input_shape, loss=args.loss,
                                         pins=args.align, custom_objects=getattr(args, "custom_objects", None))
            if not args.out:
                out_dir = _out_dir(args, spec.name)
        if args.watch:  # parity.io.watch: one warm process, the port re-checked on every save
            return watch_from_cli(spec, args, cfg, stages, out_dir, say)
        # the reference cache (parity.io.cache): registered pairs, unless --no-cache / PARITY_NO_CACHE=1
        run = cached_check if args.name and cache_enabled(no_cache=args.no_cache, onnx=args.onnx) else check
        result = run(spec, stages=",".join(stages), dtype=args.dtype, device=args.device, batch=args.batch,
                     seed=args.seed, optimizer=args.optimizer, steps=args.steps, weights=args.weights, config=cfg,
                     port=args.port if args.name else None, reference=(args.reference if args.name else None),
                     onnx=args.onnx, progress=say, **_user_training_args(args))
        return _render(result, args, out_dir, say)


def cmd_record(args) -> int:
    spec = _pair_or_user(args, "record")
    cfg, stages = _validate_run(args, spec, with_device=False)
    check_output_file(args.output, "-o", TRACE_SUFFIXES, "trace")
    with Progress(quiet=args.quiet, verbose=args.verbose,
                  total=expected_phases(stages, args.steps, reference=False)) as say:
        if spec is None:
            say("reference: build your model (imports TensorFlow)")
            spec = spec_from_user_models(args.reference, args.port, input_shape=args.input_shape, loss=args.loss,
                                         pins=args.align, custom_objects=getattr(args, "custom_objects", None))
        path, summary = record(spec, args.output, stages=",".join(stages), dtype=args.dtype, batch=args.batch,
                               seed=args.seed, optimizer=args.optimizer, steps=args.steps, weights=args.weights,
                               config=cfg, port=args.port,
                               reference=(resolve_user(args.reference, "--reference", "a Keras model")
                                          if args.name and args.reference else None),
                               progress=say, **_user_training_args(args))
    # recording checks nothing: no PASSED/FAILED (those are verdicts)
    print(re.sub(r"^(PASSED|FAILED) record\b", "recorded", summary))
    return EXIT_OK


def cmd_replay(args) -> int:
    check_input_file(args.trace, "replay", "trace file written by `parity record`")
    stages = parse_stages(args.stages) if args.stages is not None else None
    check_device_name(args.device)
    if args.port is not None:
        locate(args.port, "--port", "a torch.nn.Module")
    for opt, what in (("port_optimizer", "a torch optimizer from the port module"),
                      ("port_loss", "a loss(output, target)")):
        if getattr(args, opt, None):  # found (not imported) before the trace is read, like --port
            locate(getattr(args, opt), "--" + opt.replace("_", "-"), what)
    if args.out:
        _out_dir(args, "pair")  # fields and writability; the pair's name is read from the trace below
    with Progress(quiet=args.quiet, verbose=args.verbose,
                  total=expected_phases(stages or ALL_STAGES, 1, reference=False)) as say:
        result = replay(args.trace, port=args.port, stages=",".join(stages) if stages else None, device=args.device,
                        progress=say, **_user_training_args(args))
        out_dir = _out_dir(args, result.pair, default="parity-report/{pair}-replay")
        return _render(result, args, out_dir, say)


def usage_hint(spec: PairSpec, cfg: dict, output: str) -> list[str]:
    """How to use a converted file: the port's builder, its input layout, its output, a load snippet."""
    full = spec.config(**cfg)
    port = spec.port if isinstance(spec.port, str) else f"{spec.port.__module__}:{spec.port.__qualname__}"
    mod, _, fn = port.partition(":")
    h, w, c = tuple(spec.input_shape(full))[:3]
    out = ("logits (apply softmax for the reference's probabilities; train with F.cross_entropy)"
           if spec.loss.name == "categorical_crossentropy" else "the model's outputs (no activation added)")
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
    load = (f'load_file("{output}")' if output.endswith(".safetensors")
            else f'torch.load("{output}", weights_only=True)')
    imp = ("from safetensors.torch import load_file" if output.endswith(".safetensors") else "import torch")
    return [
        "",
        f"use it: the port is {port}({args}); input NCHW float (N, {c}, {h}, {w}) "
        f"(the reference's NHWC (N, {h}, {w}, {c}) transposed); it returns {out}.",
        f"  from {mod} import {fn}; {imp}",
        f"  model = {fn}({args}); model.load_state_dict({load}); model.eval()",
    ]


def cmd_convert(args) -> int:
    check_input_file(args.weights, "convert", "weights file")
    spec = registry.get(args.pair)
    check_output_file(args.output, "-o", CONVERT_FORMATS, "state_dict")
    targets = _builder_targets(argparse.Namespace(), spec)
    cfg = _validated_config(args, spec, targets, args.fast)
    with Progress(quiet=args.quiet, verbose=args.verbose, total=6) as say:
        lines, ok = convert(spec, args.weights, args.output, config=cfg, progress=say)
    body, last = (lines[:-1], lines[-1:]) if lines else ([], [])
    for line in body + (usage_hint(spec, cfg, args.output) + [""] if ok else []) + last:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


COMMANDS = {"list": cmd_list, "check": cmd_check, "record": cmd_record, "replay": cmd_replay, "convert": cmd_convert}


# -- the parser -----------------------------------------------------------------------------------------------------
def _add_model_options(p, *, record: bool = False) -> None:
    p.add_argument("name", nargs="?", help="registered pair (see `parity list`)")
    p.add_argument("--reference", metavar="MOD:FN|FILE",
                   help="Keras model builder, or a saved model (.keras, .h5: its own weights) (your own model)")
    p.add_argument("--custom-objects", metavar="MOD",
                   help="module holding the custom layers of a saved --reference model")
    p.add_argument("--port", metavar="MOD:FN",
                   help=("torch module builder stored in the trace as replay's default port (needed with "
                         "--reference)") if record else "torch module builder (your own port)")
    p.add_argument("--weights", metavar="FILE",
                   help="Keras .h5 / .weights.h5, or Caffe .npy / .caffemodel, for the reference")
    p.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                   help="per-sample shape of a reference input in the Keras layout (20, 12,8, 64,64,1); repeat or "
                        "name it (image=227,227,3) for several inputs; default: the model's own (your own models)")
    p.add_argument("--loss", metavar="|".join(LOSSES), help="loss (your own models; default inferred)")
    p.add_argument("--align", action="append", metavar="REF=PORT",
                   help="pin a reference layer to a port module path (your own models; repeatable)")


def _add_run_options(p, *, check_only: bool = True) -> None:
    p.add_argument("--stages", metavar="S,...",
                   help=f"comma list of {', '.join(ALL_STAGES)}; trajectory = step over --steps N >= 2 "
                        "(default: all but trajectory)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float64 (default; exact comparison) or float32 (documented looser policy)")
    if check_only:
        p.add_argument("--device", default="cpu", help="torch device for the port: cpu (default) or cuda[:N]")
    p.add_argument("--batch", type=int, metavar="N", help="batch size >= 1, >= 2 with train stages "
                                                          "(default: the pair's)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the inputs, labels and initialisation")
    p.add_argument("--optimizer", metavar="KIND", help="one of the pair's optimizers (e.g. sgd, adam)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps to compare (default 1; 3 with "
                                                          "--stages trajectory)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="override a builder argument, e.g. --config num_classes=2 (repeatable; checked "
                        "against the builders' signatures)")
    p.add_argument("--fast", action="store_true", help="use the pair's reduced CI configuration")
    if check_only:
        p.add_argument("--out", metavar="DIR",
                       help="directory for report.json/.md/.html; may hold {pair}, {run_id} (env "
                            f"{RUN_ID_ENV}, else generated), {{timestamp}} (default: {DEFAULT_OUT}, replaced by "
                            "the next check of the pair)")
        p.add_argument("--json", action="store_true",
                       help="stdout is exactly the JSON report; the summary line goes to stderr")
    _add_output_options(p)


def _add_output_options(p) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="one progress line per phase with memory figures (RSS), also when not a terminal")


def _add_user_training_options(p, *, recorded: str = "") -> None:
    """``--port-optimizer`` / ``--port-loss`` (check, record, replay)."""
    p.add_argument("--port-optimizer", metavar="MOD:FN",
                   help="your torch optimizer: FN(port_module) -> optimizer or (optimizer, scheduler); the reference "
                        "trains with its model.compile(...) configuration (your own models)" + recorded)
    p.add_argument("--port-loss", metavar="MOD:FN",
                   help="your loss(output, target), or FN() returning it (class indices as targets of a classifier; "
                        "(outputs, targets) tuples for several outputs)" + recorded)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description="Prove a PyTorch port of a Keras/Caffe model is the same model.",
                     epilog="Exit codes: 0 passed, 1 parity failure, 2 bad input, 3 a bug in parity.")
    parser.add_argument("--version", action="version", version=f"parity {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p = sub.add_parser("list", help="list the registered pairs")
    p.add_argument("--json", action="store_true", help="print the pairs as one JSON document")
    p = sub.add_parser("check", help="check a pair: structure, forward, backward, optimizer step, isolated layers")
    _add_model_options(p)
    p.add_argument("--onnx", action="store_true", help="add onnxruntime as a third leg of the forward comparison")
    _add_user_training_options(p)
    p.add_argument("--no-cache", action="store_true",
                   help="compute the reference now, without the reference cache (registered pairs use it: "
                        "$PARITY_CACHE_DIR, else $XDG_CACHE_HOME/parity or ~/.cache/parity)")
    p.add_argument("--watch", action="store_true",
                   help="stay running: re-check the port each time one of its source files is saved (Ctrl-C ends)")
    _add_run_options(p)
    p = sub.add_parser("record", help="run only the reference side and store a trace (safetensors + JSON)")
    _add_model_options(p, record=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="trace file (.safetensors)")
    _add_user_training_options(p, recorded="; the compiled configuration is stored in the trace as data, and "
                                           "replay takes the same options")
    _add_run_options(p, check_only=False)
    p = sub.add_parser("replay", help="check a port against a recorded trace (PyTorch only, no TensorFlow)")
    p.add_argument("trace", help="trace file written by `parity record`")
    p.add_argument("--port", metavar="MOD:FN", help="torch module builder (your own port; default: the pair's)")
    _add_user_training_options(p, recorded="; as given to `parity record`")
    p.add_argument("--stages", metavar="S,...", help="comma list among the recorded stages (default: all recorded)")
    p.add_argument("--device", default="cpu", help="torch device for the port: cpu (default) or cuda[:N]")
    p.add_argument("--out", metavar="DIR", help="report directory; may hold {pair}, {run_id}, {timestamp} "
                                                "(default: parity-report/{pair}-replay)")
    p.add_argument("--json", action="store_true",
                   help="stdout is exactly the JSON report; the summary line goes to stderr")
    _add_output_options(p)
    p = sub.add_parser("convert", help="convert reference weights to a torch state_dict, with self-checks")
    p.add_argument("weights", help="Keras .h5 / .weights.h5 or Caffe .npy / .caffemodel")
    p.add_argument("--pair", required=True, metavar="NAME",
                   help="registered pair whose port the weights are for (see `parity list`)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="port.safetensors or port.pt")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="builder argument the weights were saved with, e.g. --config num_classes=2 (repeatable)")
    p.add_argument("--fast", action="store_true", help="use the pair's reduced CI configuration")
    _add_output_options(p)
    return parser


# -- main -------------------------------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return lines[0] if lines else type(exc).__name__


def _internal_error(exc: BaseException) -> int:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="parity-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"parity {_version()}, Python {sys.version.split()[0]}, argv {sys.argv!r}\n\n{tb}")
        where = f"traceback written to {path}"
    except OSError:
        where = f"set {DEBUG_ENV}=1 for the traceback"
    if _debug():
        sys.stderr.write(tb)
    print(f"parity: internal error: {type(exc).__name__}: {_first_line(exc)} (a bug in parity; {where})",
          file=sys.stderr, flush=True)
    return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --port mod:fn resolves against the working directory, like `python -m`
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            raise CliError("expected a command: list, check, record, replay or convert. Run `parity --help`.")
        return COMMANDS[args.command](args)
    except UsageError as exc:
        if _debug():
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"parity: error: {_first_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if spill.sigterm_received():  # a framework replaced the SystemExit that SIGTERM raised
            print("parity: stopped by SIGTERM", file=sys.stderr, flush=True)
            return spill.SIGTERM_EXIT
        return _internal_error(exc)


def exit_quickly(code: int) -> None:
    """End the process with ``code`` now, without the interpreter's module-by-module teardown.

    What that teardown does for a finished command is free memory the OS frees anyway: every module of torch
    (and TensorFlow after a recording), then libtorch's C++ statics. Measured on the 2-core VM
    (``python`` around :func:`main` of a cached ``parity check minixception``, time from the last atexit handler
    to the process's end): 0.57-0.77 s, a quarter of the command's wall time. What matters of it runs here
    first: non-daemon threads are joined, the atexit handlers run (``tempfile``'s and ``weakref.finalize``'s
    cleanups, coverage's data), stdout and stderr are flushed. parity's own files are written under ``with`` and
    closed before :func:`main` returns. ``PARITY_FULL_EXIT=1`` restores the ordinary ``sys.exit``.
    """
    if os.environ.get(FULL_EXIT_ENV) == "1":
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code if isinstance(code, int) else EXIT_INTERNAL)


def console_main() -> None:
    """The ``parity`` console script and ``python -m parity``: :func:`main` with the frameworks' imports frozen
    out of the garbage collector's sight (:func:`parity.core.env.freeze_after_imports`), then
    :func:`exit_quickly`."""
    _env.freeze_after_imports()
    exit_quickly(main())


if __name__ == "__main__":
    console_main()
