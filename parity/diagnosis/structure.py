"""Config rules, one aligned layer pair at a time (``ref`` from the Keras side's ``layer_info``, ``port`` from
the torch side's ``module_info``): BatchNorm eps / momentum / affine / missing, conv and Dense bias, kernel,
stride, groups, dilation and TF "same" padding, pooling padding and output rounding, LRN, activation, dropout
rate. Each rule is registered by tap kind in :mod:`parity.diagnosis.registry`."""
from __future__ import annotations

import math
from typing import Any

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_DEFAULT, torch_bn_momentum_from_keras
from parity.core.results import Finding
from parity.core.spec import Tap
from parity.diagnosis.common import close, pair, ref_activation
from parity.diagnosis.registry import structure_rule

CONV_KINDS = ("conv2d", "separable_conv2d", "depthwise_conv2d", "dense")
POOL_KINDS = ("maxpool", "avgpool")


def structural(tap: Tap, cause, message, fix, evidence="") -> Finding:
    """A finding of the structure stage at ``tap``'s path."""
    return Finding(cause=cause, path=tap.path, message=message, fix=fix, evidence=evidence, stage="structure")


def tf_same_pads(n, k, s):
    """(before, after) padding TF's "same" adds on an input of size ``n`` (kernel ``k``, stride ``s``)."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def pool_out(n, k, s, p, ceil):
    """torch's pooling output size (``ceil_mode`` drops a last window that starts in the padding)."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and p and (out - 1) * s >= n + p:
        out -= 1
    return out


def _shape_evidence(ref: dict) -> str:
    if ref.get("output_shape"):
        return f"reference output {tuple(ref['output_shape'])} (H, W, C)"
    return ""


def _port_padding(port: dict):
    return pair(port.get("padding")) if not isinstance(port.get("padding"), str) else None


