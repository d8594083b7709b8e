"""The check: run the reference once (or take a recorded trace), build the port, run the stages over one
:class:`parity.stages.context.CheckContext`, and name causes. Returns a
:class:`parity.core.results.CheckResult`; prints nothing (``progress`` is an optional callback for the CLI's
progress display).

Stages, in result order (the order decides "first divergence"), one module each under ``parity/stages/``:

- ``structure``: per aligned layer, kinds, configs (eps, momentum, padding, bias, strides), parameter
  counts (Keras trainable / non-trainable vs torch parameters / buffers / num_batches_tracked), the weight
  conversion report;
- ``forward_eval``: every tap's output in inference mode;
- ``forward_train``: every tap's output with batch statistics, and the BatchNorm running-stat update
  (torch's unbiased update converted to Keras' biased one, see ``parity.core.conventions``);
- ``gradients``: the loss, the gradient w.r.t. every tap output and of every parameter;
- ``step``: one (or ``--steps``) optimizer update(s): parameter updates and optimizer slots;
- ``isolated``: each port module fed with the reference's input to that layer;
- ``onnx`` (``onnx=True``): both models exported to ONNX and run by onnxruntime.

They run in the order of :data:`PIPELINE`: everything that compares the loaded weights (eval forward,
structure, isolated layers, the ONNX leg) before the training stages change the port's weights and
BatchNorm statistics; the port is restored to its loaded state afterwards. On a second core the eval forward,
the structure and the isolated layers run over a copy of the loaded port while the training stages run
(``parity.stages.lane.SideLane``, the same numbers); the check waits for them before the diagnosis.
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

from parity import diagnosis
from parity.backends.keras_side import keras_dtype, run_reference
from parity.backends.torch_side import DeviceUnavailable, TorchSide, device_description, resolve_device
from parity.backends.weights import layer_maps, load_weight_file
from parity.core.buffers import POOL
from parity.core.env import heap_is_kept, heap_kept, import_tensorflow, import_torch, isa_report, trim_heap
from parity.core.errors import UsageError, function_name
from parity.core.families import tolerance_floors
from parity.core.options import check_batch, optimizer_spec, parse_stages, resolve_user
from parity.core.results import STAGE_ORDER, CheckResult, Finding
from parity.core.spec import OptimizerSpec, PairSpec, resolve
from parity.core.spill import SpillStore
from parity.diagnosis.initialisation import init_findings_from_run
from parity.optim.adapters import get_adapter
from parity.optim.user import with_user_training  # also registers the "user" optimizer adapter
from parity.pairs import registry
from parity.stages import forward, isolated, structure, train
from parity.stages import onnx as onnx_leg
from parity.stages.context import TRAIN_STAGES, CheckContext, resolve_tolerances
from parity.stages.lane import SideLane
from weight_converters.keras import keras_to_torch

PIPELINE = (forward.run, structure.run, isolated.run, onnx_leg.run, train.run)
"""The stages in the order they run over the context (each does nothing unless asked for). Every leg that
compares the port with the reference's eval-mode outputs runs while the port holds the loaded weights."""

LOADED_STAGES = (forward.run, structure.run, isolated.run)
"""The stages a side lane may run over a copy of the loaded port while the training stages run
(:class:`parity.stages.lane.SideLane`), in this order."""


