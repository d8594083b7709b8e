"""The user's training configuration against the reference's compiled one (:mod:`parity.optim.user`): the torch
optimizer's param groups (class, learning rate, momentum and Nesterov, Adam's epsilon and betas, weight decay per
parameter) against the Keras optimizer's config and the Keras layers' ``l2`` regularisers, and the user's loss
against the compiled loss (applied to probabilities, reduction, label smoothing, ``from_logits``).

The configurations are compared before any number is read, so a finding is named at its layer even when the
step's numbers are the first evidence; a user pair trained with parity's own configuration says so.
"""
from __future__ import annotations

import numpy as np

from parity.core.conventions import torch_weight_decay_from_keras_l2
from parity.core.results import Finding
from parity.diagnosis.common import Run, base, close, finding, port_train_output
from parity.diagnosis.registry import result_rule, stage_rule
from parity.optim.user import USER_KIND, same_setting

#: what a user pair trained with parity's own optimizer and loss says (report settings, findings)
TOOL_OWN = ("parity's own (not yours): both sides trained with parity's optimizer and loss; pass --port-optimizer "
            "MOD:FN and --port-loss MOD:FN (parity.compare(..., port_optimizer=, port_loss=)) with a compiled "
            "Keras model to compare your training step")

#: ... with the user's loss but parity's optimizer
TOOL_OWN_OPTIMIZER = ("your loss against the reference's compiled loss, with parity's own optimizer on both sides "
                      "(not yours): pass --port-optimizer MOD:FN (port_optimizer=) to compare your optimizer step")


def _severity(run: Run) -> str:
    failed = any(not s.passed for s in run.result.stages if s.name in ("gradients", "step", "trajectory"))
    return "error" if failed else "warning"


def _failing_paths(run: Run) -> set[str]:
    st = run.result.stage("step")
    return {base(t.path) for t in st.tensors if not t.passed} if st is not None else set()


def _first_step_path(run: Run) -> str | None:
    st = run.result.stage("step")
    fd = st.first_divergence if st is not None else None
    return base(fd.path) if fd is not None else None


@result_rule(order=7)
def training_configuration(run: Run) -> list[Finding]:
    """Compare the two training configurations (module docstring); findings go into the result in place, before
    the numeric rules, so that the step's first divergence finds its cause here."""
    result = run.result
    opt = result.optimizer if isinstance(result.optimizer, dict) else {}
    if opt.get("kind") != USER_KIND:
        if getattr(run.spec, "alignment", None) is None:
            return []
        own = TOOL_OWN if getattr(run.spec, "port_loss", None) is None else TOOL_OWN_OPTIMIZER
        opt.setdefault("training_configuration", own)
        return [Finding("training_configuration", "model", "training configuration: " + own,
                        "compile the Keras model and pass your optimizer and loss factories", severity="info")]
    step = result.stage("step")
    port = (step.info.get("port_optimizer") or {}) if step is not None else {}
    found = _optimizer_findings(run, opt.get("reference") or {}, port)
    result.findings[:0] = found
    return []


def _layer_of(run: Run) -> dict[str, tuple]:
    """torch key -> (tap path, reference layer, variable, kind)."""
    taps = {t.ref: t for t in run.taps}
    out = {}
    for r in getattr(run.ref, "param_refs", None) or []:
        tap = taps.get(r.layer)
        out[r.key] = (tap.path if tap is not None else r.layer, r.layer, r.var, r.kind)
    return out


