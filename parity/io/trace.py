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
  optimizer, recorded stages, versions, conventions, the port builder), the taps and the parameter refs.

No pickle anywhere: safetensors holds raw little-endian buffers and a JSON header. ``parity record`` writes
that layout itself, one array at a time from the run's spill directory (:func:`write_trace`; the safetensors
package only writes from a dict held in memory), and this module reads it with ``safetensors.numpy.load_file``
and ``safe_open``; a trace of :data:`LAZY_TRACE_MIN_BYTES` or more is read lazily, array by array. The replay path imports neither
TensorFlow nor Keras (``tests/parity/test_trace.py`` runs it with both imports blocked).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap

SCHEMA = "parity.io.trace/1"
#: safetensors metadata keys
META_KEY = "parity.io.trace"
SCHEMA_KEY = "schema"
ARRAY_REF = "__array__"


#: a trace file at least this large is read lazily by ``load_trace``: arrays of ``SPILL_MIN_BYTES`` or more are
#: read from the file when a stage compares them, one at a time (an Xception or GOTURN trace holds several
#: GB of float64 activations or weights); smaller traces are read whole
LAZY_TRACE_MIN_BYTES = 256 << 20

#: numpy dtype -> safetensors dtype name (the header's "dtype" field)
ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
             "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}


# -- packing: nested dicts/lists of arrays <-> (tensors, JSON) ----------------------------------------------
def _pack(obj, key: str, tensors: dict, seen: dict) -> Any:
    """``obj`` as JSON with each array replaced by ``{"__array__": key}``; ``tensors[key]`` gets the array, or
    its :class:`parity.core.spill.Spilled` handle (not loaded: a spilled run is written one array at a time).
    Equal arrays are stored once: in-memory ones by content, spilled ones by the digest their store computed
    (``parity record``) or else by handle (a layer's input is the previous layer's output)."""
    from parity.core.spill import Spilled

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
            from parity.core.spill import SpillDict

            return SpillDict.from_handles(None, {k: _unpack(v, tensors, lazy) for k, v in obj.items()})
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors, lazy) for v in obj]
    return obj


def _trace_array_class():
    from parity.core.spill import Spilled

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
                raise ValueError(f"trace {self.path}: expected {n} values at byte {self.offset}. Received: "
                                 f"{a.size} (the file was truncated or replaced). Record it again.")
            return a.astype(self.dtype, copy=False).reshape(self.shape)

    return TraceArray


def write_trace(path: str, run, *, extra_meta: dict | None = None) -> int:
    """Write ``run`` as a safetensors file one array at a time (a spilled run is never loaded whole;
    ``safetensors.numpy.save_file`` needs every array in memory, and builds the file's bytes at once). The
    layout is safetensors': an 8-byte little-endian header length, the JSON header (``dtype``, ``shape``,
    ``data_offsets`` per tensor, ``__metadata__``), padded with spaces to 8 bytes, then the buffers in
    offset order. Written to ``path + ".tmp"`` and renamed. Returns the number of arrays."""
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
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for key, src in tensors.items():
            a = src.load() if hasattr(src, "load") else src
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            f.write(memoryview(a.reshape(-1)).cast("B"))
            del a
    os.replace(tmp, path)
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
    d = dataclasses.asdict(opt)
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
    import sys

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
           reference=None, port=None, progress: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Run the reference side only and store the run at ``path`` (safetensors). Returns (path, summary line).

    ``port``: the port builder ``module:function`` that ``replay`` uses by default (your own models;
    registered pairs default to the pair's port)."""
    from parity.core.errors import UsageError
    from parity.backends.weights import load_weight_file
    from parity.core.options import optimizer_spec, parse_stages

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
    opt = optimizer_spec(spec, optimizer)
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--output {path}: expected a file in an existing directory. Received: no directory "
                         f"{out_dir}. Create it first.")
    port_builder = port if isinstance(port, str) else _builder_string(port if port is not None else spec.port)

    from parity.backends.keras_side import run_reference

    wfile = None
    if weights is not None:
        wfile = (lambda expected: load_weight_file(spec, weights, expected))
    from parity.core.spill import SpillStore

    # the run waits on disk, and is written to the trace one array at a time; digests: equal arrays once
    store = SpillStore(digests=True)
    try:
        run = run_reference(spec, config=cfg, dtype=dtype, seed=seed, batch=batch, optimizer=opt, steps=steps,
                            stages=stage_set, weights_file=wfile, progress=say, spill=store)
        say(f"record: write {path}")
        n_arrays = _write_recorded(path, run, spec, stage_list, opt, port_builder, weights)
    finally:
        store.close()
    size = os.path.getsize(path)
    secs = time.perf_counter() - t0
    summary = (f"PASSED record {spec.name} [{dtype}, batch {batch}, {len(stage_list)} stages]: {n_arrays} arrays, "
               f"{size / 1e6:.1f} MB -> {path} ({secs:.1f} s)")
    return path, summary