def check(pair: str | PairSpec, *, stages=None, dtype: str = "float64", device: str = "cpu",
          batch: int | None = None, seed: int = 0, optimizer=None, steps: int = 1, weights: str | None = None,
          config: dict | None = None, port: str | Callable | None = None, reference: str | Callable | None = None,
          reference_run=None, onnx: bool = False, progress: Callable[[str], None] | None = None,
          port_optimizer: str | Callable | None = None, port_loss: str | Callable | None = None) -> CheckResult:
    """Run a parity check of a registered pair (or a :class:`PairSpec`). See the module docstring.

    ``port_optimizer`` (``fn(port_module) -> torch optimizer`` or ``(optimizer, scheduler)``) and ``port_loss``
    (``loss(output, target)``), callables or ``"module:function"``: the port trains with yours, the reference
    with its ``model.compile(...)`` configuration (:mod:`parity.optim.user`). A reference with several outputs:
    ``loss(outputs, targets)``, both tuples in the Keras model's output order (class indices as the target of a
    softmax output, floats otherwise), returning the total weighted as the compiled ``loss_weights``
    (:mod:`parity.user.outputs`)."""
    t_start = time.perf_counter()
    spec = registry.get(pair) if isinstance(pair, str) else pair
    if reference is not None:
        spec = dataclasses.replace(spec, reference=resolve_user(reference, "--reference", "a Keras model"))
    if port_optimizer is not None or port_loss is not None:
        spec = _user_training(spec, isinstance(pair, str), config, dtype, port_optimizer, port_loss)
    ctx = _request(spec, stages, dtype=dtype, device=device, batch=batch, seed=seed, optimizer=optimizer,
                   steps=steps, config=config, reference_run=reference_run, onnx=onnx, progress=progress)
    # -- port device first: a missing GPU is a usage error before any slow work ---------------------------
    import_torch()
    try:
        resolve_device(device)
    except DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None
    # the reference's results wait on disk for the port, not in memory; the port's snapshot too (parity.core.spill),
    # written by a thread of their own while the frameworks compute
    ctx.store = SpillStore(background=True)
    try:
        with heap_kept():  # freed memory reused by the next stage, not given back (parity.core.env.keep_heap)
            _reference(ctx, weights, reference_run)
            _build_port(ctx, port)
            _run_stages(ctx)
            result = _diagnose(ctx, t_start)
    except BaseException:
        ctx.store.close()
        raise
    finally:
        if not heap_is_kept():  # the comparisons' recycled buffers (parity.core.buffers), unless a session goes on
            POOL.clear()
    ctx.store.close(wait=False)  # the files go on a thread of their own while the caller reads the result
    return result


def _user_training(spec: PairSpec, registered: bool, config, dtype: str, port_optimizer, port_loss) -> PairSpec:
    """The spec trained with the user's optimizer / loss against the compiled configuration of its reference
    (built once here to read it). A registered pair is copied; a user's spec is changed in place (its taps
    keep a reference to it)."""
    if registered:
        spec = dataclasses.replace(spec)
    fns = {}
    for name, option, what, value in (("opt", "--port-optimizer", "a torch optimizer", port_optimizer),
                                      ("loss", "--port-loss", "a loss(output, target)", port_loss)):
        if value is None:
            continue
        fns[name] = ((resolve_user(value, option, what), f"{option} {value}") if isinstance(value, str)
                     else (value, f"{option.lstrip('-').replace('-', '_')}={function_name(value)}"))
    import_tensorflow()
    with keras_dtype(dtype):
        model = resolve(spec.reference)(**spec.config(**(config or {})))
    opt, opt_label = fns.get("opt", (None, ""))
    loss, loss_label = fns.get("loss", (None, ""))
    return with_user_training(spec, model, opt, loss, optimizer_label=opt_label, loss_label=loss_label)


def _request(spec: PairSpec, stages, *, dtype, device, batch, seed, optimizer, steps, config, reference_run,
             onnx, progress) -> CheckContext:
    """The check's arguments validated (a :class:`UsageError` names the first bad one), as a context."""
    if dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype: expected float32 or float64. Received: {dtype!r}.")
    if steps < 1:
        raise UsageError(f"--steps: expected an integer >= 1. Received: {steps}.")
    stage_set = set(parse_stages(stages) if isinstance(stages, (str, type(None))) else stages)
    cfg = spec.config(**(config or {})) if reference_run is None else dict(reference_run.meta["config"])
    check_batch(batch, stage_set)  # 0 is refused, not read as "the default"
    batch = batch if batch is not None else (reference_run.meta["batch"] if reference_run is not None
                                             else spec.default_batch)
    if batch < 2 and stage_set & TRAIN_STAGES:
        raise UsageError(f"--batch: expected >= 2 for train-mode stages (BatchNorm needs a batch). Received: {batch}.")
    return CheckContext(spec=spec, stages=stage_set, dtype=dtype, device=device, seed=seed, batch=batch,
                        optimizer=optimizer_spec(spec, optimizer), steps=steps, store=None, config=cfg, onnx=onnx,
                        say=progress or (lambda msg: None))


