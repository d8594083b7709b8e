"""The training stages, over the reference's training batches:

- ``forward_train``: every tap's output with batch statistics, and the BatchNorm running-stat update (torch's
  unbiased update converted to Keras' biased one, see ``parity.core.conventions``);
- ``gradients``: the loss, the gradient w.r.t. every tap output and of every parameter;
- ``step``: one (or ``--steps``) optimizer update(s): parameter updates and optimizer slots;
- ``trajectory`` (``--steps`` > 1): per-parameter weight divergence, and BatchNorm running statistics, after
  each step.

The first batch's activations and gradients are compared as the port computes them (no full copy held), then
released before the optimizer steps.
"""
from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from parity.backends.keras_side import with_companions
from parity.backends.torch_side import LAYOUT_TRANSFORMS
from parity.core.background import Background
from parity.core.conventions import RUNNING_VAR_CONVENTION, unbiased_to_biased_update
from parity.core.env import trim_heap
from parity.core.results import StageResult
from parity.core.spec import FLOAT32_EPS
from parity.core.tensors import NOT_JUDGED_KEY, layer_scale_floor, tensor_diff
from parity.optim.adapters import get_adapter
from parity.stages.context import TRAIN_STAGES, CheckContext
from parity.stages.forward import compare_acts, diff_sink, layout_reader, ref_to_port_layout
from weight_converters.attention import PACKED_PARAMS, packed_value
from weight_converters.keras import var_to_torch


@dataclass(eq=False)
class Training:
    """What the training stages carry from one step to the next."""

    n_steps: int
    refs: list  # the reference's ParamRefs, each bound to the port's parameter
    params: dict  # the port's parameters by key
    old_stats: dict  # {BatchNorm tap path: its buffers before the first training forward}
    adapter: Any = None  # parity.optim.adapters: the optimizer on both sides (None: no step stage)
    opt_torch: Any = None
    step: StageResult | None = None
    traj: StageResult | None = None
    bn_chain: dict = field(default_factory=dict)  # {path: (torch running_var, its Keras equivalent)}
    series: dict = field(default_factory=dict)  # {tensor path: [rel after each step]}
    losses: list = field(default_factory=list)  # the port's loss at each step
    #: {"weights": parameters, "slots": optimizer-slot tensors} set to the reference's values after a step
    #: (the float32 step policy, ``_resync_to_reference``); {"unset": slot names the adapter cannot set}
    resynced: dict = field(default_factory=dict)


class _Param(NamedTuple):
    """One parameter in the step stage: the reference's ``ParamRef`` bound to the port's parameter, its tap,
    and its name in the result (``tap path:port suffix``)."""

    r: Any
    tap: Any
    name: str


class _LayerJudged:
    """Diffs re-judged against their layer's largest scale (``layer_scale_floor``): each remembers its group
    and how to compute it again with a floor."""

    def __init__(self):
        self.diffs: list = []
        self._how: dict[int, tuple[str, Callable]] = {}

    def add(self, group: str, compute: Callable) -> Any:
        """``compute(floor=0.0)`` returns the diff; returns it."""
        d = compute()
        self.diffs.append(d)
        self._how[id(d)] = (group, compute)
        return d

    def judged(self, what: str) -> list:
        return layer_scale_floor(self.diffs, lambda d: self._how[id(d)][0],
                                 lambda d, floor: self._how[id(d)][1](floor=floor), what=what)


def run(ctx: CheckContext) -> None:
    """The training stages asked for, step by step (see the module docstring)."""
    if not ctx.wants(*TRAIN_STAGES):
        return
    tr = start(ctx)
    for k in range(tr.n_steps):
        t = time.perf_counter()
        ctx.say(f"port: train forward + backward (step {k + 1}/{tr.n_steps})")
        loss, acts, act_diffs, grad_diffs = _forward_backward(ctx, k)
        if ctx.ts.error:  # the port cannot run a training batch: report what was tapped, stop training stages
            _report_broken(ctx, acts, act_diffs)
            return
        tr.losses.append(loss)
        if tr.adapter is not None and tr.n_steps > 1:
            bn_trajectory(ctx, tr, k)
        if k == 0:
            if "forward_train" in ctx.stages:
                ctx.result.stages.append(forward_train_stage(ctx, tr, t, acts, act_diffs))
            if "gradients" in ctx.stages:
                ctx.result.stages.append(gradients_stage(ctx, tr, t, loss, acts, grad_diffs))
            del acts, act_diffs, grad_diffs
            _release_first_batch(ctx)
        if tr.adapter is None:
            break
        optimizer_step(ctx, tr, k)
    _finish(ctx, tr)


