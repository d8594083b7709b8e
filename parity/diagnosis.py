"""Name the cause of a divergence: rules over the structure/config of each aligned layer pair, over the
weight conversion, and over the numeric results. Each rule returns :class:`parity.results.Finding` objects
with the layer path, the evidence and a one-line fix."""
from __future__ import annotations

import math
from typing import Any

from parity.conventions import (KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_DEFAULT, torch_bn_momentum_from_keras)
from parity.results import CheckResult, Finding
from parity.spec import Tap


def _close(a, b, rel=1e-9) -> bool:
    return a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def _pair(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v), int(v))


def _tf_same_pads(n, k, s):
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def structure_findings(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """Config rules for one aligned pair. ``ref`` from reference_side.layer_info, ``port`` from
    port_side.module_info."""
    out: list[Finding] = []
    p = tap.path

    def add(cause, message, fix, evidence=""):
        out.append(Finding(cause=cause, path=p, message=message, fix=fix, evidence=evidence, stage="structure"))

    if tap.kind == "batchnorm":
        keps, teps = ref.get("epsilon"), port.get("eps")
        if keps is not None and teps is not None and not _close(keps, teps):
            add("bn_eps", f"BatchNorm eps {teps:g} in the port, {keps:g} in the reference",
                f"set eps={keps:g}" + (" (Keras default)" if _close(keps, KERAS_BN_EPSILON) else ""),
                f"eval-mode output scales by sqrt(var+{keps:g})/sqrt(var+{teps:g})")
        km, tm = ref.get("momentum"), port.get("momentum")
        if km is not None and "momentum" in port:
            want = torch_bn_momentum_from_keras(km)
            if tm is None:
                add("bn_momentum", "torch BatchNorm momentum=None (cumulative average), reference uses "
                    f"Keras momentum {km:g}", f"set momentum={want:g} (torch m = 1 - Keras m)")
            elif not _close(tm, want):
                if _close(tm, km):
                    msg = f"BN momentum {km:g} given to torch (should be {want:g}): torch weighs the new batch by m"
                elif _close(tm, TORCH_BN_MOMENTUM_DEFAULT):
                    msg = (f"torch default BN momentum {tm:g} (= Keras {1 - tm:g}); the reference uses Keras "
                           f"momentum {km:g}")
                else:
                    msg = f"BN momentum {tm:g} in the port; Keras momentum {km:g} means torch {want:g}"
                add("bn_momentum", msg, f"set momentum={want:g} (torch m = 1 - Keras m)",
                    "running statistics drift apart after each training step")
        ref_affine = bool(ref.get("center", True) or ref.get("scale", True))
        if "affine" in port and bool(port["affine"]) != ref_affine:
            add("bn_affine", f"BatchNorm affine={port['affine']} in the port, reference center/scale="
                f"{ref.get('center')}/{ref.get('scale')}", f"set affine={ref_affine}")
    if tap.kind in ("conv2d", "separable_conv2d", "depthwise_conv2d", "dense"):
        rb = ref.get("use_bias")
        pb = port.get("has_bias")
        if rb is not None and pb is not None and bool(rb) != bool(pb):
            if pb:
                add("conv_bias", f"{tap.kind} bias present in the port only", "construct it with bias=False")
            else:
                add("conv_bias", f"{tap.kind} bias missing in the port (the reference has one)",
                    "construct it with bias=True")
        if tap.kind == "separable_conv2d":
            pk = _pair((port.get("depthwise") or {}).get("kernel_size"))
            ps = _pair((port.get("depthwise") or {}).get("stride"))
        else:
            pk, ps = _pair(port.get("kernel_size")), _pair(port.get("stride"))
        rk, rs = _pair(ref.get("kernel_size")), _pair(ref.get("strides"))
        if rk and pk and rk != pk:
            add("kernel_size", f"kernel {pk} in the port, {rk} in the reference", f"use kernel_size={rk}")
        if rs and ps and rs != ps:
            add("stride", f"stride {ps} in the port, {rs} in the reference", f"use stride={rs}")
        rg, pg = ref.get("groups"), port.get("groups")
        if tap.kind == "conv2d" and rg is not None and pg is not None and int(rg) != int(pg):
            add("groups", f"groups={pg} in the port, {rg} in the reference", f"use groups={rg}")
        rd, pd = _pair(ref.get("dilation_rate")), _pair(port.get("dilation"))
        if rd and pd and rd != pd:
            add("dilation", f"dilation {pd} in the port, {rd} in the reference", f"use dilation={rd}")
        if tap.kind == "conv2d" and ref.get("padding") == "same" and not port.get("tf_padding"):
            pad = _pair(port.get("padding")) if not isinstance(port.get("padding"), str) else None
            inp = ref.get("input_shape")
            if pad is not None and rk and rs and inp and isinstance(inp[0], int):
                want = [_tf_same_pads(inp[i], rk[i], rs[i]) for i in (0, 1)]
                if any(w[0] != w[1] or w[0] != pad[i] for i, w in enumerate(want)):
                    add("conv_padding", f"conv padding={pad} (symmetric) where TF 'same' pads {want} "
                        f"(before, after) on a {inp[0]}x{inp[1]} input",
                        "use ported_torch.layers.Conv2dSame (extra pixel bottom/right)")
        if ref.get("padding") == "valid" and _pair(port.get("padding")) not in (None, (0, 0)):
            add("conv_padding", f"padding={port.get('padding')} in the port, 'valid' in the reference", "use padding=0")
    if tap.kind in ("maxpool", "avgpool"):
        rk, rs = _pair(ref.get("pool_size")), _pair(ref.get("strides"))
        inp = ref.get("input_shape")
        if ref.get("padding") == "same" and not port.get("tf_padding"):
            pad = _pair(port.get("padding")) if not isinstance(port.get("padding"), str) else None
            if rk and rs and inp and isinstance(inp[0], int):
                want = [_tf_same_pads(inp[i], rk[i], rs[i]) for i in (0, 1)]
                if pad is None or any(w != (pad[i], pad[i]) for i, w in enumerate(want)):
                    add("symmetric_pool", f"pool {rk[0]}x{rk[1]}/{rs[0]} on {inp[0]}x{inp[1]}: symmetric padding "
                        f"{pad} vs TF 'same', which pads {want[0]} (top, bottom) and {want[1]} (left, right)",
                        "use ported_torch.layers.MaxPool2dSame, or F.pad(x, (l, r, t, b), value=-inf) then "
                        "MaxPool2d without padding")
        pk, ps = _pair(port.get("kernel_size")), _pair(port.get("stride"))
        if rk and pk and rk != pk:
            add("kernel_size", f"pool size {pk} in the port, {rk} in the reference", f"use kernel_size={rk}")
        if rs and ps and rs != ps:
            add("stride", f"pool stride {ps} in the port, {rs} in the reference", f"use stride={rs}")
        if "ceil_mode" in ref and "ceil_mode" in port and bool(ref["ceil_mode"]) != bool(port["ceil_mode"]):
            add("pool_rounding", f"pool output rounding ceil_mode={port['ceil_mode']} in the port, "
                f"{'ceil' if ref['ceil_mode'] else 'floor'} in the reference (Caffe rounds up)",
                f"use ceil_mode={bool(ref['ceil_mode'])}")
    if tap.kind == "activation":
        ra = _ref_activation(ref)
        pa = port.get("activation")
        if ra and pa and ra != pa:
            add("activation", f"activation {pa} in the port, {ra} in the reference", f"use {ra}")
    if tap.kind == "dropout":
        rr, pr = ref.get("rate"), port.get("p")
        if rr is not None and pr is not None and not _close(rr, pr):
            add("dropout_rate", f"dropout p={pr:g} in the port, rate {rr:g} in the reference", f"use p={rr:g}")
    return out


def _ref_activation(ref: dict[str, Any]) -> str | None:
    cls = ref.get("class")
    if cls == "ReLU":
        mv = ref.get("max_value")
        if mv is not None and _close(float(mv), 6.0):
            return "relu6"
        if ref.get("negative_slope"):
            return "leaky_relu"
        return "relu"
    if cls == "Activation":
        return ref.get("activation")
    return None


def numeric_findings(result: CheckResult, port_outputs: dict[str, Any]) -> list[Finding]:
    """Rules that read the numeric results (after every stage ran)."""
    out: list[Finding] = []
    fd = result.first_divergence()
    if fd is None or fd[1] is None:
        return out
    stage, diff = fd
    known = {f.path for f in result.findings if f.severity == "error"}
    final = port_outputs.get("final")
    if final is not None and port_outputs.get("loss") == "categorical_crossentropy":
        import numpy as np

        rows = np.asarray(final)
        if rows.ndim == 2 and rows.size and (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6):
            out.append(Finding(
                cause="double_softmax", path=port_outputs.get("output_path", diff.path),
                message="softmax applied before CrossEntropyLoss (double softmax): the port's outputs are "
                        "probabilities (rows sum to 1) and F.cross_entropy applies softmax again",
                fix="return logits from the model; CrossEntropyLoss applies log-softmax itself",
                stage=stage.name, evidence=f"port output row sums {rows.sum(axis=1)[:3].round(6).tolist()}"))
    if stage.name == "step":
        grads = result.stage("gradients")
        if grads is not None and grads.passed and not grads.skipped:
            kind = result.optimizer.get("kind")
            if kind == "adam":
                msg = ("gradients agree but the Adam update differs: epsilon placement (Keras adds eps to the "
                       "uncorrected sqrt(v); torch to the corrected one) or beta/eps values")
                fix = "torch eps = keras_eps / sqrt(1 - beta_2**t) (parity.conventions.torch_adam_eps_from_keras)"
            else:
                msg = ("gradients agree but the optimizer update differs: weight decay / L2 (Keras l2(lam) == "
                       "torch weight_decay 2*lam), momentum convention, lr_mult, or lr schedule")
                fix = "configure the torch optimizer with the named rules in parity.optimizers"
            out.append(Finding("optimizer", diff.path, msg, fix, stage="step",
                               evidence=diff.describe()))
    if not known and not out:
        base = diff.path.split(":")[0]
        out.append(Finding("unexplained", base,
                           f"first divergence here in {stage.name}; no configuration difference found",
                           "compare this layer's weights and code by hand (see the isolated stage)",
                           stage=stage.name, evidence=diff.describe(), severity="warning"))
    return out


def attach_stages(result: CheckResult) -> None:
    """Set each structural finding's ``stage`` to the first numeric stage where its layer diverged."""
    order = [s for s in result.stages if s.name != "structure" and not s.skipped]
    for f in result.findings:
        if f.stage not in (None, "structure"):
            continue
        for s in order:
            if any(not t.passed and t.path.split(":")[0].split("@")[0] == f.path for t in s.tensors):
                f.stage = s.name
                t = next(t for t in s.tensors if not t.passed and t.path.split(":")[0].split("@")[0] == f.path)
                f.evidence = (f.evidence + "; " if f.evidence else "") + f"{s.name}: max|Δ| {t.max_abs:.3g}"
                break