def _optimizer_findings(run: Run, keras: dict, port: dict) -> list[Finding]:
    sev, out = _severity(run), []
    where = _first_step_path(run) or "optimizer"
    kcls, tcls = str(keras.get("class", "")), str(port.get("class", ""))
    groups = port.get("groups") or []

    def add(cause, message, fix, path=None):
        out.append(finding(cause, path or where, message, fix, "step", severity=sev,
                           evidence=f"reference {kcls} {keras}; port {tcls}"))

    clip = {k: keras[k] for k in ("clipnorm", "clipvalue", "global_clipnorm") if keras.get(k)}
    if clip:
        clips = ", ".join(f"{k}={v:g}" for k, v in clip.items())
        add("gradient_clipping", f"the reference's {kcls} clips gradients ({clips}); the port's optimizer step "
            "does not", "clip in the port before optimizer.step() "
            "(torch.nn.utils.clip_grad_norm_ per parameter for clipnorm, clip_grad_norm_ over all for "
            "global_clipnorm, clip_grad_value_ for clipvalue), e.g. in a torch.optim.Optimizer subclass's step")
    if kcls and tcls and kcls != tcls and not (kcls == "Adam" and tcls == "AdamW"):
        add("optimizer_class", f"optimizer: the reference trains with Keras {kcls}, the port with torch {tcls}",
            f"use torch.optim.{kcls} with the reference's hyper-parameters")
        return out
    of = _layer_of(run)
    failing = _failing_paths(run)
    for key in port.get("missing") or []:
        if key in of:
            add("parameter_not_optimized", f"{key} is trained by the reference and not in the port's optimizer (its "
                "param groups leave it out): the port never updates it", "include every trainable parameter "
                "(model.parameters(), or param groups that cover them all)", path=of[key][0])
    for i, g in enumerate(groups):
        paths = [of[k][0] for k in g.get("params") or [] if k in of]
        where = next((p for p in paths if p in failing), paths[0] if paths else where)
        lr = keras.get("learning_rate")
        if isinstance(lr, (int, float)) and "lr" in g and not same_setting(g["lr"], lr):
            add("learning_rate", f"learning rate {g['lr']:g} in the port (param group {i}), {lr:g} in the "
                f"reference's compiled {kcls}", f"lr={lr:g}")
        if kcls == "SGD":
            if not same_setting(g.get("momentum", 0.0), keras.get("momentum", 0.0)):
                add("momentum", f"SGD momentum {g.get('momentum', 0.0):g} in the port (param group {i}), "
                    f"{keras.get('momentum', 0.0):g} in the reference", f"momentum={keras.get('momentum', 0.0):g}")
            if bool(g.get("nesterov", False)) != bool(keras.get("nesterov", False)):
                add("nesterov", f"Nesterov momentum {'on' if g.get('nesterov') else 'off'} in the port (param group "
                    f"{i}), {'on' if keras.get('nesterov') else 'off'} in the reference",
                    f"nesterov={bool(keras.get('nesterov', False))}")
            if g.get("dampening"):
                add("momentum", f"SGD dampening {g['dampening']:g} in the port; Keras SGD has none", "dampening=0")
        if kcls in ("Adam", "AdamW"):
            if "eps" in g and not same_setting(g["eps"], keras.get("epsilon")):
                add("adam_epsilon", f"Adam epsilon {g['eps']:g} in the port (param group {i}), "
                    f"{keras.get('epsilon'):g} in the reference (Keras adds it to the uncorrected sqrt(v), torch to "
                    "the corrected one; parity converts the placement once the values agree)",
                    f"eps={keras.get('epsilon'):g} (Keras 3's default is 1e-7, torch's 1e-8)")
            betas = g.get("betas") or []
            if len(betas) == 2 and not (same_setting(betas[0], keras.get("beta_1"))
                                        and same_setting(betas[1], keras.get("beta_2"))):
                add("adam_betas", f"Adam betas {tuple(betas)} in the port, ({keras.get('beta_1'):g}, "
                    f"{keras.get('beta_2'):g}) in the reference", "betas=(beta_1, beta_2) of the reference")
            if bool(g.get("amsgrad", False)) != bool(keras.get("amsgrad", False)):
                add("adam_amsgrad", "amsgrad differs between the port and the reference",
                    f"amsgrad={bool(keras.get('amsgrad', False))}")
    out += _weight_decay_findings(run, keras, tcls, groups, sev)
    return out


def _role(var: str, kind: str) -> str:
    if kind == "batchnorm":
        return "BatchNorm"
    return "bias" if var in ("bias", "beta") else "kernel"