def start(ctx: CheckContext) -> Training:
    """The port's BatchNorm buffers before training, its parameters bound to the reference's, and (for the
    step stage) the optimizer."""
    ts, ref = ctx.ts, ctx.ref
    old_stats = {t.path: {k: v.detach().clone() for k, v in ts.modules[t.port].named_buffers()}
                 for t in ctx.taps if t.kind == "batchnorm" and t.port in ts.modules}
    params = dict(ts.module.named_parameters())
    refs = [type(r)(r.key, r.layer, r.var, r.kind, params[r.key]) for r in with_companions(ref.param_refs)
            if r.key in params]  # with a GRU's bias_hh (Keras bias[1])
    tr = Training(n_steps=ctx.steps if "step" in ctx.stages else 1, refs=refs, params=params, old_stats=old_stats)
    if "step" in ctx.stages:
        tr.adapter = get_adapter(ctx.optimizer.kind)
        with_module = getattr(tr.adapter, "torch_optimizer_for_module", None)  # the user's factory takes the port
        tr.opt_torch = (with_module(ctx.optimizer, ts.module, refs, ref.l2) if with_module is not None
                        else tr.adapter.torch_optimizer(ctx.optimizer, refs, ref.l2))
        tr.step = StageResult("step", info={"optimizer": ctx.optimizer.kind, "steps": tr.n_steps})
        if hasattr(tr.opt_torch, "describe"):  # the user's optimizer: its param groups, for the diagnosis
            tr.step.info["port_optimizer"] = tr.opt_torch.describe({id(p): k for k, p in params.items()})
        tr.traj = StageResult("trajectory", info={"what": "per-parameter weight divergence, and BatchNorm running "
                                                          "statistics, after each step"})
    return tr


def _forward_backward(ctx: CheckContext, k: int):
    """The port's training forward and backward on batch ``k``: (loss, {path: output shape}, activation diffs,
    activation-gradient diffs). Batch 0's activations and gradients are compared as the port computes them."""
    ref, ts = ctx.ref, ctx.ts
    with Background() as background:  # the comparisons on a second core while the port computes
        act_sink, act_diffs = diff_sink(ref.train_acts if "forward_train" in ctx.stages else {},
                                        ctx.tol["forward_train"], read=layout_reader(ref, "train_acts"),
                                        background=background)
        grad_sink, grad_diffs = diff_sink(ref.act_grads if "gradients" in ctx.stages else {}, ctx.tol["gradients"],
                                          suffix=":grad", read=layout_reader(ref, "act_grads"), background=background)
        loss = ts.train_forward_backward(ref.inputs[k], ref.labels[k], ctx.spec.port_loss or ctx.spec.loss,
                                         sink=act_sink if k == 0 else None, grad_sink=grad_sink)
    acts = {p: r.output for p, r in ts.records.items()} if k == 0 else {}
    return loss, acts, act_diffs, grad_diffs


def _report_broken(ctx: CheckContext, acts, act_diffs) -> None:
    """The port raised in its training forward: what was tapped, and the later training stages not run."""
    error = ctx.ts.error
    st = StageResult("forward_train", errors=[error])
    compare_acts(st, ctx, ctx.ref.train_acts, acts, ctx.tol["forward_train"], diffs=act_diffs)
    ctx.result.stages.append(st)
    for name in ("gradients", "step"):
        if name in ctx.stages:
            ctx.result.stages.append(StageResult(name, errors=[f"not run: {error}"]))


def _release_first_batch(ctx: CheckContext) -> None:
    """Nothing after the first batch reads its activations or their gradients."""
    ctx.ts.records = {}
    if ctx.frees_reference:
        ctx.ref.train_acts, ctx.ref.act_grads = {}, {}
    gc.collect(1)
    trim_heap()


