"""The check's options, validated before any framework is imported: stage names, numbers, the optimizer choice,
``--config`` values, input and output paths, and the ``module:function`` builders a user names.

Every check here is cheap and imports nothing heavy: a ``module:function`` is first located without importing
it (:func:`importlib.util.find_spec`, then the module's source read with :mod:`ast` — read, never run), so a
missing module or a misspelt function is reported in well under a second, before TensorFlow or torch load.
Only where the source cannot answer (a name bound by an import or an assignment, a decorated function) is the
module imported to look the name up — still without calling it.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import stat
import string
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.core.errors import UsageError, UserCodeError, user_function
from parity.core.spec import OptimizerSpec, PairSpec

ALL_STAGES = ("structure", "forward_eval", "forward_train", "gradients", "step", "isolated")
"""The stages a check runs by default, in the order that decides "first divergence"."""

TRAJECTORY_STAGE = "trajectory"
"""Not a stage of its own: the step stage run over ``--steps N`` (N >= 2) adds the per-step trajectory
(weight divergence and BatchNorm running statistics after each step). ``--stages trajectory`` asks for it."""

TRAJECTORY_DEFAULT_STEPS = 3
"""Steps run for ``--stages trajectory`` when ``--steps`` is not given (a trajectory needs at least two)."""

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
"""Torch device strings the port side accepts (``parity.backends.torch_side.resolve_device``)."""

TARGET_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""``package.module:function`` (the entry-point syntax of the Python packaging spec, without extras)."""

MAX_SOURCE_BYTES = 4 * 2**20
"""A module source larger than this is not parsed for the static look-up (the module is imported instead)."""

DYNAMIC_BINDING = (b"globals()", b"setattr(", b"exec(", b"vars()", b"__dict__")
"""Source text that may bind module names at run time: a name the source does not bind is then looked up by
importing the module instead of being reported missing."""

SEED_LIMIT = 2**32
"""Seeds are numpy ``default_rng`` / Keras ``set_random_seed`` seeds: integers in [0, 2**32)."""

OUT_FIELDS = ("pair", "run_id", "timestamp")
"""The fields ``--out`` may contain, e.g. ``--out parity-report/{pair}/{run_id}``."""


# -- stages and numbers ---------------------------------------------------------------------------------------
def parse_stages(text: str | None) -> tuple[str, ...]:
    """``"structure,forward_eval"`` -> the stage names (``None`` / ``"all"``: every stage). ``trajectory`` is
    the step stage (see :data:`TRAJECTORY_STAGE`). An empty list is refused: a check of nothing passes nothing."""
    if text is None or text == "all":
        return ALL_STAGES
    raw = [s.strip() for s in str(text).split(",")]
    names = [s for s in raw if s]
    if not names:
        raise UsageError(f"--stages: expected a comma list of {', '.join(ALL_STAGES)} (or {TRAJECTORY_STAGE}). "
                         f"Received: {text!r}, which names no stage. Drop --stages to run them all.")
    bad = [n for n in names if n not in ALL_STAGES and n != TRAJECTORY_STAGE]
    if bad:
        raise UsageError(f"--stages: expected a comma list of {', '.join(ALL_STAGES)}. Received: {', '.join(bad)}.")
    out: list[str] = []
    for n in names:
        n = "step" if n == TRAJECTORY_STAGE else n
        if n not in out:
            out.append(n)
    return tuple(out)


def plan_steps(stages_text: str | None, steps: int | None) -> int:
    """The number of optimizer steps: ``--steps`` (default 1), or :data:`TRAJECTORY_DEFAULT_STEPS` when
    ``--stages`` names ``trajectory`` and ``--steps`` is not given. ``trajectory`` with ``--steps 1`` is refused."""
    wants_traj = stages_text is not None and TRAJECTORY_STAGE in [s.strip() for s in str(stages_text).split(",")]
    if steps is None:
        return TRAJECTORY_DEFAULT_STEPS if wants_traj else 1
    check_int("--steps", steps, minimum=1)
    if wants_traj and steps < 2:
        raise UsageError(f"--stages trajectory: expected --steps N with N >= 2 (the trajectory follows the weights "
                         f"step by step). Received: --steps {steps}. Drop --steps (runs "
                         f"{TRAJECTORY_DEFAULT_STEPS}) or pass --steps 2 or more.")
    return steps