def _weight_decay_findings(run: Run, keras: dict, tcls: str, groups: list, sev: str) -> list[Finding]:
    """Per layer: the coupled weight decay the reference's l2 regularisers amount to (2*lam on kernels of
    regularised layers, 0 elsewhere) against the port's."""
    l2 = getattr(run.ref, "l2", None) or {}
    of = _layer_of(run)
    per_layer: dict[str, list] = {}
    for g in groups:
        wd = float(g.get("weight_decay") or 0.0)
        for key in g.get("params") or []:
            if key not in of:
                continue
            path, layer, var, kind = of[key]
            lam = float(l2.get(layer, 0.0)) if _role(var, kind) == "kernel" else 0.0
            per_layer.setdefault(path, []).append((key, var, kind, lam, wd, layer))
    out = []
    decoupled = tcls == "AdamW"
    kwd = keras.get("weight_decay")
    if kwd:  # Keras' optimizer weight_decay is decoupled: w -= lr*wd*w, on every variable, before the update
        wds = {float(g.get("weight_decay") or 0.0) for g in groups}
        if not decoupled or wds != {float(kwd)}:
            where = _first_step_path(run) or "optimizer"
            out.append(finding("weight_decay", where, f"the reference's {keras.get('class')}(weight_decay={kwd:g}) "
                               "decays decoupled (w -= lr*wd*w, every variable); the port's "
                               f"{tcls} weight_decay {sorted(wds)} " + ("is coupled (added to the gradient)"
                                                                          if not decoupled else "differs"),
                               f"torch.optim.AdamW(weight_decay={kwd:g}) on every parameter" if keras.get("class")
                               in ("Adam", "AdamW") else f"decoupled weight decay {kwd:g}", "step", severity=sev))
            return out
        decoupled = "keras"  # matched: the l2 rules below compare the coupled part only
    for path, items in per_layer.items():
        for key, var, kind, lam, wd, layer in items:
            want = torch_weight_decay_from_keras_l2(lam) if lam else 0.0
            if decoupled == "keras":
                if lam:
                    out.append(finding("l2_weight_decay", path, f"Keras l2({lam:g}) on {layer} is coupled (2*lam*w "
                                       "added to the gradient, through Adam's normalisation); AdamW has no coupled "
                                       "decay for it", "add 2*lam*w to the gradient of that kernel (or the l2 term "
                                       "to the loss)", "step", severity=sev))
                    break
                continue
            if decoupled and wd and not keras.get("weight_decay"):
                msg = (f"AdamW decouples weight_decay={wd:g} (w -= lr*wd*w) on {key}; the reference "
                       + (f"adds Keras l2({lam:g}) to its loss (coupled: through Adam's normalisation)" if lam
                          else "has no weight decay there"))
                out.append(finding("weight_decay", path, msg, "torch.optim.Adam with weight_decay=2*lam on the "
                                   "l2 kernels only (coupled, as Keras l2)", "step", severity=sev))
                break
            if decoupled:
                continue
            if lam and not wd:
                out.append(finding("l2_weight_decay", path, f"weight decay missing: Keras l2({lam:g}) on {layer} "
                                   f"adds 2*lam*w = {want:g}*w to the gradient of {key}; the port's optimizer has "
                                   "no weight_decay on it", f"a param group with weight_decay={want:g} for exactly "
                                   "the l2-regularised kernels (parity.core.conventions.torch_weight_decay_from_keras_"
                                   "l2)", "step", severity=sev))
                break
            if lam and close(wd, lam, 1e-6):
                out.append(finding("l2_weight_decay", path, f"weight_decay {wd:g} on {key} = lam, not 2*lam: Keras "
                                   f"l2({lam:g}) adds lam*sum(w**2) to the loss, whose gradient is 2*lam*w",
                                   f"weight_decay={want:g} (2*lam)", "step", severity=sev))
                break
            if lam and not same_setting(wd, want):
                out.append(finding("l2_weight_decay", path, f"weight_decay {wd:g} on {key}; Keras l2({lam:g}) on "
                                   f"{layer} amounts to {want:g} (2*lam)", f"weight_decay={want:g}", "step",
                                   severity=sev))
                break
            if not lam and wd:
                what = _role(var, kind)
                why = ("a BatchNorm parameter" if what == "BatchNorm" else "a bias" if what == "bias"
                       else f"a kernel of {layer}, which has no kernel_regularizer")
                out.append(finding("weight_decay_unregularised", path, f"weight_decay {wd:g} on {key}, {why}: the "
                                   "reference regularises only kernels with an l2 kernel_regularizer (Keras l2 never "
                                   "reaches biases or BatchNorm)", "param groups: weight_decay=2*lam on the l2 "
                                   "kernels, 0 on everything else (biases, BatchNorm, unregularised layers)", "step",
                                   severity=sev))
                break
    return out