def _write_recorded(path, run, spec, stage_list, opt, port_builder, weights) -> int:
    extra = {
        "stages": list(stage_list),
        "optimizer": optimizer_to_dict(opt),
        "port": port_builder,
        "registered": _is_registered(spec),
        "summary": spec.summary,
        "conventions": [dataclasses.asdict(c) for c in spec.conventions],
        "weights_file": os.path.abspath(weights) if weights else None,
        "versions": _versions(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema": SCHEMA,
    }
    return write_trace(path, run, extra_meta=extra)


def _is_registered(spec: PairSpec) -> bool:
    from parity.pairs import registry

    try:
        return registry.get(spec.name) is spec or registry.get(spec.name).port == spec.port
    except KeyError:
        return False


# -- load / replay ---------------------------------------------------------------------------------------------
def load_trace(path: str, lazy: bool | None = None):
    """Read a trace: the :class:`ReferenceRun` (``meta["trace_path"]`` set) and the raw JSON body.
    A missing or foreign file is a :class:`parity.core.errors.UsageError` (one line). ``lazy`` (default: files of
    :data:`LAZY_TRACE_MIN_BYTES` or more) keeps the file open and reads each large array when it is compared."""
    from parity.core.errors import UsageError
    from parity.optim.adapters import ParamRef
    from parity.backends.keras_side import ReferenceRun

    if not os.path.isfile(path):
        raise UsageError(f"replay {path}: expected a trace file written by `parity record`. Received: no such file. "
                         "Check the path.")
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
        if metadata.get(SCHEMA_KEY) != SCHEMA or META_KEY not in metadata:
            raise UsageError(f"replay {path}: expected a parity trace ({SCHEMA}). Received: a safetensors file "
                             f"with schema {metadata.get(SCHEMA_KEY)!r}. Record one with `parity record`.")
        body = json.loads(metadata[META_KEY])
        if lazy is None:
            lazy = os.path.getsize(path) >= LAZY_TRACE_MIN_BYTES
        tensors = _lazy_tensors(path) if lazy else load_file(path)
    except UsageError:
        raise
    except Exception as exc:
        what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"replay {path}: expected a safetensors trace written by `parity record`. Received: "
                         f"a file that does not read as one ({type(exc).__name__}: {what}). Record it again.") from None
    try:
        meta = _unpack(body["meta"], tensors)
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
    except (KeyError, TypeError) as exc:
        raise UsageError(f"replay {path}: expected a complete {SCHEMA} trace. Received: missing or malformed "
                         f"entry {exc}. Record it again with this version of parity.") from None
    return run, body


def _lazy_tensors(path: str) -> dict[str, Any]:
    """key -> array (small, read now) or :class:`TraceArray` (large, read on access) of a safetensors file
    that ``safe_open`` has already accepted, from its JSON header (dtype, shape, data offsets)."""
    from parity.core.spill import SPILL_MIN_BYTES

    names = {v: k for k, v in ST_DTYPES.items()}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    trace_array = _trace_array_class()
    out: dict[str, Any] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, _ = info["data_offsets"]
        h = trace_array(path, base + int(begin), info["shape"], names[info["dtype"]])
        out[key] = h if h.nbytes >= SPILL_MIN_BYTES else h.load()
    return out


def spec_for_trace(run, port: str | None = None) -> PairSpec:
    """The pair a trace was recorded for: the registered spec by name, or (your own models) a spec rebuilt
    from the trace (taps, loss, optimizer, conventions) whose port is the recorded (or given) builder."""
    from parity.pairs import registry
    from parity.core.errors import UsageError

    meta = run.meta
    name = meta["pair"]
    if meta.get("registered", True):
        try:
            return registry.get(name)
        except registry.UnknownPair:
            if not (port or meta.get("port")):
                raise
    builder = port or meta.get("port")
    if not builder:
        raise UsageError(f"replay {meta.get('trace_path')}: expected a port builder for pair {name!r} (your own "
                         "models). Received: none recorded. Pass --port MODULE:FUNCTION.")
    loss = meta.get("loss") or {}
    opt = optimizer_from_dict(meta["optimizer"]) if meta.get("optimizer") else OptimizerSpec()
    taps = list(run.taps)
    shape = tuple(meta.get("input_shape") or ())
    return PairSpec(name=name, summary=meta.get("summary", f"trace of {name}"), reference="<trace>", port=builder,
                    taps=lambda c, t=taps: t, input_shape=lambda c, s=shape: s,
                    target=lambda c: ("unknown", 0),
                    loss=LossSpec(loss.get("name", "categorical_crossentropy"), loss.get("reduction", "mean")),
                    optimizer=opt,
                    conventions=tuple(Convention(**c) for c in meta.get("conventions") or ()),
                    default_config=dict(meta.get("config") or {}), default_batch=int(meta["batch"]))


def replay(trace_path: str, *, port: str | None = None, stages=None, device: str = "cpu",
           progress: Callable[[str], None] | None = None):
    """Check a port against a recorded trace (PyTorch only). ``port`` overrides the pair's (or the recorded)
    port builder; ``stages`` must be among the recorded ones (default: all recorded). Returns the
    :class:`parity.core.results.CheckResult`."""
    from parity.core.errors import UsageError
    from parity.core.options import parse_stages
    from parity.harness import check

    say = progress or (lambda msg: None)
    say(f"replay: read {trace_path}")
    run, _ = load_trace(trace_path)
    meta = run.meta
    recorded = tuple(meta.get("stages") or ())
    if not stages:
        wanted = recorded
    else:
        wanted = parse_stages(stages) if isinstance(stages, str) else tuple(stages)
    missing = [s for s in wanted if s not in recorded]
    if missing:
        raise UsageError(f"--stages: expected stages recorded in the trace ({', '.join(recorded)}). Received: "
                         f"{', '.join(missing)}. Record them with `parity record --stages ...`.")
    spec = spec_for_trace(run, port)
    opt = optimizer_from_dict(meta["optimizer"])
    return check(spec, stages=wanted, dtype=meta["dtype"], device=device, batch=int(meta["batch"]),
                 seed=int(meta["seed"]), optimizer=opt, steps=int(meta["steps"]), config=None,
                 port=port or meta.get("port"), reference_run=run, progress=say)