def _momentum(mod) -> float:
    """torch BatchNorm's update weight (``momentum=None``: a cumulative average, weight 1/num_batches_tracked)."""
    return mod.momentum if mod.momentum is not None else 1.0 / float(mod.num_batches_tracked.item())


# -- forward_train ----------------------------------------------------------------------------------------------
def forward_train_stage(ctx: CheckContext, tr: Training, t0: float, acts, act_diffs) -> StageResult:
    st = StageResult("forward_train", info={"running_var": RUNNING_VAR_CONVENTION})
    compare_acts(st, ctx, ctx.ref.train_acts, acts, ctx.tol["forward_train"], diffs=act_diffs)
    st.tensors += _bn_stat_diffs(ctx, tr)
    st.seconds = time.perf_counter() - t0 + ctx.ref.seconds.get("train", 0.0)
    return st


def _bn_stat_diffs(ctx: CheckContext, tr: Training) -> list:
    """Each BatchNorm's running mean and variance after the first batch against the reference's moving
    statistics (torch's unbiased variance update converted to Keras' biased one)."""
    ref, btol, out = ctx.ref, ctx.tol["bn_stats"], []
    for tap in ctx.taps:
        if tap.kind != "batchnorm" or tap.ref not in ref.bn_stats or tap.path not in tr.old_stats:
            continue
        mod = ctx.ts.modules[tap.port]
        if getattr(mod, "running_mean", None) is None:
            continue
        n = ref.bn_n[tap.ref]
        new_var = mod.running_var.detach().cpu().double().numpy()
        old_var = tr.old_stats[tap.path]["running_var"].cpu().double().numpy()
        keras_equiv = unbiased_to_biased_update(new_var, old_var, _momentum(mod), n)
        out.append(tensor_diff(f"{tap.path}:running_mean", ref.bn_stats[tap.ref]["moving_mean"],
                               mod.running_mean.detach().cpu().numpy(), btol))
        out.append(tensor_diff(f"{tap.path}:running_var", ref.bn_stats[tap.ref]["moving_variance"],
                               keras_equiv, btol, note="torch unbiased update -> biased (n=%d)" % n))
    return out


# -- gradients --------------------------------------------------------------------------------------------------
def gradients_stage(ctx: CheckContext, tr: Training, t0: float, loss, acts, grad_diffs) -> StageResult:
    ref, tol = ctx.ref, ctx.tol["gradients"]
    st = StageResult("gradients")
    st.tensors.append(tensor_diff("loss", np.array(ref.loss), np.array(loss), tol))
    for tap in ctx.taps:
        if tap.path not in ref.act_grads or tap.path not in acts or (
                tap.port_transform and tap.port_transform not in LAYOUT_TRANSFORMS):  # an axis move keeps grads
            continue
        if tap.path in grad_diffs:
            st.tensors.append(grad_diffs[tap.path])
        else:  # no gradient reached this output in the port (it does not feed the loss): zeros
            st.tensors.append(tensor_diff(f"{tap.path}:grad", ref_to_port_layout(tap, ref.act_grads[tap.path]),
                                          np.zeros(acts[tap.path]), tol))
    _param_grads(ctx, tr, st)
    st.seconds = time.perf_counter() - t0 + ref.seconds.get("train", 0.0)
    return st


def _param_grads(ctx: CheckContext, tr: Training, st: StageResult) -> None:
    """Every parameter's gradient, judged against its layer's scale (``layer_scale_floor``)."""
    ref = ctx.ref
    judged = _LayerJudged()
    for r in with_companions(ref.param_refs):  # a GRU's bias_hh too, against Keras' bias[1]
        tap = ctx.tap_by_ref.get(r.layer)
        suffix = r.key[len(tap.port) + 1:] if tap is not None and tap.port else r.key
        path = f"{tap.path if tap else r.layer}:{suffix}.grad"
        if tap is None or r.var not in ref.param_grads.get(r.layer, {}):
            continue
        if r.key not in tr.params:
            st.errors.append(f"{path}: port has no parameter {r.key}")
            continue
        judged.add(tap.path, functools.partial(_grad_diff, ctx, tr, r, tap, path))
    st.tensors += judged.judged("gradient")