def check_int(option: str, value, *, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """``value`` as an int in [minimum, maximum), else a usage error naming ``option``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value < maximum
    if not ok:
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum})"
        raise UsageError(f"{option}: expected an integer {rng}{why}. Received: {value!r}.")
    return value


def check_batch(batch: int | None, stages=ALL_STAGES) -> int | None:
    """``--batch``: None (the pair's default) or an integer >= 1; >= 2 when a train-mode stage runs."""
    if batch is None:
        return None
    train = bool(set(stages) & {"forward_train", "gradients", "step"})
    ok = isinstance(batch, int) and not isinstance(batch, bool)
    if train and not (ok and batch >= 2):
        raise UsageError(f"--batch: expected >= 2 for train-mode stages (BatchNorm needs a batch). "
                         f"Received: {batch!r}.")
    return check_int("--batch", batch, minimum=1)


def check_device_name(device: str) -> str:
    """``--device``: ``cpu`` or ``cuda[:N]`` (whether that device exists is asked of torch later)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise UsageError(f"--device: expected 'cpu' or 'cuda[:N]'. Received: {device!r}.")
    return device


def optimizer_spec(spec: PairSpec, optimizer) -> OptimizerSpec:
    if optimizer is None or isinstance(optimizer, OptimizerSpec):
        return optimizer or spec.optimizer
    try:
        return spec.optimizer_for(optimizer)
    except KeyError:
        kinds = sorted({spec.optimizer.kind, *spec.optimizers})
        raise UsageError(f"--optimizer: expected one of {', '.join(kinds)} for pair {spec.name!r}. "
                         f"Received: {optimizer!r}.") from None


# -- --config ---------------------------------------------------------------------------------------------------
def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``["num_classes=2", "input_shape=(32,32,1)"]`` -> ``{"num_classes": 2, "input_shape": (32, 32, 1)}``.
    Values are Python literals (``ast.literal_eval``: evaluated as data, never run); anything else is a string."""
    cfg: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--config: expected KEY=VALUE with KEY a builder argument (e.g. num_classes=2). "
                             f"Received: {item!r}.")
        try:
            cfg[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            cfg[key] = value.strip()
    return cfg


_UNKNOWN = object()


def _kind_of(default) -> str:
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, int):
        return "a positive integer" if default > 0 else "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (tuple, list)):
        return f"{len(default)} values"
    return type(default).__name__


def _coerce(value, default):
    """``value`` converted to the default's kind where the text is unambiguous, else ``_UNKNOWN``."""
    if default is None or default is _UNKNOWN:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return _UNKNOWN
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool) and (value > 0 or default <= 0):
            return value
        return _UNKNOWN
    if isinstance(default, float):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _UNKNOWN
    if isinstance(default, str):
        return value if isinstance(value, str) else _UNKNOWN
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            return _UNKNOWN
        items = [_coerce(v, d) for v, d in zip(value, default)]
        return _UNKNOWN if any(i is _UNKNOWN for i in items) else type(default)(items)
    return value