def _reference(ctx: CheckContext, weights: str | None, reference_run) -> None:
    """The reference run: the pair's Keras model run now, or a recorded trace (whose dtype and seed win)."""
    if reference_run is not None:
        ctx.ref, ctx.owned = reference_run, False
        ctx.dtype, ctx.seed = reference_run.meta["dtype"], reference_run.meta["seed"]
        ctx.source = f"trace:{reference_run.meta.get('trace_path', '?')}"
        return
    wfile = None if weights is None else (lambda expected: load_weight_file(ctx.spec, weights, expected))
    ctx.ref = run_reference(ctx.spec, config=ctx.config, dtype=ctx.dtype, seed=ctx.seed, batch=ctx.batch,
                            optimizer=ctx.optimizer, steps=ctx.steps, stages=ctx.stages, weights_file=wfile,
                            progress=ctx.say, spill=ctx.store)
    ctx.owned, ctx.source = True, "keras"


def _build_port(ctx: CheckContext, port) -> None:
    """The port built (seeded), checked for initialisation parity, loaded with the reference's converted
    weights and snapshotted; the result started and the tolerance policy resolved for the check's dtype."""
    torch = import_torch()
    spec, ref, taps = ctx.spec, ctx.ref, ctx.taps
    ctx.say("port: build and load converted weights")
    torch.manual_seed(ctx.seed)
    port_builder = (resolve_user(port, "--port", "a torch.nn.Module") if port is not None else resolve(spec.port))
    module = port_builder(**ctx.config)
    if port is not None and not (hasattr(module, "named_modules") and hasattr(module, "state_dict")):
        raise UsageError(f"--port {port if isinstance(port, str) else getattr(port, '__qualname__', port)}: "
                         f"expected a function returning a torch.nn.Module. Received: {type(module).__name__}.")
    # initialisation parity: the freshly built port against the reference's initialisers (warnings only; a
    # port can match after a weight copy and still train differently from scratch)
    initialisation = init_findings_from_run(ref, module, taps) if "structure" in ctx.stages else []
    ctx.ts = ts = TorchSide(module, taps, device=ctx.device, dtype=ctx.dtype)
    state, ctx.conversion = keras_to_torch(ref.weights, layer_maps(taps), expected=ts.expected_state(), strict=False)
    ts.load_state(state)
    del state  # the numpy copy (0.9 GB for GOTURN in float64): the module holds the weights now
    trim_heap()
    ctx.snapshot = ts.snapshot(ctx.store)
    ctx.tol = resolve_tolerances(spec, ctx.dtype)
    ctx.result = CheckResult(pair=spec.name, dtype=ctx.dtype, device=ctx.device, seed=ctx.seed, batch=ctx.batch,
                             optimizer=_opt_dict(ctx.optimizer, ctx.steps), config=ref.meta["config"],
                             conversion=ctx.conversion.to_dict(), reference_source=ctx.source,
                             initialisation=initialisation)
    _scale_rounding_tolerance(ctx)


def _scale_rounding_tolerance(ctx: CheckContext) -> None:
    """A difference a layer family says the port cannot remove (:func:`parity.core.families.tolerance_floors`,
    e.g. Keras' float32-rounded attention scale against ``nn.MultiheadAttention`` in float64): every stage held
    to the family's rtol instead of failing a faithful port, said as a warning."""
    floors = tolerance_floors(ctx.taps, ctx.ref.structure, ctx.ts.modules, ctx.dtype)
    if not floors:
        return
    rtol = max(r for _, r, _ in floors)
    ctx.tol = {k: dataclasses.replace(v, rtol=max(v.rtol, rtol)) for k, v in ctx.tol.items()}
    for path, _, (cause, message, fix, evidence) in floors:
        ctx.result.findings.append(Finding(cause, path, message, fix, stage="structure", severity="warning",
                                           evidence=evidence))


