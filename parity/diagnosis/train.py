"""Rules for a first divergence in training: the train-mode forward (a BatchNorm kept in eval mode, a dropout
only one side has, the running variance's n/(n-1)) and the gradients (the loss reduction, label smoothing,
a loss or gradient scale)."""
from __future__ import annotations

import numpy as np

from parity.core.conventions import torch_bn_momentum_from_keras
from parity.core.results import Finding, TensorDiff
from parity.diagnosis.common import Run, base, close, dropout_modules, finding, port_train_output
from parity.diagnosis.registry import stage_rule


# ---- forward (train) ------------------------------------------------------------------------------------
@stage_rule("forward_train")
def forward_train_rules(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """Only running_var differs: the variance convention; a BatchNorm's output differs: it stays in eval
    mode; anything else: a train-only op (dropout) that the two sides do not share."""
    path = base(diff.path)
    failing = [t for t in stage.tensors if not t.passed]
    stats_only = all(":running_" in t.path for t in failing)
    if stats_only and all(t.path.endswith(":running_var") for t in failing):
        return [running_var_rule(run, path, diff)]
    if ":running_" in diff.path:
        return []
    if run.kind(path) == "batchnorm":
        return [_bn_in_eval_mode(run, path, stage, diff)]
    drops = dropout_modules(run)
    return [finding(
        "train_eval_mode", path,
        f"a train-mode-only difference before {path}: the eval forward agrees, the train forward does not "
        "(dropout or another train-only op that the reference lacks or has with another rate)"
        + (f"; port modules: {', '.join(drops)}" if drops else ""),
        "remove the extra dropout or give it the reference's rate", stage.name, evidence=diff.describe())]


def _bn_in_eval_mode(run: Run, path, stage, diff: TensorDiff) -> Finding:
    ev = ""
    if run.ts is not None and path in run.tap_by_path:
        mod = run.ts.modules.get(run.tap_by_path[path].port)
        if mod is not None:
            was = run.ts.module.training
            run.ts.module.train()
            stays = not mod.training
            run.ts.module.train(was)
            if stays:
                ev = f"after module.train(), {run.tap_by_path[path].port}.training is still False"
    return finding(
        "train_eval_mode", path,
        f"BatchNorm {path} normalises with its running statistics during training (eval forward agrees, "
        "train forward does not): it stays in eval mode (a train() override, bn.eval(), "
        "track_running_stats / F.batch_norm(training=False))",
        "let module.train() reach the BatchNorm (do not freeze it) when training like the reference",
        stage.name, evidence=ev or diff.describe())


def running_var_rule(run: Run, path, diff: TensorDiff) -> Finding:
    """The batch part of the running-variance update, port / reference, against (n-1)/n."""
    ev = diff.describe()
    if run.ref is not None and diff.index is not None:
        layer = run.ref_layer(path)
        info = run.ref.structure.get(layer, {})
        old = run.ref.weights.get(layer, {}).get("moving_variance")
        km = info.get("momentum")
        n = run.ref.bn_n.get(layer)
        if old is not None and km is not None and n:
            m = torch_bn_momentum_from_keras(float(km))
            o = float(np.asarray(old)[diff.index])
            b_ref = (diff.ref_value - (1 - m) * o) / m
            b_port = (diff.port_value - (1 - m) * o) / m
            if b_ref:
                factor = b_port / b_ref
                ev = (f"batch part of the update: port / reference = {factor:.8f}; (n-1)/n = {(n - 1) / n:.8f} for "
                      f"n = {n} (N*H*W)")
    return finding(
        "running_var_bias", path,
        "running_var differs by the factor n/(n-1) on the batch part: the port's BatchNorm updates running_var "
        "with the biased batch variance (Keras' convention), torch's nn.BatchNorm2d with the unbiased one, which "
        "is what parity converts from",
        "use nn.BatchNorm2d (unbiased running_var update) in the port, or x.var(unbiased=True) in a hand-written "
        "BatchNorm's running-statistics update", "forward_train", evidence=ev)


# ---- gradients -------------------------------------------------------------------------------------------------
@stage_rule("gradients")
def gradient_rules(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """The loss differs while every activation agrees (reduction, label smoothing, another loss), or every
    gradient differs by one ratio (a loss or gradient scale)."""
    loss_t = next((t for t in stage.tensors if t.path == "loss"), None)
    if loss_t is not None and not loss_t.passed and loss_t.ref_value:
        return [_loss_rule(run, stage, loss_t)]
    failing = [t for t in stage.tensors if not t.passed and t.ref_value]
    ratios = [t.port_value / t.ref_value for t in failing if t.ref_value]
    if len(ratios) >= 3 and all(close(x, ratios[0], 1e-4) for x in ratios):
        return [finding("loss_reduction", base(diff.path),
                        f"every gradient is {ratios[0]:.6g}x the reference's while the forward and the loss agree: "
                        "the port scales its loss or gradients", "use the reference's loss reduction / scale",
                        stage.name, evidence=f"{len(ratios)} gradients with the same ratio")]
    return []


def _loss_rule(run: Run, stage, loss_t: TensorDiff) -> Finding:
    r = loss_t.port_value / loss_t.ref_value
    b = run.result.batch
    if close(r, b, 1e-6) or close(r, 1.0 / b, 1e-6):
        port_red, ref_red = ("sum", "mean") if close(r, b, 1e-6) else ("mean", "sum")
        return finding("loss_reduction", "loss",
                       f"loss reduction: the port's loss is {r:g}x the reference's = the batch size {b}: "
                       f"the port reduces with {port_red} over the batch, the reference with {ref_red}",
                       f"use reduction='{ref_red}' in the port's loss", stage.name,
                       evidence=f"loss reference {loss_t.ref_value:.6g}, port {loss_t.port_value:.6g}")
    f = label_smoothing(run, loss_t)
    if f is not None:
        return f
    return finding("loss", "loss", f"the loss differs ({loss_t.port_value:.6g} in the port, "
                   f"{loss_t.ref_value:.6g} in the reference) while every forward activation agrees: the two "
                   "sides compute a different loss", "configure the port's loss like the reference's "
                   "(reduction, label smoothing, from_logits, class weights)", stage.name,
                   evidence=loss_t.describe())


def _smoothing(value: float, ce: float, uni: float) -> float:
    """e in value = (1 - e) * CE + e * mean(-log p)."""
    return (value - ce) / (uni - ce)


def _is_round(e: float) -> bool:
    return 0 < e < 1 and abs(e - round(e, 3)) < 1e-4


def label_smoothing(run: Run, loss_t: TensorDiff) -> Finding | None:
    """Solve each side's loss for a label-smoothing factor e; a round e on one side and none on the other."""
    probs = _train_probabilities(run)
    if probs is None:
        return None
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(run.ref.labels[0], dtype=np.float64)
    ce = float(np.mean(-np.sum(y * np.log(p), axis=1)))
    uni = float(np.mean(-np.mean(np.log(p), axis=1)))
    if abs(uni - ce) < 1e-12:
        return None
    eps_port = _smoothing(loss_t.port_value, ce, uni)
    eps_ref = _smoothing(loss_t.ref_value, ce, uni)
    if _is_round(eps_port) and abs(eps_ref) < 1e-4:
        return finding("label_smoothing", "loss",
                       f"label smoothing {round(eps_port, 3):g} in the port's loss, none in the reference's",
                       f"F.cross_entropy(..., label_smoothing=0) (or give the reference label_smoothing="
                       f"{round(eps_port, 3):g})", "gradients",
                       evidence=f"port loss {loss_t.port_value:.6g} = (1-e)*CE + e*mean(-log p) with e = "
                                f"{eps_port:.6f}")
    if _is_round(eps_ref) and abs(eps_port) < 1e-4:
        return finding("label_smoothing", "loss",
                       f"label smoothing {round(eps_ref, 3):g} in the reference's loss, none in the port's",
                       f"F.cross_entropy(..., label_smoothing={round(eps_ref, 3):g})", "gradients",
                       evidence=f"reference loss {loss_t.ref_value:.6g} = (1-e)*CE + e*mean(-log p), "
                                f"e = {eps_ref:.6f}")
    return None


def _train_probabilities(run: Run):
    """The reference's train-mode output probabilities on the first batch (categorical cross-entropy only)."""
    if run.ref is None or run.po.get("loss") != "categorical_crossentropy":
        return None
    out_path = run.po.get("output_path")
    probs = (run.ref.train_acts or {}).get(out_path) if out_path else None
    if probs is None and run.ts is not None:
        probs = _port_train_probabilities(run)
    return probs


def _port_train_probabilities(run: Run):
    """softmax of the port's train-mode output on the reference's first batch (the forward stages agreed, so
    these are the reference's probabilities too)."""
    return port_train_output(run, lambda out: out.softmax(dim=1))