def check_config_values(overrides: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Each override of the same kind as its default (an int for an int, 3 values for a 3-tuple...)."""
    out = {}
    for key, value in overrides.items():
        default = defaults.get(key, _UNKNOWN)
        got = _coerce(value, default)
        if got is _UNKNOWN:
            raise UsageError(f"--config {key}: expected {_kind_of(default)} like the default {default!r}. "
                             f"Received: {value!r}.")
        out[key] = got
    return out


# -- module:function targets -------------------------------------------------------------------------------------
@dataclass
class Signature:
    """What a builder accepts: parameter names (keyword-passable), which have no default, whether it takes
    ``**kwargs``, and the literal defaults read from its source."""

    params: tuple[str, ...]
    required: tuple[str, ...] = ()
    var_keyword: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    text: str = "(...)"

    @classmethod
    def of(cls, fn: Callable) -> "Signature | None":
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        params, required, defaults, var_kw = [], [], {}, False
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
                else:
                    defaults[p.name] = p.default
        return cls(tuple(params), tuple(required), var_kw, defaults, str(sig))


@dataclass
class Target:
    """A ``module:function`` a user named on the command line, located before it is imported."""

    text: str
    option: str
    what: str
    module: str
    attr: str
    signature: Signature | None = None
    _fn: Callable | None = None

    @property
    def label(self) -> str:
        return f"{self.option} {self.text}" if self.option else self.text

    def load(self) -> Callable:
        """Import the module, look the function up (not calling it) and return it wrapped so that whatever it
        raises when called is reported as the user's (:class:`parity.core.errors.UserCodeError`)."""
        if self._fn is not None:
            return self._fn
        try:
            obj = importlib.import_module(self.module)
        except ImportError as exc:
            raise UsageError(f"{self.label}: expected an importable MODULE:FUNCTION building {self.what}. "
                             f"Received: {type(exc).__name__}: {exc}. Install what it imports, or run from the "
                             "directory that holds it.") from None
        except Exception as exc:
            raise UserCodeError(f"{self.label}: importing {self.module}", exc) from exc
        for part in self.attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise UsageError(f"{self.label}: expected an importable MODULE:FUNCTION building {self.what}. "
                                 f"Received: module {self.module!r} has no attribute {part!r}. Check the name."
                                 ) from None
        if not callable(obj):
            raise UsageError(f"{self.label}: expected a callable building {self.what}. Received: "
                             f"{type(obj).__name__} {_short(obj)}.")
        if self.signature is None:
            self.signature = Signature.of(obj)
        self._fn = user_function(obj, self.label)
        return self._fn


def _short(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _literal(node, constants: dict[str, Any]):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # A + (B,): tuples built from constants
        a, b = _literal(node.left, constants), _literal(node.right, constants)
        if isinstance(a, tuple) and isinstance(b, tuple):
            return a + b
    return _UNKNOWN


def _static_signature(node: ast.FunctionDef, constants: dict[str, Any]) -> Signature:
    a = node.args
    pos = a.posonlyargs + a.args
    pos_defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    params, required, defaults = [], [], {}
    for arg, d in list(zip(pos, pos_defaults))[len(a.posonlyargs):] + list(zip(a.kwonlyargs, a.kw_defaults)):
        params.append(arg.arg)
        if d is None:
            required.append(arg.arg)
        else:
            value = _literal(d, constants)
            if value is not _UNKNOWN:
                defaults[arg.arg] = value
    text = "(" + ", ".join(params + (["**" + a.kwarg.arg] if a.kwarg else [])) + ")"
    return Signature(tuple(params), tuple(required), a.kwarg is not None, defaults, text)


def _module_bindings(tree: ast.Module):
    """Top-level names of a module: {name: [binding nodes]}, whether it star-imports, whether it has a
    module ``__getattr__``, and the literal constants assigned at top level."""
    bound: dict[str, list] = {}
    constants: dict[str, Any] = {}
    star = False

    def bind(name, node):
        bound.setdefault(name, []).append(node)

    def targets(t, node):
        if isinstance(t, ast.Name):
            bind(t.id, node)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e, node)
        elif isinstance(t, ast.Starred):
            targets(t.value, node)

    def visit(body):
        nonlocal star
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bind(node.name, node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name == "*":
                        star = True
                    else:
                        bind(alias.asname or alias.name.split(".")[0], node)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    targets(t, node)
                if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = _literal(node.value, constants)
                    if value is not _UNKNOWN:
                        constants[node.targets[0].id] = value
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets(node.target, node)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets(node.target, node)
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars, node)
                visit(node.body)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
                visit(node.body)
                for h in node.handlers:
                    if h.name:
                        bind(h.name, h)
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Match):
                bind("*match*", node)  # names bound by patterns: give up on static look-up
                star = True
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                              ast.ClassDef)) else ():
                if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                    bind(sub.target.id, sub)
                elif isinstance(sub, ast.Global):
                    star = True  # a function may bind module names: cannot say "missing"

    visit(tree.body)
    return bound, star, constants