def _ref_param(ctx: CheckContext, what: tuple, r, tap, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``: a parameter-shaped array of the reference in the port's layout (``var_to_torch`` of a gradient,
    an update, a slot), through a ``--watch`` session's memo (``parity.stages.forward.PortLayoutMemo``: the
    reference never changes there, and moving a conv kernel's layout was ~0.4 s of each xception check, twice that
    in a failing one whose tensors are judged again against their layer's scale). The array is the caller's own
    (the memo hands out a fresh copy)."""
    memo = getattr(ctx.ref, "port_layout", None)
    if memo is None:
        return compute()
    return memo.get(("param", *what, r.layer, r.var, r.key, r.kind, tap.flatten_chw), compute)


def _grad_diff(ctx: CheckContext, tr: Training, r, tap, path: str, floor: float = 0.0):
    g_ref_t = _ref_param(ctx, ("grad",), r, tap, lambda: var_to_torch(
        r.kind, r.var, ctx.ref.param_grads.get(r.layer, {}).get(r.var), flatten_chw=tap.flatten_chw))
    p = tr.params[r.key]
    g_port = p.grad.detach().cpu().numpy() if p.grad is not None else np.zeros(tuple(p.shape))
    return tensor_diff(path, g_ref_t, g_port, ctx.tol["gradients"], scale_floor=floor)


# -- step and trajectory ----------------------------------------------------------------------------------------
def optimizer_step(ctx: CheckContext, tr: Training, k: int) -> None:
    """Step ``k`` of the port's optimizer; each parameter's update and optimizer slots against the
    reference's (and, over several steps, the weights themselves for the trajectory)."""
    t = time.perf_counter()
    tr.adapter.torch_prepare(ctx.optimizer, k, tr.opt_torch)
    tr.opt_torch.step()
    at = f"@step{k + 1}" if tr.n_steps > 1 else ""
    factor = _sign_noise(ctx, tr)
    judged, weights = _LayerJudged(), _LayerJudged()
    for r in tr.refs:
        tap = ctx.tap_by_ref.get(r.layer)
        if tap is None:
            continue
        p = _Param(r, tap, f"{tap.path}:{r.key[len(tap.port) + 1:] if tap.port else r.key}")
        if tr.n_steps > 1:  # the weights themselves, step by step: how a small difference grows
            _weight_trajectory(ctx, tr, k, p, weights)
        skip = _below_sign_noise(ctx, tr, k, p, factor) if factor else None
        judged.add(f"{tap.path}|update", functools.partial(_update_diff, ctx, k, p, f"{p.name}.update{at}",
                                                           skip=skip, skip_why=_skip_why(tr, factor)))
        _slot_diffs(ctx, tr, k, p, at, judged)
    tr.step.tensors += judged.judged("update")
    if weights.diffs:  # the last step's weights, judged like updates (a bias whose gradient is analytically zero)
        tr.traj.tensors += weights.judged("weight")
    if ctx.tol["step"].resync and k + 1 < tr.n_steps:
        _resync_to_reference(ctx, tr, k)
    tr.step.seconds += time.perf_counter() - t + ctx.ref.seconds.get(f"step{k}", 0.0)


def _sign_noise(ctx: CheckContext, tr: Training) -> float | None:
    """The step policy's sign-noise factor (float32 only) when the optimizer's update is normalised per element
    (``OptimizerAdapter.sign_slot``), else None: every element is judged."""
    factor = ctx.tol["step"].sign_noise
    return factor if factor and getattr(tr.adapter, "sign_slot", None) else None


def _skip_why(tr: Training, factor: float | None) -> str:
    slot = getattr(tr.adapter, "sign_slot", None)
    return (f"|{slot}| within {factor:g}x its float32 noise |{slot}_ref - {slot}_port| (the sign of a normalised "
            f"update, about +-lr, is rounding there)") if factor else ""


