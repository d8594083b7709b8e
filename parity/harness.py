"""The check: run the reference once (or take a recorded trace), run the port, compare at every tap,
stage by stage, and name causes. Returns a :class:`parity.core.results.CheckResult`; prints nothing
(``progress`` is an optional callback for the CLI's progress display).

Stages, in order (the order decides "first divergence"):

- ``structure``: per aligned layer, kinds, configs (eps, momentum, padding, bias, strides), parameter
  counts (Keras trainable / non-trainable vs torch parameters / buffers / num_batches_tracked), the weight
  conversion report;
- ``forward_eval``: every tap's output in inference mode;
- ``forward_train``: every tap's output with batch statistics, and the BatchNorm running-stat update
  (torch's unbiased update converted to Keras' biased one, see ``parity.core.conventions``);
- ``gradients``: the loss, the gradient w.r.t. every tap output and of every parameter;
- ``step``: one (or ``--steps``) optimizer update(s): parameter updates and optimizer slots;
- ``isolated``: each port module fed with the reference's input to that layer.
"""
from __future__ import annotations

import gc
import platform
import time
from typing import Any, Callable

import numpy as np

from parity import diagnosis
from parity.core.tensors import hwc_flat_to_chw_flat, layer_scale_floor, nhwc_to_nchw, tensor_diff
from parity.core.conventions import RUNNING_VAR_CONVENTION, unbiased_to_biased_update
from parity.core.results import STAGE_ORDER, CheckResult, Finding, StageResult
from parity.core.errors import UsageError
from parity.backends.weights import layer_maps, load_weight_file
from parity.core.options import ALL_STAGES, optimizer_spec, parse_stages  # noqa: F401
from parity.core.spec import OptimizerSpec, PairSpec, Tap, resolve

def ref_to_port_layout(tap: Tap, a: np.ndarray) -> np.ndarray:
    """A reference activation (NHWC, Keras flatten order) in the port's layout."""
    a = np.asarray(a)
    if tap.kind == "flatten" and tap.flatten_chw is not None and a.ndim == 2:
        return hwc_flat_to_chw_flat(a, tap.flatten_chw)
    return nhwc_to_nchw(a)