def locate(text, option: str, what: str) -> Target:
    """Find ``module:function`` without importing the module (see the module docstring). Raises a usage error
    for a malformed string, a module that is not on the path, or a function the module's source does not
    define; leaves ``signature`` None where only an import can tell."""
    if not isinstance(text, str) or not TARGET_PATTERN.match(text):
        raise UsageError(f"{option}: expected MODULE:FUNCTION building {what} (e.g. mypkg.port:build). "
                         f"Received: {text!r}.")
    module, _, attr = text.partition(":")
    target = Target(text, option, what, module, attr)
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    except ImportError as exc:
        raise UsageError(f"{target.label}: expected an importable MODULE:FUNCTION building {what}. Received: "
                         f"{type(exc).__name__}: {exc}.") from None
    except Exception as exc:  # a parent package's __init__ raised
        raise UserCodeError(f"{target.label}: importing the package of {module}", exc) from exc
    if found is None:
        raise UsageError(f"{target.label}: expected an importable MODULE:FUNCTION building {what}. Received: "
                         f"no module named {module!r} on the path (working directory {os.getcwd()}). Run from the "
                         "directory that holds it, or install it.")
    origin = found.origin if found.has_location else None
    if not origin or not origin.endswith(".py"):
        return target
    try:
        if os.path.getsize(origin) > MAX_SOURCE_BYTES:
            return target
        with open(origin, "rb") as f:
            source = f.read()
        tree = ast.parse(source, filename=origin)
    except (OSError, SyntaxError, ValueError, MemoryError, RecursionError):
        return target  # the import will report it
    bound, star, constants = _module_bindings(tree)
    first = attr.split(".")[0]
    nodes = bound.get(first)
    if not nodes:
        if star or "__getattr__" in bound or any(w in source for w in DYNAMIC_BINDING):
            return target  # names bound at run time: only the import can tell
        defined = sorted(n for n, b in bound.items() if any(isinstance(x, (ast.FunctionDef, ast.ClassDef))
                                                             for x in b) and not n.startswith("_"))
        hint = f" It defines: {', '.join(defined[:12])}{' ...' if len(defined) > 12 else ''}." if defined else ""
        raise UsageError(f"{target.label}: expected an importable MODULE:FUNCTION building {what}. Received: "
                         f"no name {first!r} in {origin}.{hint}")
    if len(nodes) == 1 and "." not in attr and isinstance(nodes[0], (ast.FunctionDef, ast.AsyncFunctionDef)) \
            and not nodes[0].decorator_list:
        target.signature = _static_signature(nodes[0], constants)
    return target


def locate_module(name, option: str, what: str) -> str:
    """A module the user named (``--custom-objects MOD``), found on the path without importing it."""
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", name):
        raise UsageError(f"{option}: expected a module name (e.g. mypkg.layers) holding {what}. Received: {name!r}.")
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    except Exception as exc:  # a parent package's __init__ raised
        raise UserCodeError(f"{option} {name}: importing its package", exc) from exc
    if found is None:
        raise UsageError(f"{option} {name}: expected an importable module holding {what}. Received: no module "
                         f"named {name!r} on the path (working directory {os.getcwd()}). Run from the directory "
                         "that holds it, or install it.")
    return name