def _below_sign_noise(ctx: CheckContext, tr: Training, k: int, p: _Param, factor: float):
    """Flat indices of the update elements of ``p`` not judged at step ``k``, per
    :class:`parity.core.spec.StageTolerance` ``sign_noise``: the sign slot (Adam's first moment) differs between
    the sides and ``|m_ref| <= factor x max(|m_ref - m_port|, FLOAT32_EPS x max|m_ref|)``. None (judge every
    element) when the slot itself is off by more than the step's norm-wise bound: then the difference is no
    rounding noise, and the slot's own comparison fails. Over several steps the earlier steps' differences are
    gone (``_resync_to_reference``), so this step's elements are all there is to leave out."""
    slot, r = tr.adapter.sign_slot, p.r
    src = (ctx.ref.steps[k]["slots"].get(r.key) or {}).get(slot)
    port = (tr.adapter.torch_slots(ctx.optimizer, k, tr.opt_torch, [r]).get(r.key) or {}).get(slot)
    if src is None or port is None:
        return None
    m_ref = np.asarray(var_to_torch(r.kind, r.var, src, flatten_chw=p.tap.flatten_chw)).reshape(-1)
    m_port = np.asarray(port).reshape(-1)
    if m_ref.shape != m_port.shape or not (np.isfinite(m_ref).all() and np.isfinite(m_port).all()):
        return None
    noise = np.abs(m_ref - m_port)
    norm_rtol = ctx.tol["step"].norm_rtol
    if norm_rtol is not None and float(np.linalg.norm(noise)) > norm_rtol * float(np.linalg.norm(m_ref)):
        return None
    mag = np.abs(m_ref)
    floor = FLOAT32_EPS * float(mag.max()) if mag.size else 0.0
    return np.flatnonzero((noise > 0) & (mag <= factor * np.maximum(noise, floor)))


def _resync_to_reference(ctx: CheckContext, tr: Training, k: int) -> None:
    """After judging step ``k`` (float32, ``StageTolerance.resync``): every parameter and its optimizer slots take
    the reference's values after step ``k``, so step ``k + 1`` starts from the same weights on both sides and is
    judged on its own. The model amplifies a weight difference into a gradient difference (see
    :class:`parity.core.spec.StageTolerance`): without this, step 2 would be judged on how chaotically step 1's
    float32 noise grows, not on the optimizer. Slots go through ``OptimizerAdapter.torch_state_from_slot``; one
    the adapter cannot set keeps the port's value (named in the trajectory info). BatchNorm running statistics
    are not touched: a training forward does not read them, and their trajectory still accumulates."""
    import torch

    spec, state = ctx.optimizer, getattr(tr.opt_torch, "state", {})
    for r in tr.refs:
        tap = ctx.tap_by_ref.get(r.layer)
        if tap is None:
            continue
        pairs = [(r.param, ctx.ref.steps[k]["params"][r.layer][r.var])]
        for slot, value in (ctx.ref.steps[k]["slots"].get(r.key) or {}).items():
            held = tr.adapter.torch_state_from_slot(spec, k, slot, value, opt=tr.opt_torch, param=r.param)
            st = state.get(r.param, {})
            if held is None or held[0] not in st:
                tr.resynced.setdefault("unset", set()).add(slot)
                continue
            pairs.append((st[held[0]], held[1]))
            tr.resynced["slots"] = tr.resynced.get("slots", 0) + 1
        with torch.no_grad():
            for dst, src in pairs:
                val = np.ascontiguousarray(var_to_torch(r.kind, r.var, src, flatten_chw=tap.flatten_chw))
                dst.copy_(torch.as_tensor(val.reshape(tuple(dst.shape)), dtype=dst.dtype, device=dst.device))
        tr.resynced["weights"] = tr.resynced.get("weights", 0) + 1


def _resync_why(tr: Training) -> str:
    unset = sorted(tr.resynced.get("unset", ()))
    return ("float32: after each step but the last, the port's weights" + (" and optimizer slots" if tr.resynced.get(
        "slots") else "") + " were set to the reference's, so each step is judged on its own from the same weights "
        "and the weights' trajectory shows each step's own divergence, not the accumulated one (float32 noise in "
        "one step's weights grows into a different next gradient); BatchNorm running statistics accumulate"
        + (f"; slots the optimizer adapter cannot set, left as the port computed them: {', '.join(unset)}"
           if unset else ""))