def _run_stages(ctx: CheckContext) -> None:
    """Every stage of :data:`PIPELINE`; on a second core the :data:`LOADED_STAGES` on a side lane over a copy of
    the port while the training stages run (``parity.stages.lane``). The training stages start from torch's
    generator state after the build, whatever the stages before them drew (in line or on a lane: the same
    draws). The port goes back to its loaded weights and mode whatever happens."""
    torch = ctx.ts.torch
    start_state = torch.random.get_rng_state()
    side, ctx.lane_note = SideLane.start(ctx, LOADED_STAGES, start_state)
    if side is not None:
        ctx.say("port: forward (eval), structure and isolated layers on a second core, alongside training")
    try:
        for stage in PIPELINE:
            if side is not None and stage in LOADED_STAGES:
                continue
            if stage is train.run:
                torch.random.set_rng_state(start_state)
            stage(ctx)
        if side is not None:
            if not side.finish(ctx):  # the copy reached into the port: the stages in line, on the loaded port
                ctx.lane_note = f"in line, after training: {side.leak}"
                ctx.say(f"port: forward (eval), structure and isolated layers ({ctx.lane_note})")
                _loaded_stages_after_training(ctx, start_state)
            isolated.release(ctx)
    except BaseException:
        if side is not None:  # a stage failed (or Ctrl-C): the lane is stopped, not waited for
            side.cancel()
        raise
    finally:
        ctx.ts.restore(ctx.snapshot)


def _loaded_stages_after_training(ctx: CheckContext, start_state) -> None:
    """:data:`LOADED_STAGES` in line after the training stages: the port restored to its loaded weights and mode,
    the attention calls recorded again in eval mode and torch's generator at the state the eval-mode stages
    start from, as if they had run first; the generator then back where the training left it."""
    torch = ctx.ts.torch
    ctx.ts.restore(ctx.snapshot)
    ctx.ts.__dict__.pop("_attention_calls", None)
    after_training = torch.random.get_rng_state()
    torch.random.set_rng_state(start_state)
    try:
        for stage in LOADED_STAGES:
            stage(ctx)
    finally:
        torch.random.set_rng_state(after_training)


def _diagnose(ctx: CheckContext, t_start: float) -> CheckResult:
    """The stages in result order, the diagnosis' findings, the environment."""
    ctx.say("diagnosis")
    result = ctx.result
    result.stages.sort(key=lambda st: STAGE_ORDER.index(st.name) if st.name in STAGE_ORDER else len(STAGE_ORDER))
    # the numeric diagnosis rules probe both sides (e.g. re-run one layer with a transposed weight)
    result.findings += diagnosis.numeric_findings(result, ctx.as_probe_dict())
    diagnosis.attach_stages(result)
    result.environment = _environment(ctx)
    result.seconds = time.perf_counter() - t_start
    return result


def _opt_dict(opt: OptimizerSpec, steps: int) -> dict:
    d = opt.as_dict() if hasattr(opt, "as_dict") else dataclasses.asdict(opt)  # a user's: no functions in JSON
    d["steps"] = steps
    try:
        d["rules"] = list(get_adapter(opt.kind).rules)
    except KeyError:
        d["rules"] = []
    return d


def _environment(ctx: CheckContext) -> dict[str, Any]:
    """Versions, the port's device, the oneDNN setting, the reference's timings, what was spilled to disk."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    for mod in ("torch", "tensorflow", "keras", "h5py", "onnxruntime"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod] = getattr(m, "__version__", "?")
    env["port_device"] = device_description(ctx.ts.device)
    env.update(isa_report())  # the oneDNN ISA cap in force, and why (parity.core.env)
    env["loaded_port_stages"] = ctx.lane_note  # where the eval forward, structure and isolated layers ran
    ref = ctx.ref
    env["reference_seconds"] = {k: round(v, 4) for k, v in ref.seconds.items()}
    if ctx.store.files:  # what waited on disk instead of in memory (parity.core.spill)
        env["spilled"] = {"files": ctx.store.files, "bytes": ctx.store.bytes_written}
    for k in ("keras_version", "tensorflow_version"):
        if k in ref.meta:
            env[f"reference_{k}"] = ref.meta[k]
    return env