def check_accepts(target: Target, config: dict[str, Any], *, user_keys=()) -> None:
    """The builder takes ``config`` as keyword arguments: every key a parameter (or ``**kwargs``), every
    required parameter given. ``user_keys``: the keys the user passed with ``--config`` (named in the error)."""
    sig = target.signature
    if sig is None:
        return
    unknown = [k for k in config if k not in sig.params] if not sig.var_keyword else []
    for k in unknown:
        if k in user_keys:
            raise UsageError(f"--config {k}: expected one of the arguments of {target.text} "
                             f"({', '.join(sig.params) or 'none'}). Received: {k!r}.")
    if unknown:
        raise UsageError(f"{target.label}: expected a builder taking the pair's config ({', '.join(config)}) as "
                         f"keyword arguments. Received: a callable with signature {sig.text}. Accept those "
                         "arguments (or **kwargs).")
    missing = [k for k in sig.required if k not in config]
    if missing:
        raise UsageError(f"{target.label}: expected a value for its required argument "
                         f"{', '.join(missing)}. Received: none. Pass --config {missing[0]}=VALUE or give it a "
                         "default.")


def resolve_user(target, option: str, what: str) -> Callable:
    """A user's builder, given as ``module:function`` or a callable, ready to call: exceptions it raises become
    :class:`parity.core.errors.UserCodeError` naming ``option``."""
    if callable(target):
        return user_function(target, f"{option} {getattr(target, '__qualname__', repr(target))}".strip())
    return locate(target, option, what).load()


# -- files ---------------------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_input_file(path, option: str, what: str = "file") -> str:
    """An existing, readable, non-empty regular file (a named pipe would block the reader forever)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: expected a {what}. Received: no such file.") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: expected a readable {what}. Received: {exc.strerror}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{option} {path}: expected a regular {what}. Received: {_kind(st.st_mode)}.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path}: expected a readable {what}. Received: no read permission.")
    if st.st_size == 0:
        raise UsageError(f"{option} {path}: expected a {what}. Received: an empty file.")
    return path


def _writable_ancestor(path: str, option: str, shown: str) -> None:
    parent = os.path.abspath(path)
    while True:
        parent = os.path.dirname(parent)
        if os.path.exists(parent) or parent == os.path.dirname(parent):
            break
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {shown}: expected a path under a directory. Received: {parent} is a file.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {shown}: expected a writable location. Received: {parent} is not writable.")


def check_output_dir(path, option: str = "--out") -> str:
    """A directory to write reports into: absent (created later) or an existing directory, under a writable one."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        try:
            kind = "an existing file" if stat.S_ISREG(os.stat(path).st_mode) else _kind(os.stat(path).st_mode)
        except OSError:
            kind = "something that is not a directory"
        raise UsageError(f"{option} {path}: expected a directory for the reports. Received: {kind}. "
                         "Pass a directory path, e.g. --out parity-report/{pair}/{run_id}.")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: expected a writable directory. Received: no write permission.")
        return path
    _writable_ancestor(path, option, path)
    return path


def check_output_file(path, option: str, suffixes: tuple[str, ...], what: str) -> str:
    """A file to write: not a directory, one of ``suffixes``, under a writable directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: expected a {what} file path ({' or '.join(suffixes)}). "
                         "Received: a directory.")
    if not path.endswith(suffixes):
        raise UsageError(f"{option} {path}: expected a {what} file ending in {' or '.join(suffixes)}. "
                         f"Received: {os.path.basename(path) or path!r}.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(f"{option} {path}: expected a regular file path. Received: {_kind(os.stat(path).st_mode)}.")
    _writable_ancestor(path, option, path)
    return path


def expand_out(template: str, **values: str) -> str:
    """``--out`` with its fields filled in: ``{pair}``, ``{run_id}``, ``{timestamp}`` (:data:`OUT_FIELDS`)."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"--out {template}: expected a path with optional fields "
                         f"{', '.join('{' + f + '}' for f in OUT_FIELDS)}. Received: {exc}. "
                         "Write a literal brace as {{ or }}.") from None
    bad = [f for f in fields if f not in OUT_FIELDS]
    if bad:
        raise UsageError(f"--out {template}: expected fields among {', '.join('{' + f + '}' for f in OUT_FIELDS)}. "
                         f"Received: {{{bad[0]}}}.")
    return template.format(**{k: values.get(k, "") for k in OUT_FIELDS})