def _update_diff(ctx: CheckContext, k: int, p: _Param, path: str, floor: float = 0.0, skip=None, skip_why=""):
    """One parameter's update at step ``k`` (new - initial) on both sides. One loaded array at a time, freed as
    soon as used (GOTURN's fc6 is 0.6 GB per copy). ``skip``: elements not judged (``_below_sign_noise``)."""
    r, tap = p.r, p.tap
    upd_ref = _ref_param(ctx, ("update", k), r, tap, lambda: _ref_update(ctx, k, r, tap))
    new_port = r.param.detach().cpu().numpy()
    init_port = ctx.snapshot[0][r.key]  # the loaded weights, from the harness's snapshot (no second copy)
    if isinstance(init_port, np.ndarray):  # a fresh copy from the spill store: reuse its memory
        upd_port = np.subtract(new_port, init_port, out=init_port)
    else:
        upd_port = new_port - init_port.detach().cpu().numpy()
    del init_port
    return tensor_diff(path, upd_ref, upd_port, ctx.tol["step"], scale_floor=floor, skip=skip, skip_why=skip_why)


def _ref_update(ctx: CheckContext, k: int, r, tap) -> np.ndarray:
    """The reference's update of ``r`` at step ``k`` (its value after the step minus its initial value), in the
    port's layout, in memory of its own."""
    src = ctx.ref.steps[k]["params"][r.layer][r.var]
    upd_ref = var_to_torch(r.kind, r.var, src, flatten_chw=tap.flatten_chw)
    if np.may_share_memory(upd_ref, src):  # the layout change was a no-op: never write to the run's data
        upd_ref = upd_ref.copy()
    del src
    upd_ref -= var_to_torch(r.kind, r.var, _initial(ctx, r), flatten_chw=tap.flatten_chw)
    return upd_ref


def _initial(ctx: CheckContext, r):
    """The reference's initial value of ``r``'s variable; a packed ``in_proj_weight``/``in_proj_bias``
    (``parity.backends.keras_side.pack_attention_refs``) from its q/k/v variables."""
    layer = ctx.ref.weights[r.layer]
    return packed_value(r.var, layer) if r.kind == "attention_packed" and r.var in PACKED_PARAMS else layer[r.var]


def _slot_diffs(ctx: CheckContext, tr: Training, k: int, p: _Param, at: str, judged: _LayerJudged) -> None:
    """The optimizer slots (momentum, Adam moments...) of one parameter after step ``k``."""
    ref_slots = ctx.ref.steps[k]["slots"].get(p.r.key) or {}
    port_slots = (tr.adapter.torch_slots(ctx.optimizer, k, tr.opt_torch, [p.r]).get(p.r.key) or {}) if ref_slots else {}
    for slot in ref_slots:
        if slot not in port_slots:
            tr.step.errors.append(f"{p.name}: port optimizer has no '{slot}' slot")
            continue
        judged.add(f"{p.tap.path}|{slot}", functools.partial(_slot_diff, ctx, tr, k, p, slot, f"{p.name}.{slot}{at}"))


def _slot_diff(ctx: CheckContext, tr: Training, k: int, p: _Param, slot: str, path: str, floor: float = 0.0):
    r = p.r
    sref = _ref_param(ctx, ("slot", k, slot), r, p.tap, lambda: var_to_torch(
        r.kind, r.var, ctx.ref.steps[k]["slots"][r.key][slot], flatten_chw=p.tap.flatten_chw))
    # this parameter's slots only (a full copy of GOTURN's momentum is 0.9 GB)
    pv = (tr.adapter.torch_slots(ctx.optimizer, k, tr.opt_torch, [r]).get(r.key) or {}).get(slot)
    return tensor_diff(path, sref, pv, ctx.tol["step"], scale_floor=floor)


