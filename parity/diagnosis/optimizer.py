"""Rules for a first divergence in the optimizer step (gradients agree, updates do not): where the learning rate
sits in the momentum recursion, per-layer lr multipliers, Keras L2 against torch weight decay, and Adam's
epsilon placement."""
from __future__ import annotations

from parity.core.conventions import torch_adam_eps_from_keras, torch_weight_decay_from_keras_l2
from parity.core.results import Finding, TensorDiff
from parity.diagnosis.common import Run, base, close, finding
from parity.diagnosis.registry import stage_rule
from weight_converters.keras import LAYER_VARS, var_to_torch


@stage_rule("step", "trajectory")
def step_rules(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """Only when the gradients agree: lr schedule, lr_mult, L2, Adam epsilon, else the generic optimizer cause."""
    grads = run.result.stage("gradients")
    if grads is not None and not grads.skipped and not grads.passed:
        return []
    opt = run.result.optimizer or {}
    kind = str(opt.get("kind", ""))
    path = base(diff.path)
    failing = [t for t in stage.tensors if not t.passed]
    for rule in (lr_schedule_rule, lr_mult_rule):
        f = rule(run, stage, diff, opt)
        if f is not None:
            return [f]
    l2 = opt.get("l2") or {}
    if l2 and failing:
        layers = {base(t.path): run.ref_layer(base(t.path)) for t in failing}
        if all(layer in l2 for layer in layers.values()) and all(
                "weight" in t.path.split(":")[1] for t in failing if ":" in t.path):
            return [l2_rule(run, path, diff, l2, layers, opt)]
    if kind.startswith("adam"):
        f = adam_eps_rule(run, path, diff, opt)
        if f is not None:
            return [f]
        msg = ("gradients agree but the Adam update differs: epsilon placement (Keras adds eps to the "
               "uncorrected sqrt(v); torch to the corrected one) or beta/eps values")
        fix = "torch eps = keras_eps / sqrt(1 - beta_2**t) (parity.core.conventions.torch_adam_eps_from_keras)"
    else:
        msg = ("gradients agree but the optimizer update differs: weight decay / L2 (Keras l2(lam) == "
               "torch weight_decay 2*lam), momentum convention, lr_mult, or lr schedule")
        fix = "configure the torch optimizer with the named rules in parity.optim.adapters"
    return [finding("optimizer", path, msg, fix, stage.name, evidence=diff.describe())]


def step_of(path: str) -> int:
    """``k`` of a ``...@stepk`` tensor path (1 without a suffix: a one-step check)."""
    tail = path.rsplit("@step", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 1


def lr_schedule_rule(run: Run, stage, diff, opt) -> Finding | None:
    """Every update agrees until the step where the learning rate changes: the two optimizers put the lr in
    different places of the momentum recursion (Caffe SGD: ``h = mu*h + lr*g; w -= h``, the old lr stays in
    the history; torch SGD: ``buf = mu*buf + g; w -= lr*buf``, the new lr scales the whole buffer)."""
    k = step_of(diff.path)
    lrs = [float(x) for x in (opt.get("lr_schedule") or [])]
    if k < 2 or len(lrs) < k or close(lrs[k - 1], lrs[k - 2], 1e-12):
        return None
    if any(not t.passed for t in stage.tensors if step_of(t.path) < k):
        return None
    return finding(
        "lr_in_momentum", base(diff.path),
        f"the updates agree until step {k}, where the learning rate changes ({lrs[k - 2]:g} -> {lrs[k - 1]:g}): "
        "the port's optimizer applies the new lr to its whole momentum buffer (torch SGD: buf = mu*buf + g, "
        "w -= lr*buf) where the reference keeps each step's lr inside its history (Caffe SGD: h = mu*h + lr*g, "
        "w -= h)",
        "use an optimizer with Caffe's rule (ported_torch.optim.CaffeSGD), or rescale the momentum buffers by "
        "lr_old/lr_new at the lr change", stage.name,
        evidence=f"{sum(1 for t in stage.tensors if step_of(t.path) < k)} update/slot tensors of steps < {k} "
                 f"agree; {diff.describe()}")


def lr_mult_of(opt: dict, layer: str | None, var: str) -> float | None:
    """The solver's lr multiplier of a layer's variable (1.0 when the table does not name it; None: no table)."""
    table = opt.get("lr_mult") or {}
    if not table or layer is None:
        return None
    role = "bias" if var in ("bias", "beta") else "kernel"
    for key in (f"{layer}:{var}", f"{layer}:{role}", f"{layer}/{var}", layer):
        if key in table:
            return float(table[key])
    return 1.0


def lr_mult_rule(run: Run, stage, diff, opt) -> Finding | None:
    """A parameter the reference's solver freezes (``lr_mult: 0``) changes in the port, or its update is the
    reference's divided by the layer's ``lr_mult``: the port's optimizer lost the per-layer multipliers."""
    if ".update" not in diff.path or not opt.get("lr_mult"):
        return None
    path = base(diff.path)
    var = "bias" if ":bias" in diff.path else "kernel"
    lm = lr_mult_of(opt, run.ref_layer(path), var)
    if lm is None or lm == 1.0:
        return None
    fix = ("one param group per layer with the solver's multipliers (lr = base_lr * lr_mult, weight_decay = "
           "wd * decay_mult; lr_mult 0: requires_grad=False): ported_torch.optim.CaffeSGD takes them per group")
    if lm == 0.0 and diff.scale == 0.0 and diff.max_abs > 0:
        return finding("lr_mult", path, f"the reference's solver freezes {path} (lr_mult 0: its update is exactly "
                       "0) but the port updates it", fix, stage.name, evidence=diff.describe())
    if lm and diff.ref_value and close(diff.port_value / diff.ref_value, 1.0 / lm, 1e-3):
        return finding("lr_mult", path, f"the port's update of {path} is the reference's divided by {lm:g}: "
                       f"lr_mult {lm:g} is missing in the port's optimizer", fix, stage.name,
                       evidence=diff.describe())
    return None


def _implied_weight_decay(run: Run, path, diff, want, opt):
    """(implied port weight decay, evidence) from one diverging kernel update, or (None, "")."""
    if run.ref is None or diff.index is None or not diff.path.split(":")[-1].startswith("weight.update"):
        return None, ""
    tap = run.tap_by_path.get(path)
    w = run.ref.weights.get(tap.ref, {}).get("kernel") if tap is not None else None
    if w is None:
        return None, ""
    w_t = var_to_torch(tap.kind, "kernel", w, flatten_chw=tap.flatten_chw)
    wi = float(w_t[diff.index])
    lr = float(opt.get("lr", 0.0))
    if not (wi and lr):
        return None, ""
    # torch update = -lr (g + wd w); reference = -lr (g + 2 lam w)
    implied = want - (diff.port_value - diff.ref_value) / (lr * wi)
    return implied, (f"; port - reference update = {diff.port_value - diff.ref_value:.3g} = lr*(2*lam - wd)*w "
                     f"with w = {wi:.4g}: implied port weight_decay {implied:.4g}, needed {want:.4g}")


def l2_rule(run: Run, path, diff, l2, layers, opt) -> Finding:
    """Only the kernels with a Keras l2 regulariser differ: the port's weight decay is not 2*lam on them."""
    names = sorted(set(layers.values()))
    lam = float(l2[names[0]])
    want = torch_weight_decay_from_keras_l2(lam)
    implied, more = _implied_weight_decay(run, path, diff, want, opt)
    ev = f"only the kernels with a Keras l2 regulariser differ ({', '.join(names)})" + more
    if implied is not None and abs(implied) < 1e-3 * want:
        what = "the port has no weight decay on them"
    elif implied is not None and close(implied, lam, 1e-3):
        what = f"the port uses weight_decay={lam:g} (= lam, not 2*lam)"
    elif implied is not None:
        what = f"the port's effective weight_decay is {implied:.4g}"
    else:
        what = "the port's weight decay on them differs"
    return finding("l2_weight_decay", path,
                   f"Keras l2({lam:g}) on {', '.join(names)} adds 2*lam*w = {want:g}*w to the gradient; {what}",
                   f"torch weight_decay={want:g} on exactly those kernels (parity.core.conventions."
                   "torch_weight_decay_from_keras_l2)", "step", evidence=ev)


def adam_eps_rule(run: Run, path, diff, opt) -> Finding | None:
    """Step 1: torch's update with a plain eps is -lr * g / (|g| + eps); Keras' -lr * g / (|g| + eps / sqrt(1 - b2))."""
    if run.ref is None or diff.index is None or ":" not in diff.path or ".update" not in diff.path:
        return None
    tap = run.tap_by_path.get(path)
    if tap is None:
        return None
    suffix = diff.path.split(":")[1].split(".update")[0]
    key = f"{tap.port}.{suffix}" if tap.port else suffix
    grads = run.ref.param_grads.get(tap.ref, {})
    var = next((v for v, s in LAYER_VARS.get(tap.kind, {}).items() if s == suffix and v in grads), None)
    g_ref = grads.get(var) if var else None
    if g_ref is None:
        return None
    g = float(var_to_torch(tap.kind, var, g_ref, flatten_chw=tap.flatten_chw)[diff.index])
    lr, eps, b2 = float(opt.get("lr", 0)), float(opt.get("epsilon", 0)), float(opt.get("beta_2", 0.999))
    if g == 0 or not lr:
        return None
    plain = -lr * g / (abs(g) + eps)
    if not close(diff.port_value, plain, 1e-6):
        return None
    good = torch_adam_eps_from_keras(eps, b2, 1)
    return finding(
        "adam_epsilon", path,
        f"Adam epsilon: the port uses torch.optim.Adam(eps={eps:g}) as given to Keras; Keras adds eps to the "
        f"uncorrected sqrt(v), torch to the bias-corrected one, so torch needs eps/sqrt(1-beta_2**t) "
        f"({good:.3g} at step 1)",
        "set group['eps'] = keras_eps / sqrt(1 - beta_2**t) every step "
        "(parity.core.conventions.torch_adam_eps_from_keras)", "step",
        evidence=f"{key} at {diff.index}: gradient {g:.4g}; port update {diff.port_value:.6g} = -lr*g/(|g|+eps) "
                 f"= {plain:.6g}; reference {diff.ref_value:.6g}")