# -- the user's loss ---------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(logits: np.ndarray, y: np.ndarray, reduction: str = "mean", smoothing: float = 0.0) -> float:
    logp = np.log(_softmax(logits))
    n = y.shape[1]
    t = y * (1 - smoothing) + smoothing / n
    per = -(t * logp).sum(axis=1)
    return float(per.mean() if reduction == "mean" else per.sum())


KERAS_EPSILON = 1e-7
"""keras.config.epsilon(): Keras' categorical cross-entropy on probabilities clips them to [eps, 1 - eps] after
dividing by their sum (keras/src/backend/tensorflow/nn.py ``categorical_crossentropy``)."""


def _keras_ce_on_values(values: np.ndarray, y: np.ndarray, reduction: str, smoothing: float) -> float:
    """Keras' ``categorical_crossentropy(from_logits=False)`` of ``values`` taken as probabilities."""
    p = np.clip(values / values.sum(axis=1, keepdims=True), KERAS_EPSILON, 1 - KERAS_EPSILON)
    n = y.shape[1]
    t = y * (1 - smoothing) + smoothing / n
    per = -(t * np.log(p)).sum(axis=1)
    return float(per.mean() if reduction == "mean" else per.sum())


def _port_logits(run: Run):
    """The port's train-mode output on the reference's first batch, float64."""
    return port_train_output(run, lambda out: out.double())


@stage_rule("gradients", order=40)
def user_loss(run: Run, stage, diff) -> list[Finding]:
    """The user's loss differs from the compiled one: which well-known form the port's loss value is (on
    probabilities, sum instead of mean, label smoothing), or the reference's ``from_logits`` on probabilities."""
    loss_t = next((t for t in stage.tensors if t.path == "loss"), None)
    spec = run.spec
    if loss_t is None or loss_t.passed or spec is None or not callable(getattr(spec, "port_loss", None)) \
            or run.ts is None or run.ref is None or spec.loss.name != "categorical_crossentropy":
        return []
    z = _port_logits(run)
    y = np.asarray(run.ref.labels[0], dtype=np.float64)
    if z.ndim != 2 or z.shape != y.shape:
        return []
    port, ref = loss_t.port_value, loss_t.ref_value
    red, ls = spec.loss.reduction, spec.loss.label_smoothing
    ev = f"loss reference {ref:.6g}, port {port:.6g}"
    fix_red = "reduction='mean' (Keras' sum_over_batch_size)" if red == "mean" else "reduction='sum'"
    for r in ("mean", "sum"):
        if close(port, _ce(_softmax(z), y, r, ls), 1e-6):
            return [finding("loss_on_probabilities", "loss", "the port's loss is cross-entropy applied to "
                            "probabilities (softmax(output) fed to CrossEntropyLoss, which applies log_softmax "
                            "again)" + (f", reduced with {r}" if r != red else ""),
                            "feed the logits to nn.CrossEntropyLoss / F.cross_entropy (no softmax before it)",
                            "gradients", evidence=ev)]
    other = "sum" if red == "mean" else "mean"
    if close(port, _ce(z, y, other, ls), 1e-6):
        return [finding("loss_reduction", "loss", f"loss reduction: the port reduces with {other} over the batch, "
                        f"the reference with {red} (Keras {'sum_over_batch_size' if red == 'mean' else 'sum'})",
                        f"use {fix_red} in the port's loss", "gradients", evidence=ev)]
    if not spec.loss.reference_from_logits and close(ref, _keras_ce_on_values(z, y, red, ls), 1e-6):
        return [finding("from_logits", "loss", "the reference's compiled loss reads its model's logits as "
                        "probabilities (from_logits=False on an output without softmax: Keras normalises and clips "
                        "them); the port's loss takes logits", "compile the Keras model with "
                        "CategoricalCrossentropy(from_logits=True) (or end it in softmax)", "gradients", evidence=ev)]
    ce = _ce(z, y, red, 0.0)
    uni = _ce(z, y, red, 1.0) * 1.0
    if abs(uni - ce) > 1e-12:
        e_port = (port - ce) / (uni - ce)
        if abs(e_port - ls) > 1e-4 and 0 <= e_port < 1 and abs(e_port - round(e_port, 3)) < 1e-4:
            return [finding("label_smoothing", "loss", f"label smoothing {round(e_port, 3):g} in the port's loss, "
                            f"{ls:g} in the reference's compiled loss", f"label_smoothing={ls:g}", "gradients",
                            evidence=ev)]
    return []