def _weight_trajectory(ctx: CheckContext, tr: Training, k: int, p: _Param, judged: _LayerJudged) -> None:
    """Step ``k``'s weights of one parameter: its relative difference joins the plotted series; after the last
    step the tensor is judged against its layer's largest weight (``layer_scale_floor``), so a conv bias before a
    BatchNorm, whose gradient is analytically zero and whose Adam steps are rounding noise, is not a false alarm."""
    r = p.r
    ref_w = _ref_param(ctx, ("weight", k), r, p.tap, lambda: var_to_torch(
        r.kind, r.var, ctx.ref.steps[k]["params"][r.layer][r.var], flatten_chw=p.tap.flatten_chw))
    port_w = r.param.detach().cpu().numpy().copy()

    def diff(floor: float = 0.0):
        return tensor_diff(p.name, ref_w, port_w, ctx.tol["trajectory"], scale_floor=floor)

    if k == tr.n_steps - 1:
        w = judged.add(f"{p.tap.path}|weight", diff)
    else:
        w = diff()
    tr.series.setdefault(w.path, []).append(w.rel)


def bn_trajectory(ctx: CheckContext, tr: Training, k: int) -> None:
    """Step ``k``'s BatchNorm running statistics against the reference's moving statistics (a momentum bug
    changes these, never the weights: train-mode BN normalises with batch statistics). torch's unbiased
    running variance is carried as the Keras-equivalent biased chain (``tr.bn_chain[path]`` = (torch value,
    Keras equivalent) after the previous step)."""
    ref = ctx.ref
    rstats = ref.steps[k].get("bn_stats") if k < len(ref.steps) else None
    if not rstats:
        return
    for tap in ctx.taps:
        mod = ctx.ts.modules.get(tap.port)
        if tap.kind != "batchnorm" or tap.ref not in rstats or tap.path not in tr.old_stats or mod is None \
                or getattr(mod, "running_mean", None) is None or tap.ref not in ref.bn_n:
            continue
        rv = mod.running_var.detach().cpu().double().numpy().copy()  # a copy: the buffer is updated in place
        old_rv = tr.old_stats[tap.path]["running_var"]
        prev_rv, prev_kv = tr.bn_chain.get(tap.path) or (old_rv.cpu().double().numpy(),) * 2
        kv = unbiased_to_biased_update(rv, prev_rv, _momentum(mod), ref.bn_n[tap.ref], old_keras_var=prev_kv)
        tr.bn_chain[tap.path] = (rv, kv)
        for name, rval, pval in (("running_mean", rstats[tap.ref]["moving_mean"],
                                  mod.running_mean.detach().cpu().numpy().copy()),
                                 ("running_var", rstats[tap.ref]["moving_variance"], kv)):
            w = tensor_diff(f"{tap.path}:{name}", rval, pval, ctx.tol["trajectory"])
            tr.series.setdefault(w.path, []).append(w.rel)
            if k == tr.n_steps - 1:
                tr.traj.tensors.append(w)


def _finish(ctx: CheckContext, tr: Training) -> None:
    """The step stage, and the trajectory over several steps, into the result."""
    if tr.adapter is None:
        return
    tr.step.info["rules"] = list(tr.adapter.rules)
    skipped = sum(int((d.extra or {}).get(NOT_JUDGED_KEY, 0)) for d in tr.step.tensors)
    if skipped:  # the float32 sign-noise policy (``_below_sign_noise``): how many update elements, in all
        updates = sum(d.numel for d in tr.step.tensors if ".update" in d.path)
        tr.step.info["not_judged"] = (f"{skipped} of {updates} update elements (all steps) not judged: "
                                      f"{_skip_why(tr, _sign_noise(ctx, tr))}")
    if getattr(tr.opt_torch, "applied", None):  # same-setting conventions applied to the user's optimizer
        tr.step.info["applied"] = list(tr.opt_torch.applied)
    if tr.resynced:  # the float32 multi-step policy (``_resync_to_reference``)
        why = _resync_why(tr)
        tr.step.info["resynced"] = why
        tr.traj.info["resynced"] = why
    ctx.result.stages.append(tr.step)
    if tr.n_steps > 1:
        tr.traj.info.update(steps=list(range(1, tr.n_steps + 1)), series=tr.series,
                            lr=[ctx.optimizer.lr_at(k) for k in range(tr.n_steps)],
                            losses={"reference": [s["loss"] for s in ctx.ref.steps], "port": tr.losses})
        ctx.result.stages.append(tr.traj)
