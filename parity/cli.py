"""The ``parity`` command line. The contract: the last stdout line is ``PASSED …`` or ``FAILED …``; exit 0 on
success, 1 on a parity failure, 2 on a usage or input error (one line on stderr, no traceback).

Commands: ``list``, ``check``, ``record``, ``replay``, ``convert``. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

from parity.core import env as _env  # noqa: F401  (environment before any framework import)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user error: printed as ``parity: error: <message>`` and exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        raise CliError(f"{message}. Run `{self.prog} --help` for the options.")


def _rss_mb() -> str:
    """Current resident memory (Linux /proc; empty elsewhere): big float64 checks are memory-bound."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return f" rss {now:,.0f} MB, peak {peak:,.0f} MB"
    except (OSError, ValueError, IndexError, ImportError):
        return ""


def _progress(enabled: bool):
    start = time.perf_counter()

    def say(msg: str) -> None:
        if enabled:
            print(f"[{time.perf_counter() - start:6.1f}s{_rss_mb()}] {msg}", file=sys.stderr, flush=True)

    return say


def _parse_config(items: list[str] | None) -> dict:
    cfg = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--config: expected KEY=VALUE (e.g. num_classes=2). Received: {item!r}.")
        try:
            cfg[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            cfg[key] = value
    return cfg


def _add_run_options(p: argparse.ArgumentParser, *, with_stages=True) -> None:
    if with_stages:
        p.add_argument("--stages", help="comma list of structure,forward_eval,forward_train,gradients,step,"
                                        "isolated (default: all)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float64 (default; exact comparison) or float32 (documented looser policy)")
    p.add_argument("--device", default="cpu", help="torch device for the port: cpu (default) or cuda[:N]")
    p.add_argument("--batch", type=int, help="batch size (default: the pair's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input/label generator and initialisation")
    p.add_argument("--optimizer", help="optimizer description of the pair to use (e.g. sgd, adam)")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps to compare (default 1)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="override a builder argument, e.g. --config num_classes=2 (repeatable)")
    p.add_argument("--fast", action="store_true", help="use the pair's reduced CI configuration")
    p.add_argument("--out", help="directory for report.json, report.md, report.html "
                                 "(default: parity-report/<pair>)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout before the last line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description="Prove a PyTorch port of a Keras/Caffe model is the same model.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("list", help="list the registered pairs")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("check", help="check a pair: structure, forward, backward, optimizer step, isolated layers")
    p.add_argument("name", nargs="?", help="registered pair (see `parity list`)")
    p.add_argument("--reference", metavar="MOD:FN", help="Keras model builder (your own model)")
    p.add_argument("--port", metavar="MOD:FN", help="torch module builder (your own port)")
    p.add_argument("--weights", metavar="FILE",
                   help="Keras .h5 / .weights.h5, or Caffe .npy / .caffemodel, for the reference")
    p.add_argument("--input-shape", help="H,W,C of one reference input (your own models)")
    p.add_argument("--loss", help="categorical_crossentropy | mse | l1_sum (your own models)")
    p.add_argument("--align", action="append", metavar="REF=PORT",
                   help="pin a reference layer to a port module path (your own models; repeatable)")
    p.add_argument("--onnx", action="store_true", help="add onnxruntime as a third leg of the forward comparison")
    _add_run_options(p)
    p = sub.add_parser("record", help="run only the reference side and store a trace (safetensors + JSON)")
    p.add_argument("name", nargs="?", help="registered pair (see `parity list`)")
    p.add_argument("--reference", metavar="MOD:FN", help="Keras model builder (your own model)")
    p.add_argument("--port", metavar="MOD:FN",
                   help="torch module builder stored in the trace as replay's default port (needed with --reference)")
    p.add_argument("--weights", metavar="FILE",
                   help="Keras .h5 / .weights.h5, or Caffe .npy / .caffemodel, for the reference")
    p.add_argument("--input-shape", help="H,W,C of one reference input (your own models)")
    p.add_argument("--loss", help="categorical_crossentropy | mse | l1_sum (your own models)")
    p.add_argument("--align", action="append", metavar="REF=PORT",
                   help="pin a reference layer to a port module path (your own models; repeatable)")
    p.add_argument("-o", "--output", required=True, help="trace file (.safetensors)")
    _add_run_options(p)
    p = sub.add_parser("replay", help="check a port against a recorded trace (PyTorch only, no TensorFlow)")
    p.add_argument("trace", help="trace file written by `parity record`")
    p.add_argument("--port", metavar="MOD:FN", help="torch module builder (default: the one the trace names)")
    p.add_argument("--stages", help="comma list among the recorded stages (default: all recorded)")
    p.add_argument("--device", default="cpu", help="torch device for the port: cpu (default) or cuda[:N]")
    p.add_argument("--out", help="report directory (default: parity-report/<pair>-replay)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout before the last line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p = sub.add_parser("convert", help="convert reference weights to a torch state_dict, with self-checks")
    p.add_argument("weights", help="Keras .h5 / .weights.h5 or Caffe .npy / .caffemodel")
    p.add_argument("--pair", required=True)
    p.add_argument("-o", "--output", required=True, help="port.safetensors or port.pt")
    p.add_argument("--config", action="append", metavar="KEY=VALUE")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    return parser


def _human_table(result) -> str:
    lines = [f"{'stage':<14} {'result':<7} {'tensors':>7} {'worst rel':>10}  {'seconds':>7}  worst / first divergence"]
    for s in result.stages:
        if s.skipped:
            lines.append(f"{s.name:<14} {'skip':<7} {'':>7} {'':>10}  {s.seconds:7.2f}  {s.skipped}")
            continue
        w = s.worst
        fd = s.first_divergence
        where = (f"first: {fd.path}" if fd is not None else (w.path if w is not None else "")) or ""
        if not s.tensors and s.errors:
            where = s.errors[0]
        rel = f"{w.rel:.1e}" if w is not None else "-"
        lines.append(f"{s.name:<14} {'ok' if s.passed else 'FAIL':<7} {len(s.tensors):>7} {rel:>10}  "
                     f"{s.seconds:7.2f}  {where}")
    return "\n".join(lines)


def _render(result, args, out_default: str) -> int:
    from reports import to_json, write_reports

    out = args.out or out_default
    paths = write_reports(result, out)
    if args.json:
        print(to_json(result), end="")
    else:
        print(_human_table(result))
        fd = result.first_divergence()
        if fd is not None and fd[1] is not None:
            print(f"\nfirst divergence at {fd[0].name} {fd[1].path}:\n  {fd[1].describe()}")
        errors = [f for f in result.findings if f.severity == "error"]
        if errors:
            print("\nfindings:")
            seen = set()
            for f in errors:
                key = (f.cause, f.message)
                if key in seen:
                    continue
                seen.add(key)
                same = sum(1 for g in errors if (g.cause, g.message) == key)
                more = f" (and {same - 1} more layers)" if same > 1 else ""
                print(f"  {f.line()}{more}")
        print(f"\nreports: {paths['json']}  {paths['md']}  {paths['html']}")
    print(result.summary_line())
    return EXIT_OK if result.passed else EXIT_FAILED


def cmd_list(args) -> int:
    from parity.pairs import registry

    specs = registry.all_specs()
    if args.json:
        print(json.dumps([{"name": s.name, "summary": s.summary, "published_params": s.published_params,
                           "default_config": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in s.default_config.items()}} for s in specs], indent=2))
    else:
        print(f"{'pair':<14} {'parameters':>12}  summary")
        for s in specs:
            n = s.published_params.get("total")
            print(f"{s.name:<14} {f'{n:,}' if n else '?':>12}  {s.summary}")
        for name, err in registry.BROKEN.items():
            print(f"{name:<14} {'':>12}  (failed to load: {err})")
    print(f"PASSED list: {len(specs)} pairs")
    return EXIT_OK


def _spec_for(args):
    from parity.pairs import registry

    if args.name:
        return registry.get(args.name)
    if getattr(args, "reference", None) and getattr(args, "port", None):
        from parity.user.pair import spec_from_user_models

        return spec_from_user_models(args.reference, args.port, input_shape=getattr(args, "input_shape", None),
                                     loss=getattr(args, "loss", None), pins=getattr(args, "align", None))
    raise CliError("check: expected a pair NAME (see `parity list`) or both --reference MOD:FN and --port MOD:FN. "
                   "Received: neither.")


def _check_args(args):
    spec = _spec_for(args)
    cfg = dict(spec.fast_config) if args.fast else {}
    cfg.update(_parse_config(args.config))
    return spec, cfg


def cmd_check(args) -> int:
    from parity.harness import check

    spec, cfg = _check_args(args)
    port = args.port if args.name else None
    result = check(spec, stages=args.stages, dtype=args.dtype, device=args.device, batch=args.batch,
                   seed=args.seed, optimizer=args.optimizer, steps=args.steps, weights=args.weights, config=cfg,
                   port=port, reference=(args.reference if args.name else None), onnx=args.onnx,
                   progress=_progress(not args.quiet))
    return _render(result, args, os.path.join("parity-report", spec.name))


def cmd_record(args) -> int:
    from parity.io.trace import record

    if not args.name and not (args.reference and args.port):
        raise CliError("record: expected a pair NAME (see `parity list`) or both --reference MOD:FN and --port MOD:FN "
                       "(the port replay will check). Received: "
                       + ("--reference only." if args.reference else "--port only." if args.port else "neither."))
    spec, cfg = _check_args(args)
    path, summary = record(spec, args.output, stages=args.stages, dtype=args.dtype, batch=args.batch, seed=args.seed,
                           optimizer=args.optimizer, steps=args.steps, weights=args.weights, config=cfg,
                           reference=(args.reference if args.name else None), port=args.port,
                           progress=_progress(not args.quiet))
    print(summary)
    return EXIT_OK


def cmd_replay(args) -> int:
    from parity.io.trace import replay

    result = replay(args.trace, port=args.port, stages=args.stages, device=args.device,
                    progress=_progress(not args.quiet))
    return _render(result, args, os.path.join("parity-report", result.pair + "-replay"))


def cmd_convert(args) -> int:
    from parity.io.convert import convert

    cfg = {}
    from parity.pairs import registry

    spec = registry.get(args.pair)
    if args.fast:
        cfg.update(spec.fast_config)
    cfg.update(_parse_config(args.config))
    lines, ok = convert(spec, args.weights, args.output, config=cfg, progress=_progress(not args.quiet))
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


COMMANDS = {"list": cmd_list, "check": cmd_check, "record": cmd_record, "replay": cmd_replay, "convert": cmd_convert}


def main(argv: list[str] | None = None) -> int:
    from parity.core.env import MissingFramework
    from parity.core.errors import UsageError
    from parity.pairs.registry import UnknownPair

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --port mod:fn resolves against the working directory, like `python -m`
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise CliError("expected a command: list, check, record, replay or convert. Run `parity --help`.")
        return COMMANDS[args.command](args)
    except (CliError, UsageError, MissingFramework, UnknownPair) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"parity: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except (ImportError, AttributeError, ValueError, KeyError, FileNotFoundError) as exc:
        if os.environ.get("PARITY_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"parity: error: {type(exc).__name__}: {msg} (set PARITY_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