def _environment(ts=None) -> dict[str, Any]:
    import sys

    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    for mod in ("torch", "tensorflow", "keras", "h5py", "onnxruntime"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod] = getattr(m, "__version__", "?")
    if ts is not None:
        from parity.backends.torch_side import device_description

        env["port_device"] = device_description(ts.device)
    import os

    env["ONEDNN_MAX_CPU_ISA"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return env


def check(pair: str | PairSpec, *, stages=None, dtype: str = "float64", device: str = "cpu",
          batch: int | None = None, seed: int = 0, optimizer=None, steps: int = 1, weights: str | None = None,
          config: dict | None = None, port: str | Callable | None = None, reference: str | Callable | None = None,
          reference_run=None, onnx: bool = False, progress: Callable[[str], None] | None = None) -> CheckResult:
    """Run a parity check of a registered pair (or a :class:`PairSpec`). See the module docstring."""
    from parity.pairs import registry

    t_start = time.perf_counter()
    spec = registry.get(pair) if isinstance(pair, str) else pair
    if reference is not None:
        import dataclasses

        spec = dataclasses.replace(spec, reference=reference)
    say = progress or (lambda msg: None)
    if dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype: expected float32 or float64. Received: {dtype!r}.")
    if steps < 1:
        raise UsageError(f"--steps: expected an integer >= 1. Received: {steps}.")
    stage_set = set(parse_stages(stages) if isinstance(stages, (str, type(None))) else stages)
    cfg = spec.config(**(config or {})) if reference_run is None else dict(reference_run.meta["config"])
    batch = batch or (reference_run.meta["batch"] if reference_run is not None else spec.default_batch)
    if batch < 2 and stage_set & {"forward_train", "gradients", "step"}:
        raise UsageError(f"--batch: expected >= 2 for train-mode stages (BatchNorm needs a batch). Received: {batch}.")
    opt = optimizer_spec(spec, optimizer)

    # -- port device first: a missing GPU is a usage error before any slow work ---------------------------
    from parity.core.env import import_torch

    import_torch()
    from parity.backends.torch_side import DeviceUnavailable, resolve_device

    try:
        resolve_device(device)
    except DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None

    # -- reference ------------------------------------------------------------------------------------------
    from parity.core.spill import SpillStore

    # the reference's results wait on disk for the port, not in memory; the port's snapshot too (parity.core.spill)
    store = SpillStore()
    if reference_run is None:
        from parity.backends.keras_side import run_reference

        wfile = None
        if weights is not None:
            wfile = (lambda expected: load_weight_file(spec, weights, expected))
        try:
            ref = run_reference(spec, config=cfg, dtype=dtype, seed=seed, batch=batch, optimizer=opt, steps=steps,
                                stages=stage_set, weights_file=wfile, progress=say, spill=store)
        except BaseException:
            store.close()
            raise
        source = "keras"
        owned = True
    else:
        owned = False
        ref = reference_run
        dtype, seed = ref.meta["dtype"], ref.meta["seed"]
        source = f"trace:{ref.meta.get('trace_path', '?')}"
    taps = ref.taps

    # -- port -------------------------------------------------------------------------------------------------
    try:
        return _check_port(spec, ref, store, stage_set, cfg, dtype, device, seed, batch, opt, steps, port, onnx,
                           owned, source, say, t_start)
    finally:
        store.close()


def _check_port(spec, ref, store, stage_set, cfg, dtype, device, seed, batch, opt, steps, port, onnx, owned,
                source, say, t_start) -> CheckResult:
    from parity.core.env import import_torch, trim_heap

    torch = import_torch()
    from parity.backends.torch_side import TorchSide, module_info

    taps = ref.taps
    say("port: build and load converted weights")
    torch.manual_seed(seed)
    port_builder = resolve(port if port is not None else spec.port)
    module = port_builder(**cfg)
    from parity.diagnosis.initialisation import init_findings_from_run

    # initialisation parity: the freshly built port against the reference's initialisers (warnings only; a
    # port can match after a weight copy and still train differently from scratch)
    init_warnings = init_findings_from_run(ref, module, taps) if "structure" in stage_set else []
    ts = TorchSide(module, taps, device=device, dtype=dtype)
    from weight_converters.keras import keras_to_torch

    state, conv_report = keras_to_torch(ref.weights, layer_maps(taps), expected=ts.expected_state(), strict=False)
    ts.load_state(state)
    del state  # the numpy copy (0.9 GB for GOTURN in float64): the module holds the weights now
    trim_heap()
    snap = ts.snapshot(store)

    result = CheckResult(pair=spec.name, dtype=dtype, device=device, seed=seed, batch=batch,
                         optimizer=_opt_dict(opt, steps), config=ref.meta["config"],
                         conversion=conv_report.to_dict(), reference_source=source)
    result.findings += init_warnings
    path_of_layer = {t.ref: t.path for t in taps}
    port_outputs: dict[str, Any] = {"loss": spec.loss.name}
    try:
        eval_shapes = None
        if stage_set & {"forward_eval", "structure"}:
            t = time.perf_counter()
            say("port: forward (eval)")
            tol = spec.tolerance.for_stage(dtype, "forward_eval")
            sink, diffs = _diff_sink(ref.eval_acts if "forward_eval" in stage_set else {}, tol)
            eval_shapes, final, calls = ts.forward_eval(ref.inputs[0], sink=sink)
            port_outputs["final"] = final
            port_outputs["calls"] = calls
            if "forward_eval" in stage_set:
                st = StageResult("forward_eval")
                _compare_acts(st, taps, ref.eval_acts, eval_shapes, tol, ts, diffs=diffs)
                if ts.error:
                    st.errors.insert(0, ts.error)
                st.seconds = time.perf_counter() - t + ref.seconds.get("forward_eval", 0.0)
                result.stages.append(st)
        if "structure" in stage_set:
            result.stages.insert(0, _structure_stage(spec, ref, ts, taps, conv_report, eval_shapes, module_info,
                                                     result))
        if "isolated" in stage_set:
            t = time.perf_counter()
            say("port: isolated layers")
            st = StageResult("isolated", info={"what": "each port module fed the reference's input to that layer"})
            tol = spec.tolerance.for_stage(dtype, "isolated")
            for tap in taps:
                ins = ref.eval_inputs.get(tap.path)
                if ins is None or tap.path not in ref.eval_acts:
                    continue
                out = ts.isolated(tap, ins)
                if out is None:
                    if ts.error:
                        st.errors.append(f"{tap.path}: port module raised {ts.error}")
                        ts.error = None
                    continue
                st.tensors.append(tensor_diff(tap.path, ref_to_port_layout(tap, ref.eval_acts[tap.path]), out, tol))
            st.seconds = time.perf_counter() - t
            result.stages.append(st)
        if owned and ref.store is None:  # reference results held in memory: free what no later stage reads
            ref.eval_inputs = {}
        gc.collect(1)  # young generations: what the port phase made (a full pass costs ~0.25 s)
        trim_heap()
        if stage_set & {"forward_train", "gradients", "step"}:
            _train_stages(spec, ref, ts, taps, stage_set, opt, steps, dtype, result, path_of_layer, say,
                          owned and ref.store is None, snap[0])
        if onnx:
            from parity.stages.onnx import onnx_stage

            say("onnx: export both sides, run onnxruntime")
            st = onnx_stage(spec, ref, ts, taps, dtype=dtype)
            result.stages.append(st)
            result.findings += st.findings
    finally:
        ts.restore(snap)

    say("diagnosis")
    result.stages.sort(key=lambda st: STAGE_ORDER.index(st.name) if st.name in STAGE_ORDER else len(STAGE_ORDER))
    port_outputs["output_path"] = next((t.path for t in reversed(taps) if t.port == ""), taps[-1].path)
    # the numeric diagnosis rules probe both sides (e.g. re-run one layer with a transposed weight)
    port_outputs.update(reference_run=ref, torch_side=ts, spec=spec, taps=taps)
    result.findings += diagnosis.numeric_findings(result, port_outputs)
    diagnosis.attach_stages(result)
    result.environment = _environment(ts)
    result.environment["reference_seconds"] = {k: round(v, 4) for k, v in ref.seconds.items()}
    if store.files:  # what waited on disk instead of in memory (parity.core.spill)
        result.environment["spilled"] = {"files": store.files, "bytes": store.bytes_written}
    for k in ("keras_version", "tensorflow_version"):
        if k in ref.meta:
            result.environment[f"reference_{k}"] = ref.meta[k]
    result.seconds = time.perf_counter() - t_start
    return result


def _opt_dict(opt: OptimizerSpec, steps: int) -> dict:
    import dataclasses

    d = dataclasses.asdict(opt)
    d["steps"] = steps
    from parity.optim.adapters import get_adapter

    try:
        d["rules"] = list(get_adapter(opt.kind).rules)
    except KeyError:
        d["rules"] = []
    return d


def _diff_sink(ref_acts, tol, suffix: str = ""):
    """A port-side sink comparing each tap's value with the reference's as soon as the port computes it (see
    ``TorchSide.tapping``); returns the sink and the dict it fills, ``{path: TensorDiff}``."""
    diffs: dict[str, Any] = {}

    def sink(tap, value):
        if tap.path in ref_acts and tap.path not in diffs:
            diffs[tap.path] = tensor_diff(tap.path + suffix, ref_to_port_layout(tap, ref_acts[tap.path]), value, tol)

    return sink, diffs


def _compare_acts(st: StageResult, taps, ref_acts, port_acts, tol, ts, diffs=None) -> None:
    """One diff per tap, in tap order (``diffs``: already computed by a sink; ``port_acts`` then only tells
    which taps the port's forward reached)."""
    for tap in taps:
        if tap.path not in ref_acts:
            continue
        if tap.path not in port_acts:
            st.errors.append(f"{tap.path}: port module {tap.port!r} "
                             + ("not found" if tap.port not in ts.modules else "never called in forward"))
            continue
        if diffs is not None:
            if tap.path in diffs:
                st.tensors.append(diffs[tap.path])
            continue
        st.tensors.append(tensor_diff(tap.path, ref_to_port_layout(tap, ref_acts[tap.path]), port_acts[tap.path], tol))


def _ref_shape(tap: Tap, acts, path) -> tuple:
    """The shape of a reference activation in the port's layout, without loading a spilled array."""
    h = acts.handle(path) if hasattr(acts, "handle") else acts[path]
    shape = tuple(np.shape(h) if not hasattr(h, "shape") else h.shape)
    if len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    return shape


def _structure_stage(spec, ref, ts, taps, conv_report, eval_acts, module_info, result) -> StageResult:
    t = time.perf_counter()
    st = StageResult("structure")
    findings: list[Finding] = []
    for tap in taps:
        rinfo = ref.structure.get(tap.ref, {})
        mod = ts.modules.get(tap.port)
        row = {"path": tap.path, "kind": tap.kind, "reference": f"{tap.ref} ({rinfo.get('class', '?')})",
               "port": f"{tap.port or '<output>'} ({type(mod).__name__ if mod is not None else 'MISSING'})"}
        if mod is None:
            st.errors.append(f"{tap.path}: port module {tap.port!r} not found")
            findings.append(Finding("missing_module", tap.path, f"port has no module {tap.port!r}",
                                    "add the layer (or fix the tap's module path)", stage="structure"))
            st.rows.append(row | {"status": "missing"})
            continue
        pinfo = module_info(mod)
        if tap.weighted:
            rt, rn = rinfo.get("trainable_params", 0), rinfo.get("non_trainable_params", 0)
            pt, pb = pinfo["params"], pinfo["buffers"]
            row.update(ref_trainable=rt, ref_non_trainable=rn, port_params=pt, port_buffers=pb,
                       num_batches_tracked=pinfo["num_batches_tracked"])
            if (rt, rn) != (pt, pb):
                st.errors.append(f"{tap.path}: parameters {rt:,} + {rn:,} non-trainable in the reference, "
                                 f"{pt:,} + {pb:,} buffers in the port")
                findings.append(Finding("param_count", tap.path,
                                        f"parameter count differs: reference {rt:,} trainable + {rn:,} "
                                        f"non-trainable, port {pt:,} parameters + {pb:,} buffers",
                                        "compare the layer's construction (bias, affine, channels)",
                                        stage="structure", severity="warning"))
        if eval_acts is not None and tap.path in ref.eval_acts and tap.path in eval_acts:
            rs = _ref_shape(tap, ref.eval_acts, tap.path)[1:]
            pa = eval_acts[tap.path]
            ps = (tuple(pa) if isinstance(pa, tuple) else tuple(np.shape(pa)))[1:]
            row.update(ref_shape=list(rs), port_shape=list(ps))
            if rs != ps:
                st.errors.append(f"{tap.path}: output shape {ps} in the port, {rs} in the reference")
        f = diagnosis.structure_findings(tap, rinfo, pinfo)
        findings += f
        row["status"] = "differs" if f else "ok"
        st.rows.append(row)
    # whole-model reconciliation
    mp = ref.model_params
    tparams = sum(p.numel() for p in ts.module.parameters())
    bufs = {k: b for k, b in ts.module.named_buffers()}
    tbuf = sum(b.numel() for k, b in bufs.items() if not k.endswith("num_batches_tracked"))
    ntracked = sum(1 for k in bufs if k.endswith("num_batches_tracked"))
    recon = {"reference_total": mp["total"], "reference_trainable": mp["trainable"],
             "reference_non_trainable": mp["non_trainable"], "port_parameters": int(tparams),
             "port_buffers": int(tbuf), "port_num_batches_tracked": ntracked,
             "published": dict(spec.published_params)}
    recon["explanation"] = (
        f"Keras counts {mp['total']:,} = {mp['trainable']:,} trainable + {mp['non_trainable']:,} non-trainable "
        f"(BatchNorm moving mean/variance); torch counts {tparams:,} parameters (= Keras trainable) and keeps "
        f"the {tbuf:,} running statistics as buffers, plus {ntracked} num_batches_tracked counters "
        f"(torch-only bookkeeping, not parameters).")
    st.info["param_reconciliation"] = recon
    if (tparams, tbuf) != (mp["trainable"], mp["non_trainable"]):
        st.errors.append(f"model parameters: reference {mp['trainable']:,} trainable + {mp['non_trainable']:,} "
                         f"non-trainable, port {tparams:,} parameters + {tbuf:,} buffers")
    if spec.published_params and result.config == spec.config():
        pub = spec.published_params
        if pub.get("total") not in (None, mp["total"]):
            st.errors.append(f"reference model: {mp['total']:,} parameters, published {pub['total']:,}")
    findings += _shared_module_findings(ts, taps, ref)
    for prob in conv_report.problems():
        st.errors.append(f"weights: {prob}")
    st.info["conversion"] = conv_report.summary()
    if ref.meta.get("weights_report"):  # how --weights FILE was read (format, assumptions such as squeezes)
        st.info["weights_file"] = ref.meta["weights_report"]
    st.info["conventions"] = [{"name": c.name, "reference": c.reference, "port": c.port, "origin": c.origin}
                              for c in spec.conventions]
    for f in findings:
        if f.severity == "error" and f"{f.path}: {f.message}" not in st.errors:
            st.errors.append(f"{f.path}: {f.message}")
    st.findings = findings
    result.findings += findings
    st.seconds = time.perf_counter() - t
    return st


def _shared_module_findings(ts, taps, ref) -> list[Finding]:
    """A port module with parameters called more than once in one forward (e.g. one middle-flow block called
    8x): shared weights where the reference has distinct layers. Reported at the first tap where the reuse
    shows (the second alias), with the parameter gap it explains."""
    from ported_torch.inspect import find_shared_modules

    ts.module.eval()
    try:
        shared = find_shared_modules(ts.module, ts.to_input(ref.inputs[0][:1]))
    except Exception:  # a port that cannot run is reported by the forward stages
        return []
    out = []
    for f in shared:
        later = f["aliases"][1:] or [f["path"]]
        tap = next((t for a in later for t in taps if t.port == a or t.port.startswith(a + ".")), None)
        path = tap.path if tap is not None else f["path"]
        gap = f["params"] * (f["calls"] - 1)
        out.append(Finding("shared_module", path, f"{f['note']}; the reference has {f['calls']} distinct "
                           f"layers: {gap:,} parameters fewer in the port",
                           f"create one module per block (e.g. nn.ModuleList([Block() for _ in range({f['calls']})]))",
                           stage="structure", evidence=f"aliases: {', '.join(f['aliases'][:8])}"))
    return out


def _train_stages(spec, ref, ts, taps, stage_set, opt, steps, dtype, result, path_of_layer, say, owned,
                  snap_state) -> None:
    torch = ts.torch
    from weight_converters.keras import var_to_torch

    tap_by_ref = {t.ref: t for t in taps}
    old_stats = {t.path: {k: v.detach().clone() for k, v in ts.modules[t.port].named_buffers()}
                 for t in taps if t.kind == "batchnorm" and t.port in ts.modules}
    n_steps = steps if "step" in stage_set else 1
    refs = []
    params = dict(ts.module.named_parameters())
    for r in ref.param_refs:
        if r.key in params:
            r2 = type(r)(r.key, r.layer, r.var, r.kind, params[r.key])
            refs.append(r2)
    adapter = opt_torch = None
    if "step" in stage_set:
        from parity.optim.adapters import get_adapter

        adapter = get_adapter(opt.kind)
        opt_torch = adapter.torch_optimizer(opt, refs, ref.l2)
        initial = snap_state  # the loaded weights, from the harness's snapshot (no second copy)
        st_step = StageResult("step", info={"optimizer": opt.kind, "steps": n_steps})
        traj = StageResult("trajectory", info={"what": "per-parameter weight divergence, and BatchNorm running "
                                                       "statistics, after each step"})
        bn_chain: dict[str, tuple] = {}
        ttol = spec.tolerance.for_stage(dtype, "trajectory")
        series: dict[str, list[float]] = {}
    port_losses: list[float] = []
    for k in range(n_steps):
        t = time.perf_counter()
        say(f"port: train forward + backward (step {k + 1}/{n_steps})")
        # k == 0: activations and their gradients are compared as the port computes them (no full copy held)
        act_sink, act_diffs = _diff_sink(ref.train_acts if "forward_train" in stage_set else {},
                                         spec.tolerance.for_stage(dtype, "forward_train"))
        grad_sink, grad_diffs = _diff_sink(ref.act_grads if "gradients" in stage_set else {},
                                           spec.tolerance.for_stage(dtype, "gradients"), suffix=":grad")
        loss = ts.train_forward_backward(ref.inputs[k], ref.labels[k], spec.port_loss or spec.loss,
                                         sink=act_sink if k == 0 else None, grad_sink=grad_sink)
        acts = {p: r.output for p, r in ts.records.items()} if k == 0 else {}
        if ts.error:  # the port cannot run a training batch: report what was tapped, stop training stages
            st = StageResult("forward_train", errors=[ts.error])
            _compare_acts(st, taps, ref.train_acts, acts, spec.tolerance.for_stage(dtype, "forward_train"), ts,
                          diffs=act_diffs)
            result.stages.append(st)
            for name in ("gradients", "step"):
                if name in stage_set:
                    result.stages.append(StageResult(name, errors=[f"not run: {ts.error}"]))
            return
        port_losses.append(loss)
        if adapter is not None and n_steps > 1:
            _bn_trajectory(ref, ts, taps, k, n_steps, old_stats, bn_chain, series, traj, ttol)
        if k == 0:
            if "forward_train" in stage_set:
                st = StageResult("forward_train", info={"running_var": RUNNING_VAR_CONVENTION})
                tol = spec.tolerance.for_stage(dtype, "forward_train")
                _compare_acts(st, taps, ref.train_acts, acts, tol, ts, diffs=act_diffs)
                btol = spec.tolerance.for_stage(dtype, "bn_stats")
                for tap in taps:
                    if tap.kind != "batchnorm" or tap.ref not in ref.bn_stats or tap.path not in old_stats:
                        continue
                    mod = ts.modules[tap.port]
                    if getattr(mod, "running_mean", None) is None:
                        continue
                    n = ref.bn_n[tap.ref]
                    m = mod.momentum
                    if m is None:  # cumulative moving average: weight 1/num_batches_tracked
                        m = 1.0 / float(mod.num_batches_tracked.item())
                    new_var = mod.running_var.detach().cpu().double().numpy()
                    old_var = old_stats[tap.path]["running_var"].cpu().double().numpy()
                    keras_equiv = unbiased_to_biased_update(new_var, old_var, m, n)
                    st.tensors.append(tensor_diff(f"{tap.path}:running_mean", ref.bn_stats[tap.ref]["moving_mean"],
                                                  mod.running_mean.detach().cpu().numpy(), btol))
                    st.tensors.append(tensor_diff(f"{tap.path}:running_var", ref.bn_stats[tap.ref]["moving_variance"],
                                                  keras_equiv, btol, note="torch unbiased update -> biased (n=%d)" % n))
                st.seconds = time.perf_counter() - t + ref.seconds.get("train", 0.0)
                result.stages.append(st)
            if "gradients" in stage_set:
                st = StageResult("gradients")
                tol = spec.tolerance.for_stage(dtype, "gradients")
                st.tensors.append(tensor_diff("loss", np.array(ref.loss), np.array(loss), tol))
                for tap in taps:
                    if tap.path not in ref.act_grads or tap.path not in acts or tap.port_transform:
                        continue
                    if tap.path in grad_diffs:
                        st.tensors.append(grad_diffs[tap.path])
                    else:  # no gradient reached this output in the port (it does not feed the loss): zeros
                        st.tensors.append(tensor_diff(f"{tap.path}:grad", ref_to_port_layout(tap, ref.act_grads[tap.path]),
                                                      np.zeros(acts[tap.path]), tol))
                pdiffs, where = [], {}

                def grad_diff(r, tap, path, floor=0.0):
                    g_ref = ref.param_grads.get(r.layer, {}).get(r.var)
                    g_ref_t = var_to_torch(r.kind, r.var, g_ref, flatten_chw=tap.flatten_chw)
                    p = params[r.key]
                    g_port = p.grad.detach().cpu().numpy() if p.grad is not None else np.zeros(tuple(p.shape))
                    return tensor_diff(path, g_ref_t, g_port, tol, scale_floor=floor)

                for r in ref.param_refs:
                    tap = tap_by_ref.get(r.layer)
                    suffix = r.key[len(tap.port) + 1:] if tap is not None and tap.port else r.key
                    path = f"{tap.path if tap else r.layer}:{suffix}.grad"
                    if tap is None or r.var not in ref.param_grads.get(r.layer, {}):
                        continue
                    if r.key not in params:
                        st.errors.append(f"{path}: port has no parameter {r.key}")
                        continue
                    d = grad_diff(r, tap, path)
                    pdiffs.append(d)
                    where[id(d)] = (r, tap, path)
                st.tensors += layer_scale_floor(pdiffs, lambda d: where[id(d)][1].path,
                                                lambda d, floor: grad_diff(*where[id(d)], floor=floor))
                st.seconds = time.perf_counter() - t + ref.seconds.get("train", 0.0)
                result.stages.append(st)
            del acts, act_diffs, grad_diffs
            ts.records = {}
            if owned:
                ref.train_acts, ref.act_grads = {}, {}
            gc.collect(1)
            from parity.core.env import trim_heap

            trim_heap()
        if adapter is None:
            break
        t = time.perf_counter()
        adapter.torch_prepare(opt, k, opt_torch)
        opt_torch.step()
        tol = spec.tolerance.for_stage(dtype, "step")
        rstep = ref.steps[k]
        at = f"@step{k + 1}" if n_steps > 1 else ""

        def update_diff(r, tap, path, floor=0.0):
            # one loaded array at a time, freed as soon as used (GOTURN's fc6 is 0.6 GB per copy)
            src = rstep["params"][r.layer][r.var]
            upd_ref = var_to_torch(r.kind, r.var, src, flatten_chw=tap.flatten_chw)
            if np.may_share_memory(upd_ref, src):  # the layout change was a no-op: never write to the run's data
                upd_ref = upd_ref.copy()
            del src
            upd_ref -= var_to_torch(r.kind, r.var, ref.weights[r.layer][r.var], flatten_chw=tap.flatten_chw)
            new_port = r.param.detach().cpu().numpy()
            init_port = initial[r.key]
            if isinstance(init_port, np.ndarray):  # a fresh copy from the spill store: reuse its memory
                upd_port = np.subtract(new_port, init_port, out=init_port)
            else:
                upd_port = new_port - init_port.detach().cpu().numpy()
            del init_port
            return tensor_diff(path, upd_ref, upd_port, tol, scale_floor=floor)

        def slot_diff(r, tap, path, slot, floor=0.0):
            sref = var_to_torch(r.kind, r.var, rstep["slots"][r.key][slot], flatten_chw=tap.flatten_chw)
            # this parameter's slots only (a full copy of GOTURN's momentum is 0.9 GB)
            pv = (adapter.torch_slots(opt, k, opt_torch, [r]).get(r.key) or {}).get(slot)
            return tensor_diff(path, sref, pv, tol, scale_floor=floor)

        sdiffs, where = [], {}
        for r in refs:
            tap = tap_by_ref.get(r.layer)
            if tap is None:
                continue
            suffix = r.key[len(tap.port) + 1:] if tap.port else r.key
            if n_steps > 1:  # the weights themselves, step by step: how a small difference grows
                w = tensor_diff(f"{tap.path}:{suffix}", var_to_torch(r.kind, r.var, rstep["params"][r.layer][r.var],
                                                                    flatten_chw=tap.flatten_chw),
                                r.param.detach().cpu().numpy(), ttol)
                series.setdefault(w.path, []).append(w.rel)
                if k == n_steps - 1:
                    traj.tensors.append(w)
            d = update_diff(r, tap, f"{tap.path}:{suffix}.update{at}")
            sdiffs.append(d)
            where[id(d)] = (update_diff, (r, tap, d.path), f"{tap.path}|update")
            ref_slots = rstep["slots"].get(r.key) or {}
            port_slots = (adapter.torch_slots(opt, k, opt_torch, [r]).get(r.key) or {}) if ref_slots else {}
            for slot in ref_slots:
                if slot not in port_slots:
                    st_step.errors.append(f"{tap.path}:{suffix}: port optimizer has no '{slot}' slot")
                    continue
                d = slot_diff(r, tap, f"{tap.path}:{suffix}.{slot}{at}", slot)
                sdiffs.append(d)
                where[id(d)] = (slot_diff, (r, tap, d.path, slot), f"{tap.path}|{slot}")
            del port_slots
        st_step.tensors += layer_scale_floor(sdiffs, lambda d: where[id(d)][2],
                                             lambda d, floor: where[id(d)][0](*where[id(d)][1], floor=floor),
                                             what="update")
        st_step.seconds += time.perf_counter() - t + ref.seconds.get(f"step{k}", 0.0)
    if adapter is not None:
        st_step.info["rules"] = list(adapter.rules)
        result.stages.append(st_step)
        if n_steps > 1:
            traj.info.update(steps=list(range(1, n_steps + 1)), series=series,
                             lr=[opt.lr_at(k) for k in range(n_steps)],
                             losses={"reference": [s["loss"] for s in ref.steps], "port": port_losses})
            result.stages.append(traj)


def _bn_trajectory(ref, ts, taps, k, n_steps, old_stats, chain, series, traj, ttol) -> None:
    """Step ``k``'s BatchNorm running statistics against the reference's moving statistics (a momentum bug
    changes these, never the weights: train-mode BN normalises with batch statistics). torch's unbiased
    running variance is carried as the Keras-equivalent biased chain (``chain[path]`` = (torch value, Keras
    equivalent) after the previous step)."""
    rstats = ref.steps[k].get("bn_stats") if k < len(ref.steps) else None
    if not rstats:
        return
    for tap in taps:
        mod = ts.modules.get(tap.port)
        if tap.kind != "batchnorm" or tap.ref not in rstats or tap.path not in old_stats or mod is None \
                or getattr(mod, "running_mean", None) is None or tap.ref not in ref.bn_n:
            continue
        m = mod.momentum if mod.momentum is not None else 1.0 / float(mod.num_batches_tracked.item())
        rv = mod.running_var.detach().cpu().double().numpy().copy()  # a copy: the buffer is updated in place
        prev_rv, prev_kv = chain.get(tap.path) or (old_stats[tap.path]["running_var"].cpu().double().numpy(),) * 2
        kv = unbiased_to_biased_update(rv, prev_rv, m, ref.bn_n[tap.ref], old_keras_var=prev_kv)
        chain[tap.path] = (rv, kv)
        for name, rval, pval in (("running_mean", rstats[tap.ref]["moving_mean"],
                                  mod.running_mean.detach().cpu().numpy().copy()),
                                 ("running_var", rstats[tap.ref]["moving_variance"], kv)):
            w = tensor_diff(f"{tap.path}:{name}", rval, pval, ttol)
            series.setdefault(w.path, []).append(w.rel)
            if k == n_steps - 1:
                traj.tensors.append(w)
