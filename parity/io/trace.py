"""Reference traces: ``parity record`` runs the Keras side once and stores the whole
:class:`parity.backends.keras_side.ReferenceRun` in one safetensors file; ``parity replay`` checks a port against
it with PyTorch alone (a GPU box, a CI job without TensorFlow).

The file format (``parity.io.trace/1``):

- every numpy array of the run is a safetensors tensor under a path-like key: ``inputs/0``,
  ``eval_acts/<tap path>``, ``eval_inputs/<tap path>/0``, ``weights/<layer>/<var>``,
  ``param_grads/<layer>/<var>``, ``steps/0/params/<layer>/<var>``, ``steps/0/slots/<torch key>/<slot>``...
  An array equal (dtype, shape, bytes) to one stored earlier is stored once: the JSON refers to the first key
  (a layer's input is usually the previous layer's output);
- everything else is JSON in the safetensors metadata (``str -> str``): ``parity.io.trace`` holds the run with
  each array replaced by ``{"__array__": key}``, plus ``meta`` (pair, config, dtype, seed, batch, steps,
  optimizer, recorded stages, versions, conventions, the port builder's name as information), the taps and the
  parameter refs.

A trace is untrusted input, like a weights file (it travels between machines): it may only *name* a pair. A
registered pair is taken from the registry by that name; the port of your own models comes from ``--port`` (or
the Python call), never from the file; the config is checked against the builder's signature (JSON scalars and
lists of the parameter's type, no unknown keys) and the run settings as data (:func:`validated_config`). The
JSON's nesting is bounded before it is parsed (:data:`MAX_TRACE_JSON_DEPTH`), only regular files are opened.

No pickle anywhere: safetensors holds raw little-endian buffers and a JSON header. ``parity record`` writes
that layout itself, one array at a time from the run's spill directory (:func:`write_trace`; the safetensors
package only writes from a dict held in memory), and this module reads it with ``safetensors.numpy.load_file``
and ``safe_open``; a trace of :data:`LAZY_TRACE_MIN_BYTES` or more is read lazily, array by array. The replay path imports neither
TensorFlow nor Keras (``tests/parity/test_trace.py`` runs it with both imports blocked).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import platform
import re
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from parity.backends.keras_side import ReferenceRun, run_reference
from parity.backends.weights import load_weight_file
from parity.core.atomic import atomic_output, check_output_path
from parity.core.errors import UsageError
from parity.core.options import ALL_STAGES, optimizer_spec, parse_stages, resolve_user
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap, resolve
from parity.core.spill import SPILL_MIN_BYTES, SpillDict, Spilled, SpillStore
from parity.harness import _user_training, check
from parity.optim.adapters import ParamRef
from parity.optim.user import apply_user_training
from parity.pairs import registry
from parity.user.pair import UserTaps
from parity.user.stored import replay_port_builder, view_to_data

SCHEMA = "parity.io.trace/1"
#: safetensors metadata keys
META_KEY = "parity.io.trace"
SCHEMA_KEY = "schema"
ARRAY_REF = "__array__"


#: a trace file at least this large is read lazily by ``load_trace``: arrays of ``SPILL_MIN_BYTES`` or more are
#: read from the file when a stage compares them, one at a time (an Xception or GOTURN trace holds several
#: GB of float64 activations or weights); smaller traces are read whole
LAZY_TRACE_MIN_BYTES = 256 << 20
#: deepest nesting of the JSON a trace may hold (a recorded run nests about 6 levels: steps/0/slots/key/slot);
#: deeper JSON is refused before it is parsed, so no reader recurses on a hostile file
MAX_TRACE_JSON_DEPTH = 64
#: config values a trace may carry: JSON scalars and (nested) lists of them; never objects, never code
CONFIG_SCALARS = (str, int, float, bool, type(None))

#: numpy dtype -> safetensors dtype name (the header's "dtype" field)
ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
             "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}


# -- packing: nested dicts/lists of arrays <-> (tensors, JSON) ----------------------------------------------
def _pack(obj, key: str, tensors: dict, seen: dict) -> Any:
    """``obj`` as JSON with each array replaced by ``{"__array__": key}``; ``tensors[key]`` gets the array, or
    its :class:`parity.core.spill.Spilled` handle (not loaded: a spilled run is written one array at a time).
    Equal arrays are stored once: in-memory ones by content, spilled ones by the digest their store computed
    (``parity record``) or else by handle (a layer's input is the previous layer's output)."""
    if isinstance(obj, Spilled):
        ident = (obj.dtype.str, tuple(obj.shape), obj.digest) if obj.digest is not None else ("handle", id(obj))
        if ident in seen:
            return {ARRAY_REF: seen[ident]}
        if obj.dtype == object:
            raise TypeError(f"trace: {key}: expected a numeric array. Received: dtype object.")
        seen[ident] = key
        tensors[key] = obj
        return {ARRAY_REF: key}
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj) if obj.ndim else obj
        if a.dtype == object:
            raise TypeError(f"trace: {key}: expected a numeric array. Received: dtype object.")
        digest = (a.dtype.str, tuple(a.shape),
                  hashlib.blake2b(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).digest())
        if digest in seen:
            return {ARRAY_REF: seen[digest]}
        seen[digest] = key
        tensors[key] = a
        return {ARRAY_REF: key}
    if isinstance(obj, np.generic):  # numpy scalar
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"trace: {key}: expected string keys. Received: {k!r}.")
            v = obj.handle(k) if hasattr(obj, "handle") else obj[k]  # a SpillDict's handle, not a load
            out[k] = _pack(v, f"{key}/{k}" if key else k, tensors, seen)
        return out
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{key}/{i}" if key else str(i), tensors, seen) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _unpack(obj, tensors, lazy: bool = False) -> Any:
    """The inverse of :func:`_pack`. ``lazy``: dicts become :class:`parity.core.spill.SpillDict` views whose large
    arrays are :class:`TraceArray` handles, read from the file when accessed."""
    if isinstance(obj, dict):
        if set(obj) == {ARRAY_REF}:
            return tensors[obj[ARRAY_REF]]
        if lazy:
            return SpillDict.from_handles(None, {k: _unpack(v, tensors, lazy) for k, v in obj.items()})
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors, lazy) for v in obj]
    return obj


class TraceArray(Spilled):
    """One array of a lazily read trace: a :class:`parity.core.spill.Spilled` whose file is the trace, read with
    plain file I/O at its offset (not a memory map, whose pages would stay resident while the replay runs)."""

    __slots__ = ("offset",)

    def __init__(self, path: str, offset: int, shape, dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.digest = None

    def load(self) -> np.ndarray:
        n = int(np.prod(self.shape, dtype=np.int64))
        a = np.fromfile(self.path, dtype=self.dtype.newbyteorder("<"), count=n, offset=self.offset)
        if a.size != n:
            raise UsageError(f"trace {self.path}: expected {n} values at byte {self.offset}. Received: "
                             f"{a.size} (the file was truncated or replaced). Record it again.")
        return a.astype(self.dtype, copy=False).reshape(self.shape)


def write_trace(path: str, run, *, extra_meta: dict | None = None) -> int:
    """Write ``run`` as a safetensors file one array at a time (a spilled run is never loaded whole;
    ``safetensors.numpy.save_file`` needs every array in memory, and builds the file's bytes at once). The
    layout is safetensors': an 8-byte little-endian header length, the JSON header (``dtype``, ``shape``,
    ``data_offsets`` per tensor, ``__metadata__``), padded with spaces to 8 bytes, then the buffers in
    offset order. Written atomically (:mod:`parity.core.atomic`: a temporary file in the same directory, fsync,
    rename; removed on any failure). Returns the number of arrays."""
    tensors, metadata = _plan(run, extra_meta)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, src in tensors.items():
        dt = np.dtype(src.dtype)
        if dt.name not in ST_DTYPES:
            raise TypeError(f"trace: {key}: expected one of {', '.join(ST_DTYPES)}. Received: dtype {dt}.")
        nbytes = int(np.prod(src.shape, dtype=np.int64)) * dt.itemsize
        header[key] = {"dtype": ST_DTYPES[dt.name], "shape": [int(d) for d in src.shape],
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_output(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for key, src in tensors.items():
            a = src.load() if hasattr(src, "load") else src
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            f.write(memoryview(a.reshape(-1)).cast("B"))
            del a
    return len(tensors)


def _tap_dict(t: Tap) -> dict:
    d = dataclasses.asdict(t)
    d["flatten_chw"] = list(t.flatten_chw) if t.flatten_chw is not None else None
    return d


def _tap_from(d: dict) -> Tap:
    d = dict(d)
    d["flatten_chw"] = tuple(d["flatten_chw"]) if d.get("flatten_chw") is not None else None
    return Tap(**d)


def optimizer_to_dict(opt: OptimizerSpec) -> dict:
    """The base :class:`OptimizerSpec` fields as data (a user optimizer's factory is code: never stored; its
    compiled Keras configuration travels in the trace's ``training`` entry instead)."""
    d = {f.name: getattr(opt, f.name) for f in dataclasses.fields(OptimizerSpec)}
    d["l2"], d["lr_mult"], d["decay_mult"] = dict(opt.l2), dict(opt.lr_mult), dict(opt.decay_mult)
    d["lr_schedule"] = list(opt.lr_schedule)
    return d


def optimizer_from_dict(d: dict) -> OptimizerSpec:
    names = {f.name for f in dataclasses.fields(OptimizerSpec)}
    d = {k: v for k, v in d.items() if k in names}
    d["lr_schedule"] = tuple(d.get("lr_schedule") or ())
    return OptimizerSpec(**d)


# -- record ---------------------------------------------------------------------------------------------------
def _builder_string(target) -> str | None:
    """A ``module:function`` string for a builder (what replay needs to rebuild the port), if there is one."""
    if isinstance(target, str):
        return target
    mod, name = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if mod and name and "<" not in name and mod != "__main__":
        return f"{mod}:{name}"
    return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()}
    for mod in ("tensorflow", "keras", "torch", "h5py"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    try:
        from importlib.metadata import version

        out["parity"] = version("parity")
        out["safetensors"] = version("safetensors")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        pass
    return out


def run_to_trace(run, *, extra_meta: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A :class:`ReferenceRun` as (safetensors tensors, safetensors metadata), every array in memory."""
    tensors, metadata = _plan(run, extra_meta)
    return {k: (v.load() if hasattr(v, "load") else v) for k, v in tensors.items()}, metadata


def _plan(run, extra_meta: dict | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(key -> array or spilled handle, safetensors metadata) of a :class:`ReferenceRun`."""
    tensors: dict[str, Any] = {}
    seen: dict = {}
    meta = dict(run.meta)
    meta.update(extra_meta or {})
    body = {
        "meta": _pack(meta, "meta", tensors, seen),
        "taps": [_tap_dict(t) for t in run.taps],
        "param_refs": [{"key": r.key, "layer": r.layer, "var": r.var, "kind": r.kind} for r in run.param_refs],
        "structure": _pack(run.structure, "structure", tensors, seen),
        "model_params": dict(run.model_params),
        "l2": {k: float(v) for k, v in run.l2.items()},
        "bn_n": {k: int(v) for k, v in run.bn_n.items()},
        "loss": None if run.loss is None else float(run.loss),
        "seconds": {k: float(v) for k, v in run.seconds.items()},
    }
    for name in ("inputs", "labels", "weights", "eval_acts", "eval_inputs", "train_acts", "bn_stats", "act_grads",
                 "param_grads", "steps"):
        body[name] = _pack(getattr(run, name), name, tensors, seen)
    metadata = {SCHEMA_KEY: SCHEMA, META_KEY: json.dumps(body, allow_nan=True)}
    return tensors, metadata


def record(spec: PairSpec, path: str, *, stages=None, dtype: str = "float64", batch: int | None = None,
           seed: int = 0, optimizer=None, steps: int = 1, weights: str | None = None, config: dict | None = None,
           reference=None, port=None, progress: Callable[[str], None] | None = None, port_optimizer=None,
           port_loss=None) -> tuple[str, str]:
    """Run the reference side only and store the run at ``path`` (safetensors). Returns (path, summary line).

    ``port``: the port builder ``module:function`` of your own models, stored in the trace as information only:
    ``replay`` never runs a builder a trace names (it needs ``--port``); a registered pair is found by name.

    ``port_optimizer`` / ``port_loss`` (your own models, as for ``parity check``): the reference trains with its
    ``model.compile(...)`` configuration, which the trace stores as plain data (``training``: the serialised
    Keras optimizer, the loss as :class:`LossSpec` fields, the two options' labels); ``replay`` then needs the
    same two options and compares your real training step. The functions are located here, never stored."""
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    if reference is not None:
        spec = dataclasses.replace(spec, reference=reference)
    if dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype: expected float32 or float64. Received: {dtype!r}.")
    if steps < 1:
        raise UsageError(f"--steps: expected an integer >= 1. Received: {steps}.")
    stage_list = parse_stages(stages) if isinstance(stages, (str, type(None))) else tuple(stages)
    stage_set = set(stage_list)
    cfg = spec.config(**(config or {}))
    batch = batch or spec.default_batch
    if batch < 2 and stage_set & {"forward_train", "gradients", "step"}:
        raise UsageError(f"--batch: expected >= 2 for train-mode stages (BatchNorm needs a batch). Received: {batch}.")
    training = None
    if port_optimizer is not None or port_loss is not None:
        spec, training = _recorded_user_training(spec, cfg, dtype, port_optimizer, port_loss)
    opt = optimizer_spec(spec, optimizer)
    check_output_path(path, "--output")
    port_builder = port if isinstance(port, str) else _builder_string(port if port is not None else spec.port)

    wfile = None
    if weights is not None:
        wfile = (lambda expected: load_weight_file(spec, weights, expected))
    # the run waits on disk, and is written to the trace one array at a time; digests: equal arrays once
    store = SpillStore(digests=True, background=True)
    try:
        run = run_reference(spec, config=cfg, dtype=dtype, seed=seed, batch=batch, optimizer=opt, steps=steps,
                            stages=stage_set, weights_file=wfile, progress=say, spill=store)
        say(f"record: write {path}")
        n_arrays = _write_recorded(path, run, spec, stage_list, opt, port_builder, weights, training)
    finally:
        store.close()
    size = os.path.getsize(path)
    secs = time.perf_counter() - t0
    summary = (f"PASSED record {spec.name} [{dtype}, batch {batch}, {len(stage_list)} stages]: {n_arrays} arrays, "
               f"{size / 1e6:.1f} MB -> {path} ({secs:.1f} s)")
    return path, summary


def _recorded_user_training(spec: PairSpec, cfg: dict, dtype: str, port_optimizer, port_loss):
    """``spec`` trained as ``parity check --port-optimizer/--port-loss`` trains it (the reference with its
    compiled configuration), and that configuration as plain data for the trace."""
    if _is_registered(spec):
        raise UsageError("--port-optimizer/--port-loss: expected only with your own models (--reference MOD:FN "
                         f"--port MOD:FN). Received: them with the registered pair {spec.name!r}. Drop them.")
    spec = _user_training(spec, False, cfg, dtype, port_optimizer, port_loss)
    labels = {"port_optimizer": port_optimizer, "port_loss": port_loss}
    return spec, {
        "keras_optimizer": getattr(spec.optimizer, "keras_config", None) or None,
        "loss": loss_to_data(spec.loss),
        **{k: (v if isinstance(v, str) else _builder_string(v) or getattr(v, "__qualname__", "given")) if v is not None
           else None for k, v in labels.items()},
    }


#: :class:`LossSpec` fields a trace stores, and what each may hold when read back
_LOSS_FIELDS = {"name": ("categorical_crossentropy", "mse", "l1_sum", "multi"), "reduction": ("mean", "sum"),
                "reference_from_logits": bool, "label_smoothing": float, "port_probabilities": bool}
#: fields a trace recorded before they existed may lack (read as the :class:`LossSpec` default)
_LOSS_FIELDS_OPTIONAL = ("port_probabilities",)


def loss_to_data(loss: LossSpec) -> dict:
    """A :class:`LossSpec` as plain data (its fields; a multi-output loss's parts too)."""
    d = {k: getattr(loss, k) for k in _LOSS_FIELDS}
    parts = getattr(loss, "parts", ())
    if parts:
        d["parts"] = [{"loss": loss_to_data(p), "width": int(w), "weight": float(wt), "name": str(n)}
                      for p, w, wt, n in parts]
    return d


def loss_from_data(d, where: str, depth: int = 0) -> LossSpec:
    """The inverse of :func:`loss_to_data`, every field checked as data (a trace is untrusted input)."""
    def bad(what):
        return UsageError(f"{where}: expected the recorded loss {what}. Received: {str(d)[:80]!r}. Record the "
                          "trace again.")

    if not isinstance(d, dict):
        raise bad("as an object")
    kw = {}
    for key, allowed in _LOSS_FIELDS.items():
        if key in _LOSS_FIELDS_OPTIONAL and key not in d:
            continue
        v = d.get(key)
        if isinstance(allowed, tuple):
            if v not in allowed:
                raise bad(f"{key} among {', '.join(allowed)}")
        elif allowed is bool:
            if not isinstance(v, bool):
                raise bad(f"{key} as true/false")
        elif not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0):
            raise bad(f"{key} as a number in [0, 1)")
        kw[key] = v
    parts = d.get("parts")
    if parts is not None:
        if depth or not isinstance(parts, list) or not 2 <= len(parts) <= 64 or not all(
                isinstance(p, dict) and _is_count(p.get("width")) and isinstance(p.get("name"), str)
                and isinstance(p.get("weight"), (int, float)) and not isinstance(p.get("weight"), bool)
                and np.isfinite(p["weight"]) for p in parts):
            raise bad("parts as 2-64 objects with a loss, a width, a weight and a name")
        kw["parts"] = tuple((loss_from_data(p["loss"], where, depth + 1), int(p["width"]), float(p["weight"]),
                             p["name"][:200]) for p in parts)
    return LossSpec(**kw)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 24


#: hyper-parameters of a recorded Keras optimizer that the port side reads as numbers
_OPTIMIZER_NUMBERS = ("momentum", "beta_1", "beta_2", "epsilon", "weight_decay", "clipnorm", "clipvalue",
                      "global_clipnorm", "rho")


def _plain_data(value, depth: int = 0) -> bool:
    """JSON data only: finite scalars, and lists / string-keyed objects of them, shallowly nested."""
    if isinstance(value, dict):
        return depth < 4 and all(isinstance(k, str) and _plain_data(v, depth + 1) for k, v in value.items())
    return _plain(value, depth)


def keras_optimizer_from_data(cfg, where: str) -> dict:
    """A recorded compiled optimizer (``keras.optimizers.serialize``'s dict), checked as data: a class name, a
    config of JSON values, numbers where the port side reads numbers. Never deserialised here (replay has no
    Keras): only the numbers are read, to compare your optimizer with it."""
    ok = (isinstance(cfg, dict) and isinstance(cfg.get("class_name"), str)
          and re.fullmatch(r"[A-Za-z_]\w{0,63}", cfg["class_name"]) is not None
          and isinstance(cfg.get("config"), dict) and _plain_data(cfg))
    if ok:
        c = cfg["config"]
        lr = c.get("learning_rate")
        ok = (all(c.get(k) is None or (isinstance(c[k], (int, float)) and not isinstance(c[k], bool))
                  for k in _OPTIMIZER_NUMBERS)
              and (isinstance(lr, dict) or (isinstance(lr, (int, float)) and not isinstance(lr, bool)))
              and isinstance(c.get("nesterov", False), bool))
    if not ok:
        raise UsageError(f"{where}: expected the recorded Keras optimizer as data (class_name, config of numbers). "
                         f"Received: {str(cfg)[:80]!r}. Record the trace again.")
    return cfg


def _write_recorded(path, run, spec, stage_list, opt, port_builder, weights, training=None) -> int:
    extra = {
        "stages": list(stage_list),
        "optimizer": optimizer_to_dict(opt),
        "port": port_builder,
        "registered": _is_registered(spec),
        "summary": spec.summary,
        "conventions": [dataclasses.asdict(c) for c in spec.conventions],
        # the whole loss as data: a user pair's several outputs (parts) and a port returning probabilities
        # (port_probabilities, set by the alignment) train on replay as they trained in the live check
        "loss_spec": loss_to_data(spec.loss),
        "weights_file": os.path.abspath(weights) if weights else None,
        "versions": _versions(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema": SCHEMA,
    }
    if training is not None:
        extra["training"] = training
    if isinstance(spec.taps, UserTaps):
        # your own models: the port as the alignment saw it (module groups, aliases, packed inputs, outputs) as
        # data, so that replay sees it the same way without the Keras model
        extra["port_view"] = view_to_data(spec.taps)
    return write_trace(path, run, extra_meta=extra)


def _is_registered(spec: PairSpec) -> bool:
    try:
        return registry.get(spec.name) is spec or registry.get(spec.name).port == spec.port
    except KeyError:
        return False


# -- reading an untrusted file ----------------------------------------------------------------------------------
def _bad_trace(path: str, received: str, todo: str = "Record it again with `parity record`.") -> UsageError:
    return UsageError(f"replay {path}: expected a trace file written by `parity record`. Received: {received}. {todo}")


def _check_regular_file(path: str) -> int:
    """The size of ``path`` if it is a regular file; a named pipe, a device or a directory is refused at once
    (opening a pipe for reading would wait for a writer forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _bad_trace(path, "no such file", "Check the path.") from None
    except OSError as exc:
        raise _bad_trace(path, f"a path that cannot be read ({exc.strerror})", "Check the path.") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                else "a device or socket, not a regular file")
        raise _bad_trace(path, kind, "Pass the .safetensors file `parity record -o` wrote.")
    return st.st_size


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON ``text``, counted without parsing (strings removed first), so a
    hostile document cannot make a recursive parser overflow the stack."""
    bare = _JSON_STRING.sub("", text).encode("utf-8", "replace")
    if not bare:
        return 0
    b = np.frombuffer(bare, dtype=np.uint8)
    step = (np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(step).max(initial=0))


def _json_loads_bounded(path: str, text: str, what: str):
    depth = json_depth(text)
    if depth > MAX_TRACE_JSON_DEPTH:
        raise _bad_trace(path, f"{what} nested {depth} levels deep (at most {MAX_TRACE_JSON_DEPTH})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad_trace(path, f"{what} that is not valid JSON ({_one_line(exc)})") from None


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# -- load / replay ---------------------------------------------------------------------------------------------
def load_trace(path: str, lazy: bool | None = None):
    """Read a trace: the :class:`ReferenceRun` (``meta["trace_path"]`` set) and the raw JSON body.
    A missing, foreign or hostile file is a :class:`parity.core.errors.UsageError` (one line): only regular files
    are opened, the JSON's nesting is bounded (:data:`MAX_TRACE_JSON_DEPTH`) before it is parsed, and every
    array is read by safetensors, whose header bounds each tensor by the file's size. Nothing in the file is
    imported or called. ``lazy`` (default: files of :data:`LAZY_TRACE_MIN_BYTES` or more) keeps the file open
    and reads each large array when it is compared."""
    size = _check_regular_file(path)
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise UsageError(f"replay {path}: expected a safetensors trace written by `parity record`. Received: "
                         f"a file that does not read as one ({type(exc).__name__}: {_one_line(exc)}). "
                         "Record it again.") from None
    if metadata.get(SCHEMA_KEY) != SCHEMA or META_KEY not in metadata:
        raise UsageError(f"replay {path}: expected a parity trace ({SCHEMA}). Received: a safetensors file "
                         f"with schema {_short_repr(metadata.get(SCHEMA_KEY))}. Record one with `parity record`.")
    body = _json_loads_bounded(path, metadata[META_KEY], "metadata")
    if not isinstance(body, dict):
        raise _bad_trace(path, f"metadata holding a JSON {type(body).__name__}, not an object")
    if lazy is None:
        lazy = size >= LAZY_TRACE_MIN_BYTES
    try:
        tensors = _lazy_tensors(path) if lazy else load_file(path)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"replay {path}: expected a safetensors trace written by `parity record`. Received: "
                         f"a file that does not read as one ({type(exc).__name__}: {_one_line(exc)}). "
                         "Record it again.") from None
    try:
        meta = _unpack(body["meta"], tensors)
        if not isinstance(meta, dict):
            raise TypeError("meta")
        meta["trace_path"] = path

        def now(name):  # fields read whole (inputs, labels: one batch each)
            return [a.load() if hasattr(a, "load") else a for a in _unpack(body[name], tensors)]

        def view(name):
            return _unpack(body[name], tensors, lazy)

        run = ReferenceRun(
            meta=meta, taps=[_tap_from(t) for t in body["taps"]],
            inputs=now("inputs"), labels=now("labels"),
            weights=view("weights"), structure=_unpack(body["structure"], tensors),
            model_params=body["model_params"], l2=body["l2"],
            param_refs=[ParamRef(r["key"], r["layer"], r["var"], r["kind"]) for r in body["param_refs"]],
            eval_acts=view("eval_acts"), eval_inputs=view("eval_inputs"),
            train_acts=view("train_acts"), bn_stats=view("bn_stats"),
            bn_n=body["bn_n"], loss=body["loss"], act_grads=view("act_grads"),
            param_grads=view("param_grads"), steps=view("steps"),
            seconds=body["seconds"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"replay {path}: expected a complete {SCHEMA} trace. Received: missing or malformed "
                         f"entry {_one_line(exc)}. Record it again with this version of parity.") from None
    return run, body


def _lazy_tensors(path: str) -> dict[str, Any]:
    """key -> array (small, read now) or :class:`TraceArray` (large, read on access) of a safetensors file
    that ``safe_open`` has already accepted, from its JSON header (dtype, shape, data offsets)."""
    names = {v: k for k, v in ST_DTYPES.items()}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = _json_loads_bounded(path, f.read(n).decode("utf-8"), "a safetensors header")
    base = 8 + n
    out: dict[str, Any] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, _ = info["data_offsets"]
        h = TraceArray(path, base + int(begin), info["shape"], names[info["dtype"]])
        out[key] = h if h.nbytes >= SPILL_MIN_BYTES else h.load()
    return out


# -- what a trace may say -----------------------------------------------------------------------------------------
def _plain(value, depth: int = 0) -> bool:
    """A JSON scalar or a (nested, shallow) list of them: the only config values a trace may carry."""
    if isinstance(value, CONFIG_SCALARS):
        return not (isinstance(value, float) and not np.isfinite(value))
    return isinstance(value, list) and depth < 4 and all(_plain(v, depth + 1) for v in value)


def _type_ok(value, like) -> bool:
    """``value`` (from a file) has the type of ``like`` (the builder's default / the pair's default config)."""
    if like is None:
        return True
    if isinstance(like, bool):
        return isinstance(value, bool)
    if isinstance(like, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(like, str):
        return isinstance(value, str)
    if isinstance(like, (list, tuple)):
        return isinstance(value, list)
    return False


def validated_config(config, builder: Callable, defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``config`` read from a file, checked against ``builder``'s signature: every key a named parameter (or,
    where the builder takes ``**kwargs``, a key of the pair's ``defaults``), every value a JSON scalar or list of
    the parameter's type (its default's, or the pair's default config's). Lists become tuples where the default
    is a tuple. Anything else is a :class:`UsageError`; nothing is called."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(f"{where}: expected the config as a JSON object. Received: {type(config).__name__}. "
                         "Record the trace again.")
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    out = {}
    for key, value in config.items():
        if key not in named and not (var_kw and key in defaults):
            allowed = sorted(set(named) | (set(defaults) if var_kw else set()))
            raise UsageError(f"{where}: expected config keys among the builder's parameters "
                             f"({', '.join(allowed) or 'none'}). Received: {str(key)[:80]!r}. Record the trace again "
                             "with this pair.")
        like = defaults.get(key)
        if like is None and key in named and named[key].default is not inspect.Parameter.empty:
            like = named[key].default
        if not _plain(value) or not _type_ok(value, like):
            raise UsageError(f"{where}: expected config {key!r} to be a {type(like).__name__ if like is not None else 'JSON scalar'}"
                             f". Received: {str(value)[:80]!r} ({type(value).__name__}). Record the trace again.")
        out[key] = tuple(value) if isinstance(like, tuple) and isinstance(value, list) else value
    return out


def _validated_meta(meta: dict, path: str) -> None:
    """The run settings a trace carries, checked as data (types and ranges) before anything uses them."""
    where = f"replay {path}"

    def need(key, ok, expected):
        if key not in meta or not ok(meta[key]):
            got = str(meta.get(key, "nothing"))[:80]
            raise UsageError(f"{where}: expected {key} {expected}. Received: {got!r}. Record the trace again.")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    need("pair", lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a pair name")
    need("dtype", lambda v: v in ("float32", "float64"), "float32 or float64")
    need("seed", lambda v: is_int(v) and 0 <= v < 2**63, "an integer >= 0")
    need("batch", lambda v: is_int(v) and 1 <= v <= 1 << 20, "an integer >= 1")
    need("steps", lambda v: is_int(v) and 1 <= v <= 1 << 20, "an integer >= 1")
    need("stages", lambda v: isinstance(v, list) and all(s in ALL_STAGES for s in v),
         f"a list among {', '.join(ALL_STAGES)}")
    need("optimizer", lambda v: isinstance(v, dict), "an object")
    fields = {f.name: f for f in dataclasses.fields(OptimizerSpec)}
    defaults = OptimizerSpec()
    for key, value in meta["optimizer"].items():
        if key not in fields:
            continue
        like = getattr(defaults, key)
        ok = (isinstance(value, dict) and all(isinstance(k, str) and _type_ok(v, 0.0) for k, v in value.items())
              if isinstance(like, dict) else _plain(value) and _type_ok(value, like)
              and (not isinstance(value, list) or all(_type_ok(v, 0.0) for v in value)))
        if not ok:
            raise UsageError(f"{where}: expected optimizer {key} of type {type(like).__name__}. Received: "
                             f"{str(value)[:80]!r}. Record the trace again.")
    for c in meta.get("conventions") or ():
        if not (isinstance(c, dict) and all(isinstance(v, str) for v in c.values())
                and set(c) <= {f.name for f in dataclasses.fields(Convention)}):
            raise UsageError(f"{where}: expected conventions as objects of strings. Received: {str(c)[:80]!r}. "
                             "Record the trace again.")


def spec_for_trace(run, port: str | Callable | None = None) -> PairSpec:
    """The pair a trace was recorded for. A trace only *names* a pair: a registered pair is taken from the
    registry by that name; for your own models the port builder comes from ``port`` (``--port`` or the Python
    call), never from the file, and the spec is rebuilt from the trace's data (taps, loss, optimizer,
    conventions)."""
    meta = run.meta
    path = meta.get("trace_path")
    name = meta["pair"]
    if meta.get("registered", True) is not False and name in registry.names():
        return registry.get(name)
    if not port:
        raise UsageError(f"replay {path}: expected --port MODULE:FUNCTION for pair {name[:80]!r}, which is not a "
                         f"registered pair. Received: no --port. Name your port builder: a trace never chooses the "
                         "code replay runs.")
    loss = meta.get("loss") or {}
    if meta.get("loss_spec") is not None:
        loss_spec = loss_from_data(meta["loss_spec"], f"replay {path}")
    else:  # a trace recorded before the whole loss was stored
        loss_spec = LossSpec(str(loss.get("name", "categorical_crossentropy")), str(loss.get("reduction", "mean")))
    opt = optimizer_from_dict(meta["optimizer"]) if meta.get("optimizer") else OptimizerSpec()
    taps = list(run.taps)
    shape = tuple(int(d) for d in (meta.get("input_shape") or ()))
    return PairSpec(name=name, summary=str(meta.get("summary", f"trace of {name}"))[:200], reference="<trace>",
                    port=port, taps=lambda c, t=taps: t, input_shape=lambda c, s=shape: s,
                    target=lambda c: ("unknown", 0),
                    loss=loss_spec, optimizer=opt,
                    conventions=tuple(Convention(**c) for c in meta.get("conventions") or ()),
                    default_config={}, default_batch=int(meta["batch"]))


def _resolve_port(port, where: str) -> Callable:
    """The port builder named on the command line (or passed as a callable) — never one read from a file."""
    if callable(port):
        return port
    if not isinstance(port, str) or not re.fullmatch(r"[\w.]+:[\w.]+", port):
        raise UsageError(f"--port: expected MODULE:FUNCTION. Received: {str(port)[:80]!r}.")
    try:
        return resolve(port)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--port {port}: expected an importable MODULE:FUNCTION. Received: "
                         f"{type(exc).__name__}: {_one_line(exc)}. Check the name and that its module is on "
                         "the path.") from None


def _replayed_user_training(spec: PairSpec, meta: dict, path: str, port_optimizer, port_loss):
    """The user's training step against the compiled configuration the trace recorded (``training``): the same
    ``--port-optimizer`` / ``--port-loss`` as at record time, each the function named on this command line (or
    passed), never one the file names. Returns the optimizer to check with, or None (the trace's own)."""
    training = meta.get("training")
    where = f"replay {path}"
    if training is None:
        if port_optimizer is not None or port_loss is not None:
            raise UsageError(f"{where}: expected a trace recorded with the reference's compiled training "
                             "configuration for --port-optimizer/--port-loss. Received: a trace trained with "
                             "parity's own. Record it with `parity record --reference MOD:FN --port MOD:FN "
                             "--port-optimizer MOD:FN --port-loss MOD:FN`.")
        return None
    if not isinstance(training, dict):
        raise _bad_trace(path, "a training entry that is not an object")
    recorded = {k: training.get(k) for k in ("port_optimizer", "port_loss")}
    given = {"port_optimizer": port_optimizer, "port_loss": port_loss}
    wrong = [k for k in given if (recorded[k] is None) != (given[k] is None)]
    if wrong:
        need = " ".join(f"--{k.replace('_', '-')} MOD:FN" for k in given if recorded[k] is not None)
        got = " ".join(f"--{k.replace('_', '-')}" for k in given if given[k] is not None) or "neither"
        raise UsageError(f"{where}: expected {need or 'no --port-optimizer/--port-loss'} (the reference's training "
                         f"step was recorded for them). Received: {got}. Pass your own functions, as recorded "
                         "with `parity record`.")
    spec.loss = loss_from_data(training.get("loss"), where)
    keras_cfg = training.get("keras_optimizer")
    if port_optimizer is not None:
        keras_cfg = keras_optimizer_from_data(keras_cfg, where)
    fns = {}
    for key, option, what in (("port_optimizer", "--port-optimizer", "a torch optimizer"),
                              ("port_loss", "--port-loss", "a loss(output, target)")):
        value = given[key]
        if value is None:
            continue
        fns[key] = ((resolve_user(value, option, what), f"{option} {value}") if isinstance(value, str)
                    else (value, f"{key}={getattr(value, '__qualname__', 'given')}"))
    opt, opt_label = fns.get("port_optimizer", (None, ""))
    loss, loss_label = fns.get("port_loss", (None, ""))
    apply_user_training(spec, keras_cfg, opt, loss, optimizer_label=opt_label, loss_label=loss_label)
    return spec.optimizer if opt is not None else None


def replay(trace_path: str, *, port: str | Callable | None = None, stages=None, device: str = "cpu",
           progress: Callable[[str], None] | None = None, port_optimizer: str | Callable | None = None,
           port_loss: str | Callable | None = None):
    """Check a port against a recorded trace (PyTorch only). ``port`` overrides a registered pair's port and is
    required for your own models (a trace names its pair but never the code replay runs); ``stages`` must be
    among the recorded ones (default: all recorded). ``port_optimizer`` / ``port_loss``: your training step
    against the compiled configuration ``parity record --port-optimizer/--port-loss`` stored as data (the same
    options as recorded). Returns the :class:`parity.core.results.CheckResult`."""
    say = progress or (lambda msg: None)
    say(f"replay: read {trace_path}")
    run, _ = load_trace(trace_path)
    meta = run.meta
    _validated_meta(meta, trace_path)
    recorded = tuple(meta["stages"])
    if not stages:
        wanted = recorded
    else:
        wanted = parse_stages(stages) if isinstance(stages, str) else tuple(stages)
    missing = [s for s in wanted if s not in recorded]
    if missing:
        raise UsageError(f"--stages: expected stages recorded in the trace ({', '.join(recorded)}). Received: "
                         f"{', '.join(missing)}. Record them with `parity record --stages ...`.")
    try:
        spec = spec_for_trace(run, port)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise _bad_trace(trace_path, f"a malformed pair description ({_one_line(exc)})") from None
    builder = _resolve_port(port if port is not None else spec.port, f"replay {trace_path}")
    if meta.get("registered", True) is False and meta.get("port_view") is not None:
        builder = replay_port_builder(builder, meta["port_view"], f"replay {trace_path}")
    meta["config"] = validated_config(meta.get("config"), builder, spec.default_config,
                                      f"replay {trace_path}: config")
    user_opt = _replayed_user_training(spec, meta, trace_path, port_optimizer, port_loss)
    opt = user_opt if user_opt is not None else optimizer_from_dict(meta["optimizer"])
    return check(spec, stages=wanted, dtype=meta["dtype"], device=device, batch=int(meta["batch"]),
                 seed=int(meta["seed"]), optimizer=opt, steps=int(meta["steps"]), config=None,
                 port=builder, reference_run=run, progress=say)