# ---- BatchNorm -----------------------------------------------------------------------------------------------
@structure_rule("batchnorm", family="conv2d")
def batchnorm_rules(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """A missing BatchNorm (nothing else is said then), else eps, momentum and affine."""
    if "eps" not in port and "running_mean" not in str(port.get("class", "")) and not port.get("buffers"):
        return [structural(
            tap, "missing_bn", f"BatchNorm missing in the port: the module is a {port.get('class', '?')} (no "
            "running statistics, no gamma/beta)",
            f"use nn.BatchNorm2d(C, eps={ref.get('epsilon', KERAS_BN_EPSILON):g}, momentum="
            f"{torch_bn_momentum_from_keras(ref.get('momentum', 0.99)):g}) here",
            f"reference {ref.get('class', 'BatchNormalization')} with {ref.get('trainable_params', '?')} + "
            f"{ref.get('non_trainable_params', '?')} parameters; port {port.get('params', 0)} + "
            f"{port.get('buffers', 0)}")]
    out = []
    keps, teps = ref.get("epsilon"), port.get("eps")
    if keps is not None and teps is not None and not close(keps, teps):
        out.append(structural(
            tap, "bn_eps", f"BatchNorm eps {teps:g} in the port, {keps:g} in the reference",
            f"set eps={keps:g}" + (" (Keras default)" if close(keps, KERAS_BN_EPSILON) else ""),
            f"eval-mode output scales by sqrt(var+{keps:g})/sqrt(var+{teps:g})"))
    out += _bn_momentum(tap, ref, port)
    ref_affine = bool(ref.get("center", True) or ref.get("scale", True))
    if "affine" in port and bool(port["affine"]) != ref_affine:
        out.append(structural(
            tap, "bn_affine", f"BatchNorm affine={port['affine']} in the port, reference center/scale="
            f"{ref.get('center')}/{ref.get('scale')}", f"set affine={ref_affine}",
            f"port has {port.get('params', 0)} parameters, the reference {ref.get('trainable_params', '?')}"))
    return out


def _bn_momentum(tap: Tap, ref: dict, port: dict) -> list[Finding]:
    """torch's momentum weighs the new batch (m), Keras' the running average (1 - m)."""
    km, tm = ref.get("momentum"), port.get("momentum")
    if km is None or "momentum" not in port:
        return []
    want = torch_bn_momentum_from_keras(km)
    fix = f"set momentum={want:g} (torch m = 1 - Keras m)"
    if tm is None:
        return [structural(tap, "bn_momentum", "torch BatchNorm momentum=None (cumulative average), reference "
                           f"uses Keras momentum {km:g}", fix)]
    if close(tm, want):
        return []
    if close(tm, km):
        msg = f"BN momentum {km:g} given to torch (should be {want:g}): torch weighs the new batch by m"
    elif close(tm, TORCH_BN_MOMENTUM_DEFAULT):
        msg = f"torch default BN momentum {tm:g} (= Keras {1 - tm:g}); the reference uses Keras momentum {km:g}"
    else:
        msg = f"BN momentum {tm:g} in the port; Keras momentum {km:g} means torch {want:g}"
    return [structural(tap, "bn_momentum", msg, fix,
                       f"running statistics move {tm / want:.3g}x as fast; they drift apart after each training "
                       "step")]


# ---- conv / Dense ------------------------------------------------------------------------------------------
@structure_rule(*CONV_KINDS, family="conv2d")
def conv_bias(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    rb, pb = ref.get("use_bias"), port.get("has_bias")
    noun = "Linear" if tap.kind == "dense" else tap.kind
    if rb is None or pb is None or bool(rb) == bool(pb):
        return []
    if pb:
        return [structural(tap, "conv_bias", f"{noun} bias present in the port only (use_bias=False in the "
                           "reference)", "construct it with bias=False", "the port's bias keeps its random "
                           "initial value")]
    return [structural(tap, "conv_bias", f"{noun} bias missing in the port (the reference has one)",
                       "construct it with bias=True", "the reference's bias is not transferred")]


@structure_rule(*CONV_KINDS, family="conv2d")
def conv_geometry(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """Kernel size, stride, groups and dilation."""
    out = []
    if tap.kind == "separable_conv2d":
        pk = pair((port.get("depthwise") or {}).get("kernel_size"))
        ps = pair((port.get("depthwise") or {}).get("stride"))
    else:
        pk, ps = pair(port.get("kernel_size")), pair(port.get("stride"))
    rk, rs = pair(ref.get("kernel_size")), pair(ref.get("strides"))
    if rk and pk and rk != pk:
        out.append(structural(tap, "kernel_size", f"kernel {pk} in the port, {rk} in the reference",
                              f"use kernel_size={rk}"))
    if rs and ps and rs != ps:
        out.append(structural(tap, "stride", f"stride {ps} in the port, {rs} in the reference", f"use stride={rs}",
                              _shape_evidence(ref)))
    rg, pg = ref.get("groups"), port.get("groups")
    if tap.kind == "conv2d" and rg is not None and pg is not None and int(rg) != int(pg):
        out.append(structural(tap, "groups", f"groups={pg} in the port, {rg} in the reference", f"use groups={rg}",
                              "the kernel shapes differ, so the reference's weights cannot be loaded"))
    rd, pd = pair(ref.get("dilation_rate")), pair(port.get("dilation"))
    if rd and pd and rd != pd:
        out.append(structural(tap, "dilation", f"dilation {pd} in the port, {rd} in the reference",
                              f"use dilation={rd}", _shape_evidence(ref)))
    return out


@structure_rule(*CONV_KINDS, family="conv2d")
def conv_padding(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """TF "same" pads the extra pixel after (bottom/right); a symmetric torch padding shifts every window."""
    out = []
    rk, rs = pair(ref.get("kernel_size")), pair(ref.get("strides"))
    if tap.kind == "conv2d" and ref.get("padding") == "same" and not port.get("tf_padding"):
        pad = _port_padding(port)
        inp = ref.get("input_shape")
        if pad is not None and rk and rs and inp and isinstance(inp[0], int):
            want = [tf_same_pads(inp[i], rk[i], rs[i]) for i in (0, 1)]
            if any(w[0] != w[1] or w[0] != pad[i] for i, w in enumerate(want)):
                out.append(structural(
                    tap, "conv_padding", f"conv padding={pad} (symmetric) where TF 'same' pads {want} "
                    f"(before, after) on a {inp[0]}x{inp[1]} input",
                    "use ported_torch.layers.Conv2dSame (extra pixel bottom/right)",
                    "every output window is shifted by one pixel"))
    if ref.get("padding") == "valid" and pair(port.get("padding")) not in (None, (0, 0)):
        out.append(structural(tap, "conv_padding", f"padding={port.get('padding')} in the port, 'valid' in the "
                              "reference", "use padding=0", _shape_evidence(ref)))
    return out


# ---- pooling -----------------------------------------------------------------------------------------------
@structure_rule(*POOL_KINDS, family="conv2d")
def pool_rules(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """TF "same" pooling padding, pool size, stride and output rounding."""
    out = []
    rk, rs = pair(ref.get("pool_size")), pair(ref.get("strides"))
    inp = ref.get("input_shape")
    if ref.get("padding") == "same" and not port.get("tf_padding"):
        pad = _port_padding(port)
        if rk and rs and len(rk) == 2 and inp and isinstance(inp[0], int):
            want = [tf_same_pads(inp[i], rk[i], rs[i]) for i in (0, 1)]
            if pad is None or any(w != (pad[i], pad[i]) for i, w in enumerate(want)):
                out.append(structural(
                    tap, "symmetric_pool", f"pool {rk[0]}x{rk[1]}/{rs[0]} on {inp[0]}x{inp[1]}: symmetric "
                    f"padding {pad} vs TF 'same', which pads {want[0]} (top, bottom) and {want[1]} (left, right)",
                    "use ported_torch.layers.MaxPool2dSame, or F.pad(x, (l, r, t, b), value=-inf) then "
                    "MaxPool2d without padding"))
    pk, ps = pair(port.get("kernel_size")), pair(port.get("stride"))
    if rk and len(rk) == 1:  # 1-D pooling (MaxPooling1D pool_size [2] vs MaxPool1d kernel_size 2)
        pk, ps = pk and pk[:1], ps and ps[:1]
    if rk and pk and rk != pk:
        out.append(structural(tap, "kernel_size", f"pool size {pk} in the port, {rk} in the reference",
                              f"use kernel_size={rk}"))
    if rs and ps and rs != ps:
        out.append(structural(tap, "stride", f"pool stride {ps} in the port, {rs} in the reference",
                              f"use stride={rs}"))
    if "ceil_mode" in port and not port.get("tf_padding") and rk and rs and len(rk) == 2 and pk and ps and \
            rk == pk and rs == ps:  # a module seen computing TF 'same' has its output size too
        rounding = pool_rounding(ref, port, rk, rs)
        if rounding:
            out.append(structural(tap, "pool_rounding", *rounding))
    return out


def pool_rounding(ref, port, rk, rs):
    """Floor vs ceil pooling (Caffe rounds up), from the reference's output size."""
    inp, outp = ref.get("input_shape"), ref.get("output_shape")
    if "ceil_mode" in ref:
        if bool(ref["ceil_mode"]) != bool(port["ceil_mode"]):
            return (f"pool output rounding ceil_mode={port['ceil_mode']} in the port, "
                    f"{'ceil' if ref['ceil_mode'] else 'floor'} in the reference (Caffe rounds up)",
                    f"use ceil_mode={bool(ref['ceil_mode'])}")
        return None
    if not (inp and outp and isinstance(inp[0], int) and isinstance(outp[0], int)):
        return None
    pad = _port_padding(port) if not isinstance(port.get("padding"), str) else (0, 0)
    pad = pad or (0, 0)
    ceil = bool(port["ceil_mode"])
    got = [pool_out(inp[i], rk[i], rs[i], pad[i], ceil) for i in (0, 1)]
    other = [pool_out(inp[i], rk[i], rs[i], pad[i], not ceil) for i in (0, 1)]
    if got != list(outp[:2]) and other == list(outp[:2]):
        return (f"pool output size {got[0]}x{got[1]} in the port ({'ceil' if ceil else 'floor'} rounding), "
                f"{outp[0]}x{outp[1]} in the reference on a {inp[0]}x{inp[1]} input "
                f"({'floor' if ceil else 'ceil (Caffe)'} rounding)", f"use ceil_mode={not ceil}",
                f"(n - k) / s = ({inp[0]} - {rk[0]}) / {rs[0]} is not an integer here")
    return None


# ---- LRN, activation, dropout ----------------------------------------------------------------------------
@structure_rule("lrn", family="conv2d")
def lrn_rule(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """LRN: Caffe / torch divide alpha by the window size; TF's depth_radius/alpha is per element."""
    ra, pa = ref.get("alpha"), port.get("alpha")
    if ra is None or pa is None:
        return []
    size = port.get("size") or ref.get("size")
    if "depth_radius" in ref and ref.get("depth_radius") is not None:
        n = 2 * int(ref["depth_radius"]) + 1
        want = float(ra) * n
    else:
        n = int(ref.get("size") or size or 1)
        want = float(ra)
    msgs = []
    if not close(float(pa), want, 1e-6):
        hint = ""
        if size and close(float(pa), want * int(size), 1e-6):
            hint = f" (= alpha x size {size}: torch divides alpha by size already)"
        elif size and close(float(pa), want / int(size), 1e-6):
            hint = f" (= alpha / size {size}: TF's per-element alpha given to torch)"
        msgs.append(f"LRN alpha {pa:g} in the port, {want:g} expected{hint}")
    for key_r, key_p in (("beta", "beta"), ("k", "k"), ("bias", "k")):
        if ref.get(key_r) is not None and port.get(key_p) is not None and not close(float(ref[key_r]),
                                                                                     float(port[key_p]), 1e-6):
            msgs.append(f"LRN {key_p} {port[key_p]:g} in the port, {ref[key_r]:g} in the reference")
    if ref.get("size") is not None and port.get("size") is not None and int(ref["size"]) != int(port["size"]):
        msgs.append(f"LRN size {port['size']} in the port, {ref['size']} in the reference")
    if not msgs:
        return []
    return [structural(tap, "lrn", "; ".join(msgs),
                       f"nn.LocalResponseNorm(size={size or n}, alpha={want:g}, beta={ref.get('beta')}, "
                       f"k={ref.get('k', ref.get('bias', 1))})",
                       "Caffe lrn_layer.cpp and torch: scale = k + alpha/size * sum(x^2)")]


def torch_activation_name(a: str) -> str:
    """The torch module (or advice) for a Keras activation name."""
    return {"relu": "nn.ReLU()", "relu6": "nn.ReLU6()", "linear": "nn.Identity()", "sigmoid": "nn.Sigmoid()",
            "tanh": "nn.Tanh()", "leaky_relu": "nn.LeakyReLU(negative_slope=<Keras' value>)",
            "softmax": "no module (softmax belongs to F.cross_entropy)"}.get(a, a)


@structure_rule("activation", family="dense")
def activation_rule(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    ra, pa = ref_activation(ref), port.get("activation")
    if ra and pa and ra != pa:
        return [structural(tap, "activation", f"activation {pa} in the port, {ra} in the reference",
                           f"use {torch_activation_name(ra)}")]
    return []


@structure_rule("dropout", family="dense")
def dropout_rate_rule(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    rr, pr = ref.get("rate"), port.get("p")
    if rr is not None and pr is not None and not close(rr, pr):
        return [structural(tap, "dropout_rate", f"dropout p={pr:g} in the port, rate {rr:g} in the reference",
                           f"use p={rr:g}", "identical in eval mode; in training the masks and the 1/(1-p) "
                           "scale differ")]
    return []
