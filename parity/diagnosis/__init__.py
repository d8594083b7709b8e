"""Name the cause of a divergence: rules over the structure/config of each aligned layer pair, over the
weight conversion, and over the numeric results. Each rule returns :class:`parity.core.results.Finding` objects
with the layer path, the stage where it shows, the evidence (figures) and a one-line fix.

Three entry points, called by :mod:`parity.harness`:

- :func:`structure_findings` ``(tap, ref_info, port_info)``: config rules per aligned pair (eps, momentum,
  affine, missing BatchNorm, bias, kernel, stride, groups, dilation, padding, pooling, LRN, activation,
  dropout rate);
- :func:`numeric_findings` ``(result, port_outputs)``: rules that read where and how the stages diverged.
  They name a cause from the divergence pattern alone (which stage first, which tensors, which ratio), and
  confirm it with a numeric probe when ``port_outputs`` carries the run (``reference_run``, ``torch_side``,
  ``taps``, ``spec``): two eval forwards that disagree (dropout left on), the input a module really
  receives (layer order), a permuted comparison (flatten order), the loaded weights against the converted
  ones (reshaped-not-transposed kernels, re-initialised layers), the running-variance factor n/(n-1), the
  implied weight decay of an L2 mismatch, the update torch Adam makes with a plain epsilon;
- :func:`attach_stages` ``(result)``: a structural finding gets the first stage where its layer diverged.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from parity.core.conventions import (KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_DEFAULT, torch_adam_eps_from_keras,
                                torch_bn_momentum_from_keras, torch_weight_decay_from_keras_l2)
from parity.core.results import CheckResult, Finding, TensorDiff
from parity.core.spec import Tap

#: activation functions tried when a module receives an input other than the reference's
PROBE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "tanh")
#: relative agreement that counts as "this explains it" in a numeric probe (float32 runs are ~1e-7 noisy)
PROBE_RTOL = 1e-5


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


def _pool_out(n, k, s, p, ceil):
    span = n + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and p and (out - 1) * s >= n + p:
        out -= 1
    return out


# ==== structure rules =====================================================================================
def structure_findings(tap: Tap, ref: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """Config rules for one aligned pair. ``ref`` from reference_side.layer_info, ``port`` from
    port_side.module_info."""
    out: list[Finding] = []
    p = tap.path

    def add(cause, message, fix, evidence=""):
        out.append(Finding(cause=cause, path=p, message=message, fix=fix, evidence=evidence, stage="structure"))

    if tap.kind == "batchnorm":
        if "eps" not in port and "running_mean" not in str(port.get("class", "")) and not port.get("buffers"):
            add("missing_bn", f"BatchNorm missing in the port: the module is a {port.get('class', '?')} (no "
                "running statistics, no gamma/beta)",
                f"use nn.BatchNorm2d(C, eps={ref.get('epsilon', KERAS_BN_EPSILON):g}, momentum="
                f"{torch_bn_momentum_from_keras(ref.get('momentum', 0.99)):g}) here",
                f"reference {ref.get('class', 'BatchNormalization')} with {ref.get('trainable_params', '?')} + "
                f"{ref.get('non_trainable_params', '?')} parameters; port {port.get('params', 0)} + "
                f"{port.get('buffers', 0)}")
            return out
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
                    f"running statistics move {tm / want:.3g}x as fast; they drift apart after each training step")
        ref_affine = bool(ref.get("center", True) or ref.get("scale", True))
        if "affine" in port and bool(port["affine"]) != ref_affine:
            add("bn_affine", f"BatchNorm affine={port['affine']} in the port, reference center/scale="
                f"{ref.get('center')}/{ref.get('scale')}", f"set affine={ref_affine}",
                f"port has {port.get('params', 0)} parameters, the reference {ref.get('trainable_params', '?')}")
    if tap.kind in ("conv2d", "separable_conv2d", "depthwise_conv2d", "dense"):
        rb = ref.get("use_bias")
        pb = port.get("has_bias")
        noun = "Linear" if tap.kind == "dense" else tap.kind
        if rb is not None and pb is not None and bool(rb) != bool(pb):
            if pb:
                add("conv_bias", f"{noun} bias present in the port only (use_bias=False in the reference)",
                    "construct it with bias=False", "the port's bias keeps its random initial value")
            else:
                add("conv_bias", f"{noun} bias missing in the port (the reference has one)",
                    "construct it with bias=True", "the reference's bias is not transferred")
        if tap.kind == "separable_conv2d":
            pk = _pair((port.get("depthwise") or {}).get("kernel_size"))
            ps = _pair((port.get("depthwise") or {}).get("stride"))
        else:
            pk, ps = _pair(port.get("kernel_size")), _pair(port.get("stride"))
        rk, rs = _pair(ref.get("kernel_size")), _pair(ref.get("strides"))
        if rk and pk and rk != pk:
            add("kernel_size", f"kernel {pk} in the port, {rk} in the reference", f"use kernel_size={rk}")
        if rs and ps and rs != ps:
            add("stride", f"stride {ps} in the port, {rs} in the reference", f"use stride={rs}",
                _shape_evidence(ref))
        rg, pg = ref.get("groups"), port.get("groups")
        if tap.kind == "conv2d" and rg is not None and pg is not None and int(rg) != int(pg):
            add("groups", f"groups={pg} in the port, {rg} in the reference", f"use groups={rg}",
                "the kernel shapes differ, so the reference's weights cannot be loaded")
        rd, pd = _pair(ref.get("dilation_rate")), _pair(port.get("dilation"))
        if rd and pd and rd != pd:
            add("dilation", f"dilation {pd} in the port, {rd} in the reference", f"use dilation={rd}",
                _shape_evidence(ref))
        if tap.kind == "conv2d" and ref.get("padding") == "same" and not port.get("tf_padding"):
            pad = _pair(port.get("padding")) if not isinstance(port.get("padding"), str) else None
            inp = ref.get("input_shape")
            if pad is not None and rk and rs and inp and isinstance(inp[0], int):
                want = [_tf_same_pads(inp[i], rk[i], rs[i]) for i in (0, 1)]
                if any(w[0] != w[1] or w[0] != pad[i] for i, w in enumerate(want)):
                    add("conv_padding", f"conv padding={pad} (symmetric) where TF 'same' pads {want} "
                        f"(before, after) on a {inp[0]}x{inp[1]} input",
                        "use ported_torch.layers.Conv2dSame (extra pixel bottom/right)",
                        "every output window is shifted by one pixel")
        if ref.get("padding") == "valid" and _pair(port.get("padding")) not in (None, (0, 0)):
            add("conv_padding", f"padding={port.get('padding')} in the port, 'valid' in the reference", "use padding=0",
                _shape_evidence(ref))
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
        if "ceil_mode" in port and rk and rs and pk and ps and rk == pk and rs == ps:
            rounding = _pool_rounding(ref, port, rk, rs)
            if rounding:
                add("pool_rounding", *rounding)
    if tap.kind == "lrn":
        f = _lrn_rule(ref, port)
        if f:
            add("lrn", *f)
    if tap.kind == "activation":
        ra = _ref_activation(ref)
        pa = port.get("activation")
        if ra and pa and ra != pa:
            add("activation", f"activation {pa} in the port, {ra} in the reference",
                f"use {_torch_activation_name(ra)}")
    if tap.kind == "dropout":
        rr, pr = ref.get("rate"), port.get("p")
        if rr is not None and pr is not None and not _close(rr, pr):
            add("dropout_rate", f"dropout p={pr:g} in the port, rate {rr:g} in the reference", f"use p={rr:g}",
                "identical in eval mode; in training the masks and the 1/(1-p) scale differ")
    return out


def _shape_evidence(ref: dict) -> str:
    if ref.get("output_shape"):
        return f"reference output {tuple(ref['output_shape'])} (H, W, C)"
    return ""


def _pool_rounding(ref, port, rk, rs):
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
    pad = _pair(port.get("padding")) if not isinstance(port.get("padding"), str) else (0, 0)
    pad = pad or (0, 0)
    ceil = bool(port["ceil_mode"])
    got = [_pool_out(inp[i], rk[i], rs[i], pad[i], ceil) for i in (0, 1)]
    other = [_pool_out(inp[i], rk[i], rs[i], pad[i], not ceil) for i in (0, 1)]
    if got != list(outp[:2]) and other == list(outp[:2]):
        return (f"pool output size {got[0]}x{got[1]} in the port ({'ceil' if ceil else 'floor'} rounding), "
                f"{outp[0]}x{outp[1]} in the reference on a {inp[0]}x{inp[1]} input "
                f"({'floor' if ceil else 'ceil (Caffe)'} rounding)", f"use ceil_mode={not ceil}",
                f"(n - k) / s = ({inp[0]} - {rk[0]}) / {rs[0]} is not an integer here")
    return None


def _lrn_rule(ref, port):
    """LRN: Caffe / torch divide alpha by the window size; TF's depth_radius/alpha is per element."""
    ra, pa = ref.get("alpha"), port.get("alpha")
    if ra is None or pa is None:
        return None
    size = port.get("size") or ref.get("size")
    if "depth_radius" in ref and ref.get("depth_radius") is not None:
        n = 2 * int(ref["depth_radius"]) + 1
        want = float(ra) * n
    else:
        n = int(ref.get("size") or size or 1)
        want = float(ra)
    msgs = []
    if not _close(float(pa), want, 1e-6):
        hint = ""
        if size and _close(float(pa), want * int(size), 1e-6):
            hint = f" (= alpha x size {size}: torch divides alpha by size already)"
        elif size and _close(float(pa), want / int(size), 1e-6):
            hint = f" (= alpha / size {size}: TF's per-element alpha given to torch)"
        msgs.append(f"LRN alpha {pa:g} in the port, {want:g} expected{hint}")
    for key_r, key_p in (("beta", "beta"), ("k", "k"), ("bias", "k")):
        if ref.get(key_r) is not None and port.get(key_p) is not None and not _close(float(ref[key_r]),
                                                                                      float(port[key_p]), 1e-6):
            msgs.append(f"LRN {key_p} {port[key_p]:g} in the port, {ref[key_r]:g} in the reference")
    if ref.get("size") is not None and port.get("size") is not None and int(ref["size"]) != int(port["size"]):
        msgs.append(f"LRN size {port['size']} in the port, {ref['size']} in the reference")
    if not msgs:
        return None
    return ("; ".join(msgs), f"nn.LocalResponseNorm(size={size or n}, alpha={want:g}, beta={ref.get('beta')}, "
            f"k={ref.get('k', ref.get('bias', 1))})",
            "Caffe lrn_layer.cpp and torch: scale = k + alpha/size * sum(x^2)")


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
    if cls == "LeakyReLU":
        return "leaky_relu"
    return None


def _torch_activation_name(a: str) -> str:
    return {"relu": "nn.ReLU()", "relu6": "nn.ReLU6()", "linear": "nn.Identity()", "sigmoid": "nn.Sigmoid()",
            "tanh": "nn.Tanh()", "leaky_relu": "nn.LeakyReLU(negative_slope=<Keras' value>)",
            "softmax": "no module (softmax belongs to F.cross_entropy)"}.get(a, a)


# ==== numeric rules =========================================================================================
class _Run:
    """What the numeric rules may read: the result always; the reference run, the port side, the taps and
    the spec when the harness passes them in ``port_outputs``."""

    def __init__(self, result: CheckResult, port_outputs: dict[str, Any]):
        self.result = result
        self.po = port_outputs or {}
        self.ref = self.po.get("reference_run")
        self.ts = self.po.get("torch_side")
        self.spec = self.po.get("spec")
        self.taps: list[Tap] = list(self.po.get("taps") or (self.ref.taps if self.ref is not None else []))
        self.tap_by_path = {t.path: t for t in self.taps}
        rows = result.stage("structure").rows if result.stage("structure") is not None else []
        self.row_by_path = {r.get("path"): r for r in rows}

    @property
    def arrays(self) -> bool:
        return self.ref is not None and self.ts is not None

    def ref_layer(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.ref
        row = self.row_by_path.get(path)
        if row and row.get("reference"):
            return str(row["reference"]).rsplit(" (", 1)[0]
        return None

    def kind(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.kind
        row = self.row_by_path.get(path)
        return row.get("kind") if row else None

    def port_path(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.port
        row = self.row_by_path.get(path)
        if row and row.get("port"):
            return str(row["port"]).rsplit(" (", 1)[0]
        return None

    def tap_paths(self) -> list[str]:
        if self.taps:
            return [t.path for t in self.taps]
        return list(self.row_by_path)

    def errors_at(self, path: str) -> list[Finding]:
        return [f for f in self.result.findings if f.severity == "error" and f.path == path]


def _base(path: str) -> str:
    return path.split(":")[0].split("@")[0]


def _finding(cause, path, message, fix, stage, evidence="", severity="error") -> Finding:
    return Finding(cause=cause, path=path, message=message, fix=fix, stage=stage, evidence=evidence,
                   severity=severity)


def numeric_findings(result: CheckResult, port_outputs: dict[str, Any]) -> list[Finding]:
    """Rules that read the numeric results (after every stage ran). Returns new findings; also consolidates
    the harness's per-tap ``shared_module`` findings and adds a user pair's alignment findings in place."""
    run = _Run(result, port_outputs)
    _annotate_user_pair(result)
    _consolidate_shared(run)
    out: list[Finding] = []
    fd = result.first_divergence()
    if fd is None or fd[1] is None:
        return out
    stage, diff = fd
    base = _base(diff.path)
    explained = bool(run.errors_at(base))
    f = _double_softmax(run, stage.name, diff)
    if f is not None:
        out.append(f)
    rules = {
        "forward_eval": _forward_eval_rules, "isolated": _forward_eval_rules,
        "forward_train": _forward_train_rules, "gradients": _gradient_rules, "step": _step_rules,
        "trajectory": _step_rules,
    }.get(stage.name)
    if rules is not None and not explained and not out:
        try:
            out += rules(run, stage, diff)
        except Exception as exc:  # noqa: BLE001  (a failing probe must never hide the result)
            out.append(_finding("unexplained", base, f"diagnosis probe failed ({type(exc).__name__}: {exc})",
                                "compare this layer by hand", stage.name, severity="warning"))
    known = {f.path for f in result.findings if f.severity == "error"} | {f.path for f in out if f.severity == "error"}
    if not known:
        out.append(_finding("unexplained", base,
                            f"first divergence here in {stage.name}; no configuration difference found",
                            "compare this layer's weights and code by hand (see the isolated stage)",
                            stage.name, evidence=diff.describe(), severity="warning"))
    return out


def _annotate_user_pair(result: CheckResult) -> None:
    try:
        from parity.user.pair import annotate
    except ImportError:  # pragma: no cover
        return
    annotate(result)


# ---- shared modules ------------------------------------------------------------------------------------
def _consolidate_shared(run: _Run) -> None:
    """One finding per shared module, placed at the first layer where the sharing shows in the numbers
    (a ``[Block()] * 8`` list loads the *last* position's weights into the one block, so the first position
    already diverges), saying which module, how often, under which names, and the fix. Accepts the harness's
    findings whether it reports one per tap or one per outermost shared module."""
    import re

    res = run.result
    shared = [f for f in res.findings if f.cause == "shared_module"]
    if not shared:
        return
    aliases_of = _aliases(run)
    diverged = [_base(t.path) for st in res.stages if st.name != "structure" for t in st.tensors if not t.passed]
    groups: dict[frozenset, dict] = {}
    for f in shared:
        m = re.search(r"called (\d+)x", f.message)
        n = int(m.group(1)) if m else 0
        m = re.search(r"module `([^`]+)`", f.message)
        port = run.port_path(f.path) or f.path
        owner = m.group(1) if m else (port.rsplit(".", 1)[0] if "." in port else port)
        names = set(aliases_of.get(owner) or [owner])
        m = re.search(r"aliases: (.*)", f.evidence or "")
        if m:
            names |= {a.strip() for a in m.group(1).split(",") if a.strip()}
        key = frozenset(names)
        g = groups.setdefault(key, {"owner": owner, "calls": n, "paths": [], "evidence": []})
        g["calls"] = max(g["calls"], n)
        g["paths"].append(f.path)
        if f.evidence and f.evidence not in g["evidence"]:
            g["evidence"].append(f.evidence)
        gap = re.search(r"([\d,]+) parameters fewer in the port", f.message)
        if gap and gap.group(0) not in g["evidence"]:
            g["evidence"].append(gap.group(0))
    new = []
    for names, g in groups.items():
        n, owner = g["calls"], g["owner"]
        def under(p):
            port = run.port_path(p) or ""
            return any(port == a or port.startswith(a + ".") for a in names)

        in_group = [p for p in run.tap_paths() if under(p)]
        members = set(in_group) | set(g["paths"])
        first = next((d for d in diverged if d in members), None) or (in_group[0] if in_group else g["paths"][0])
        ordered = sorted(names, key=lambda a: (len(a), a))
        alias_txt = ""
        if len(ordered) > 1:
            more = " ..." if len(ordered) > 3 else ""
            alias_txt = (f"; the same object is registered as {', '.join(ordered[:3])}{more} "
                         f"({len(ordered)} names, e.g. nn.ModuleList([block] * {len(ordered)}))")
        ev = [f"{len(in_group) or len(g['paths'])} tapped layers run on the shared weights"] + g["evidence"]
        new.append(Finding(
            "shared_module", first,
            f"port module {owner} runs {n}x in one forward: {n} positions share one set of weights{alias_txt}; "
            f"the reference has {n} distinct layers there",
            f"create one module per position: nn.ModuleList([Block() for _ in range({n})]) (not [Block()] * {n})",
            stage="structure", evidence="; ".join(ev)))
    res.findings[:] = new + [f for f in res.findings if f.cause != "shared_module"]
    st = res.stage("structure")
    if st is not None:
        st.findings = [f for f in st.findings if f.cause != "shared_module"] + new


def _aliases(run: _Run) -> dict[str, list[str]]:
    if run.ts is None:
        return {}
    by_id: dict[int, list[str]] = {}
    for path, m in run.ts.module.named_modules(remove_duplicate=False):
        by_id.setdefault(id(m), []).append(path)
    out = {}
    for names in by_id.values():
        for n in names:
            out[n] = names
    return out


# ---- softmax ---------------------------------------------------------------------------------------------
def _double_softmax(run: _Run, stage: str, diff: TensorDiff) -> Finding | None:
    final = run.po.get("final")
    if final is None or run.po.get("loss") != "categorical_crossentropy":
        return None
    rows = np.asarray(final)
    if rows.ndim == 2 and rows.size and (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6):
        return _finding(
            "double_softmax", run.po.get("output_path", diff.path),
            "softmax applied before CrossEntropyLoss (double softmax): the port's outputs are probabilities "
            "(rows sum to 1) and F.cross_entropy applies softmax again",
            "return logits from the model; CrossEntropyLoss applies log-softmax itself", stage,
            evidence=f"port output row sums {rows.sum(axis=1)[:3].round(6).tolist()}")
    return None


# ---- forward (eval) ----------------------------------------------------------------------------------------
def _forward_eval_rules(run: _Run, stage, diff: TensorDiff) -> list[Finding]:
    """A module that is wrong on its own (the isolated stage fails there too) has wrong weights or a wrong
    op; a module that is right on its own but diverges in the forward gets a different input."""
    path = _base(diff.path)
    kind = run.kind(path)
    res = run.result
    fe = res.stage("forward_eval")
    iso = res.stage("isolated")
    iso_t = next((t for t in iso.tensors if t.path == path), None) if iso is not None else None
    earlier_ok = True
    if fe is not None:
        for t in fe.tensors:
            if t.path == path:
                break
            if not t.passed:
                earlier_ok = False
    weighted = kind in ("conv2d", "dense", "separable_conv2d", "depthwise_conv2d", "batchnorm")
    if run.arrays:
        f = _probe_eval_randomness(run, path)
        if f is not None:
            return [f]
    if kind == "flatten":
        f = _flatten_rule(run, path, kind, stage.name, diff)
        if f is not None:
            return [f]
    if iso_t is not None and not iso_t.passed:
        if run.arrays and weighted:
            f = _weights_rule(run, path, kind, stage.name)
            if f is not None:
                return [f]
        if kind == "dense" and not run.arrays:
            return [_finding("dense_weights", path, f"{path} is wrong in isolation too (fed the reference's own "
                             "input): its weights or layout differ from the converted reference kernel",
                             "convert a Dense kernel with a transpose (kernel.T), never a reshape", stage.name,
                             evidence=iso_t.describe())]
        return []
    if earlier_ok and iso_t is not None:  # right in isolation (fed the reference's input), wrong in the forward
        if kind == "dense" and _after_flatten(run, path):
            f = _flatten_rule(run, path, kind, stage.name, diff)
            if f is not None:
                return [f]
        return [_wiring_rule(run, path, stage.name, diff)]
    if run.arrays and weighted:
        f = _weights_rule(run, path, kind, stage.name)
        if f is not None:
            return [f]
    return []


def _after_flatten(run: _Run, path: str) -> bool:
    paths = run.tap_paths()
    if path not in paths:
        return False
    i = paths.index(path)
    prev = [p for p in paths[:i] if run.kind(p) not in ("dropout",)]
    return bool(prev) and run.kind(prev[-1]) == "flatten"


def _port_acts(run: _Run):
    """The port's eval activations on the reference's input (NCHW numpy) and the calls count."""
    acts, _, _ = run.ts.forward_eval(run.ref.inputs[0])
    return acts


def _probe_eval_randomness(run: _Run, path: str) -> Finding | None:
    """Two eval forwards on the same input must agree; where they do not, something random is on in eval."""
    a = _port_acts(run)
    b = _port_acts(run)
    for t in run.taps:
        if t.path in a and t.path in b and not np.array_equal(a[t.path], b[t.path]):
            diffmax = float(np.max(np.abs(a[t.path] - b[t.path])))
            drops = _dropout_modules(run)
            where = f" (port has {', '.join(drops)})" if drops else ""
            return _finding(
                "train_eval_mode", path,
                f"the port is random in eval mode: two eval forwards on the same input differ from {t.path} on "
                f"(dropout left on in eval{where}; F.dropout(x, p) defaults to training=True)",
                "use nn.Dropout, or F.dropout(x, p, training=self.training)", "forward_eval",
                evidence=f"max |run1 - run2| = {diffmax:.3g} at {t.path}")
    return None


def _dropout_modules(run: _Run) -> list[str]:
    if run.ts is None:
        return []
    tapped = {t.port for t in run.taps}
    out = []
    for name, m in run.ts.module.named_modules():
        if "Dropout" in type(m).__name__ and name not in tapped and getattr(m, "p", 0):
            out.append(f"{name} ({type(m).__name__}(p={m.p:g}))")
    return out


def _flatten_rule(run: _Run, path, kind, stage, diff) -> Finding | None:
    tap = run.tap_by_path.get(path)
    ev = ""
    confirmed = None
    if run.arrays and tap is not None:
        ref_act = run.ref.eval_acts.get(path)
        port_act = _port_acts(run).get(path) if kind == "flatten" else None
        if ref_act is not None and port_act is not None:
            from parity.core.tensors import hwc_flat_to_chw_flat

            if tap.flatten_chw is not None and np.allclose(port_act, ref_act, rtol=PROBE_RTOL, atol=0):
                confirmed = ("the port flattens in Keras' HWC order while the weights and taps assume torch's "
                             f"CHW (C, H, W)={tap.flatten_chw}")
                ev = "the port's flatten output equals the reference's without reordering"
            elif tap.flatten_chw is None and ref_act.ndim == 2:
                chw = _guess_chw(run, path)
                if chw and np.allclose(port_act, hwc_flat_to_chw_flat(ref_act, chw), rtol=PROBE_RTOL, atol=0):
                    confirmed = "the port flattens in torch's CHW order while the reference flattens HWC"
                    ev = f"the port's flatten output equals the reference's reordered HWC -> CHW, (C, H, W)={chw}"
        if kind == "dense":
            port_in = _module_input(run, tap)
            ref_in = (run.ref.eval_inputs or {}).get(path)
            if not ref_in:  # the run no longer holds layer inputs: the flatten before it is the Dense's input
                prev = [a for _, a in _earlier_acts(run, path)[:1]]
                ref_in = [np.asarray(run.ref.eval_acts[_prev_path(run, path)])] if prev else None
            if port_in is not None and ref_in:
                r = np.asarray(ref_in[0])
                r = r.reshape(r.shape[0], -1)  # Keras flattens NHWC: H, W, C order
                if tap.flatten_chw is not None and r.shape == port_in.shape and np.allclose(
                        port_in, r, rtol=PROBE_RTOL, atol=0):
                    confirmed = ("the port feeds this Dense an HWC-ordered flatten while its weights were converted "
                                 f"for torch's CHW order (C, H, W)={tap.flatten_chw}")
                    ev = f"the port's input to {path} equals the reference's (HWC) input without reordering"
        if confirmed is None:
            return None
    msg = confirmed or ("flatten order: the values entering this layer match, their order does not (Keras "
                        "flattens H, W, C; nn.Flatten C, H, W)")
    fix = ("flatten as the pair assumes: nn.Flatten (CHW) with the Dense rows reordered by the converter, or "
           "x.permute(0, 2, 3, 1).flatten(1) (HWC) with a plain transpose")
    return _finding("flatten_order", path, msg, fix, stage, evidence=ev or diff.describe())


def _prev_path(run: _Run, path):
    paths = run.tap_paths()
    i = paths.index(path)
    return paths[i - 1] if i > 0 else None


def _guess_chw(run: _Run, path):
    paths = run.tap_paths()
    i = paths.index(path)
    for p in reversed(paths[:i]):
        a = run.ref.eval_acts.get(p)
        if a is not None and a.ndim == 4:
            return (a.shape[3], a.shape[1], a.shape[2])
    return None


def _wiring_rule(run: _Run, path, stage, diff) -> Finding:
    """The module is right in isolation, its input is not: something between the previous layer and this
    one differs in the port's forward (order, an extra op, a wrong source)."""
    paths = run.tap_paths()
    prev = paths[paths.index(path) - 1] if path in paths and paths.index(path) > 0 else None
    if run.arrays:
        f = _probe_input(run, path, prev, stage)
        if f is not None:
            return f
    return _finding(
        "forward_wiring", path,
        f"{path} computes correctly in isolation but receives a different input in the port's forward"
        + (f" than {prev}'s output" if prev else "") + ": an operation is added, missing or reordered before it",
        "compare the port's forward() with the reference's layer order around this layer", stage,
        evidence=diff.describe())


def _module_input(run: _Run, tap: Tap, k: int = 0):
    """The first input the port's module for ``tap`` receives in an eval forward on the reference's input."""
    mod = run.ts.modules.get(tap.port)
    if mod is None:
        return None
    torch = run.ts.torch
    got = []
    h = mod.register_forward_hook(lambda m, i, o: got.append([t.detach().cpu().numpy() for t in i
                                                               if torch.is_tensor(t)]))
    try:
        run.ts.forward_eval(run.ref.inputs[0])
    finally:
        h.remove()
    return got[0][k] if got and len(got[0]) > k else None


def _earlier_acts(run: _Run, path) -> list[tuple[str, np.ndarray]]:
    """The reference's eval outputs of the taps before ``path`` (nearest first), in the port's layout."""
    from parity.core.tensors import nhwc_to_nchw

    paths = run.tap_paths()
    out = []
    for p in reversed(paths[:paths.index(path)] if path in paths else []):
        a = run.ref.eval_acts.get(p)
        if a is not None:
            out.append((p, nhwc_to_nchw(np.asarray(a))))
    return out


def _probe_input(run: _Run, path, prev, stage) -> Finding | None:
    """What does the port's module really receive? Compared with the reference's input to that layer (or, when
    the run no longer holds it, with the outputs of the layers before it), raw and through an activation."""
    from parity.core.tensors import nhwc_to_nchw

    tap = run.tap_by_path[path]
    if run.ts.modules.get(tap.port) is None:
        return None
    got = []
    torch = run.ts.torch
    h = run.ts.modules[tap.port].register_forward_hook(
        lambda m, i, o: got.append([t.detach().cpu().numpy() for t in i if torch.is_tensor(t)]))
    try:
        run.ts.forward_eval(run.ref.inputs[0])
    finally:
        h.remove()
    if not got:
        return None
    port_ins = got[0]
    ref_ins = (run.ref.eval_inputs or {}).get(path)
    earlier = _earlier_acts(run, path)

    def close(a, b):
        return a.shape == b.shape and np.allclose(a, b, rtol=PROBE_RTOL, atol=1e-12 * max(1.0, float(np.abs(b).max())))

    for k, pin in enumerate(port_ins):
        which = f" input {k + 1} of" if len(port_ins) > 1 else ""
        if ref_ins is not None and k < len(ref_ins):
            sources = [("reference input", nhwc_to_nchw(np.asarray(ref_ins[k])))]
        else:  # the input is one of the earlier layers' outputs
            sources = [(p, a) for p, a in earlier if a.shape == pin.shape]
        if any(close(pin, a) for _, a in sources):
            continue
        for act in PROBE_ACTIVATIONS:
            for src, a in sources:
                if not close(pin, _apply_np(act, a)):
                    continue
                x = "reference input" if src == "reference input" else f"{src}'s output"
                later = _next_activation(run, path, act)
                if later is not None:
                    return _finding(
                        "layer_order", path,
                        f"layer order: the port applies {act} before {path} (the reference applies it after, at "
                        f"{later}): {path} receives {act}(x)",
                        f"call {path} first and {act} after it, as in the reference", stage,
                        evidence=f"the port's{which} input to {path} equals {act}({x}) (max |Δ| "
                                 f"{float(np.max(np.abs(pin - a))):.3g} to {x} itself)")
                return _finding(
                    "forward_wiring", path,
                    f"extra {act} in the port's forward before {path}:{which} {path} receives {act}(x) where the "
                    "reference has no activation", f"remove the {act} before {path}", stage,
                    evidence=f"the port's{which} input to {path} equals {act}({x})")
        if ref_ins is not None:
            for other, a in earlier:
                if close(pin, a):
                    return _finding(
                        "forward_wiring", path, f"{path} is fed {other}'s output in the port (the reference feeds it "
                        f"{prev or 'another layer'})", "fix the port's forward() wiring", stage,
                        evidence=f"port input to {path} equals the reference's {other} output")
    return None


def _apply_np(act, x):
    if act == "relu":
        return np.maximum(x, 0)
    if act == "relu6":
        return np.clip(x, 0, 6)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if act == "tanh":
        return np.tanh(x)
    return x


def _next_activation(run: _Run, path, act) -> str | None:
    paths = run.tap_paths()
    i = paths.index(path)
    for p in paths[i + 1:i + 4]:
        if run.kind(p) == "activation":
            info = run.ref.structure.get(run.ref_layer(p), {}) if run.ref is not None else {}
            if _ref_activation(info) == act:
                return p
    return None


def _converted(run: _Run, tap: Tap) -> dict[str, np.ndarray]:
    from weight_converters.keras import LayerMap, keras_to_torch

    st, _ = keras_to_torch({tap.ref: run.ref.weights.get(tap.ref, {})},
                           [LayerMap(tap.ref, tap.port, tap.kind, tap.flatten_chw)], strict=False)
    return st


def _weights_rule(run: _Run, path, kind, stage) -> Finding | None:
    """Compare the port's loaded weights with the converted reference weights."""
    tap = run.tap_by_path.get(path)
    if tap is None or tap.port not in run.ts.modules:
        return None
    want = _converted(run, tap)
    state = {k: v.detach().cpu().numpy() for k, v in run.ts.module.state_dict().items()}
    for key, w in want.items():
        got = state.get(key)
        if got is None or got.shape != w.shape or np.issubdtype(w.dtype, np.integer):
            continue
        if np.allclose(got, w, rtol=PROBE_RTOL, atol=0):
            continue
        kernel = run.ref.weights.get(tap.ref, {}).get("kernel")
        if kind == "dense" and kernel is not None and key.endswith("weight"):
            # the Keras kernel as read, or with its rows already in torch's flatten order
            k = next((c for c in (np.asarray(kernel), w.T) if got.size == c.size and np.allclose(
                got.reshape(c.shape), c, rtol=PROBE_RTOL, atol=0)), None)
            if k is not None:
                return _finding(
                    "dense_layout", path,
                    f"{path} weight looks reshaped, not transposed: the port holds kernel.reshape{tuple(got.shape)} "
                    f"of the Keras (in, out) = {tuple(k.shape)} kernel",
                    "convert with kernel.T (transpose), not reshape", stage,
                    evidence=f"port weight reshaped back to {tuple(k.shape)} equals the Keras kernel exactly; "
                             f"max |Δ| to the transposed kernel {float(np.max(np.abs(got - w))):.3g}")
        if kind == "conv2d" and kernel is not None and key.endswith("weight"):
            k = np.asarray(kernel)
            if got.size == k.size and np.allclose(got.reshape(k.shape), k, rtol=PROBE_RTOL, atol=0):
                return _finding(
                    "conv_layout", path, f"{path} kernel looks reshaped, not permuted: HWIO {tuple(k.shape)} "
                    f"reshaped to {tuple(got.shape)}", "convert with kernel.transpose(3, 2, 0, 1)", stage,
                    evidence="port weight reshaped back equals the Keras kernel")
        fresh = _looks_fresh(got)
        return _finding(
            "init_after_load", path,
            f"{path}: the port's {key.rsplit('.', 1)[-1]} differs from the converted reference weight after "
            "load_state_dict: something re-initialises or overwrites it after loading"
            + (f" ({fresh})" if fresh else ""),
            "initialise in __init__ only; do not call reset_parameters / nn.init after loading weights", stage,
            evidence=f"{key}: max |port - converted| {float(np.max(np.abs(got - w))):.3g}; std port "
                     f"{float(np.std(got)):.3g}, converted {float(np.std(w)):.3g}")
    return None


def _looks_fresh(w: np.ndarray) -> str:
    if w.ndim < 2:
        return ""
    fan_in = int(np.prod(w.shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    if np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.8 * bound:
        return f"values within +-1/sqrt(fan_in) = {bound:.3g}: torch's default kaiming_uniform(a=sqrt(5)) init"
    return ""


# ---- forward (train) ------------------------------------------------------------------------------------
def _forward_train_rules(run: _Run, stage, diff: TensorDiff) -> list[Finding]:
    path = _base(diff.path)
    kind = run.kind(path)
    failing = [t for t in stage.tensors if not t.passed]
    stats_only = all(":running_" in t.path for t in failing)
    if stats_only and all(t.path.endswith(":running_var") for t in failing):
        return [_running_var_rule(run, path, diff)]
    if ":running_" in diff.path:
        return []
    if kind == "batchnorm":
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
        return [_finding(
            "train_eval_mode", path,
            f"BatchNorm {path} normalises with its running statistics during training (eval forward agrees, "
            "train forward does not): it stays in eval mode (a train() override, bn.eval(), "
            "track_running_stats / F.batch_norm(training=False))",
            "let module.train() reach the BatchNorm (do not freeze it) when training like the reference",
            stage.name, evidence=ev or diff.describe())]
    drops = _dropout_modules(run)
    return [_finding(
        "train_eval_mode", path,
        f"a train-mode-only difference before {path}: the eval forward agrees, the train forward does not "
        "(dropout or another train-only op that the reference lacks or has with another rate)"
        + (f"; port modules: {', '.join(drops)}" if drops else ""),
        "remove the extra dropout or give it the reference's rate", stage.name, evidence=diff.describe())]


def _running_var_rule(run: _Run, path, diff: TensorDiff) -> Finding:
    ev = diff.describe()
    factor = None
    if run.ref is not None and diff.index is not None:
        layer = run.ref_layer(path)
        info = run.ref.structure.get(layer, {})
        old = run.ref.weights.get(layer, {}).get("moving_variance")
        km = info.get("momentum")
        n = run.ref.bn_n.get(layer)
        if old is not None and km is not None and n:
            m = torch_bn_momentum_from_keras(float(km))
            i = diff.index
            o = float(np.asarray(old)[i])
            b_ref = (diff.ref_value - (1 - m) * o) / m
            b_port = (diff.port_value - (1 - m) * o) / m
            if b_ref:
                factor = b_port / b_ref
                ev = (f"batch part of the update: port / reference = {factor:.8f}; (n-1)/n = {(n - 1) / n:.8f} for "
                      f"n = {n} (N*H*W)")
    return _finding(
        "running_var_bias", path,
        "running_var differs by the factor n/(n-1) on the batch part: the port's BatchNorm updates running_var "
        "with the biased batch variance (Keras' convention), torch's nn.BatchNorm2d with the unbiased one, which "
        "is what parity converts from",
        "use nn.BatchNorm2d (unbiased running_var update) in the port, or x.var(unbiased=True) in a hand-written "
        "BatchNorm's running-statistics update", "forward_train", evidence=ev)


# ---- gradients -------------------------------------------------------------------------------------------------
def _gradient_rules(run: _Run, stage, diff: TensorDiff) -> list[Finding]:
    res = run.result
    loss_t = next((t for t in stage.tensors if t.path == "loss"), None)
    if loss_t is not None and not loss_t.passed and loss_t.ref_value:
        r = loss_t.port_value / loss_t.ref_value
        b = res.batch
        if _close(r, b, 1e-6) or _close(r, 1.0 / b, 1e-6):
            port_red, ref_red = ("sum", "mean") if _close(r, b, 1e-6) else ("mean", "sum")
            return [_finding("loss_reduction", "loss",
                             f"loss reduction: the port's loss is {r:g}x the reference's = the batch size {b}: "
                             f"the port reduces with {port_red} over the batch, the reference with {ref_red}",
                             f"use reduction='{ref_red}' in the port's loss", stage.name,
                             evidence=f"loss reference {loss_t.ref_value:.6g}, port {loss_t.port_value:.6g}")]
        f = _label_smoothing(run, loss_t)
        if f is not None:
            return [f]
        return [_finding("loss", "loss", f"the loss differs ({loss_t.port_value:.6g} in the port, "
                         f"{loss_t.ref_value:.6g} in the reference) while every forward activation agrees: the two "
                         "sides compute a different loss", "configure the port's loss like the reference's "
                         "(reduction, label smoothing, from_logits, class weights)", stage.name,
                         evidence=loss_t.describe())]
    failing = [t for t in stage.tensors if not t.passed and t.ref_value]
    ratios = [t.port_value / t.ref_value for t in failing if t.ref_value]
    if len(ratios) >= 3 and all(_close(x, ratios[0], 1e-4) for x in ratios):
        return [_finding("loss_reduction", _base(diff.path),
                         f"every gradient is {ratios[0]:.6g}x the reference's while the forward and the loss agree: "
                         "the port scales its loss or gradients", "use the reference's loss reduction / scale",
                         stage.name, evidence=f"{len(ratios)} gradients with the same ratio")]
    return []


def _label_smoothing(run: _Run, loss_t: TensorDiff) -> Finding | None:
    if run.ref is None or run.po.get("loss") != "categorical_crossentropy":
        return None
    out_path = run.po.get("output_path")
    probs = (run.ref.train_acts or {}).get(out_path) if out_path else None
    if probs is None and run.ts is not None:
        probs = _port_train_probabilities(run)
    if probs is None:
        return None
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(run.ref.labels[0], dtype=np.float64)
    ce = float(np.mean(-np.sum(y * np.log(p), axis=1)))
    uni = float(np.mean(-np.mean(np.log(p), axis=1)))
    if abs(uni - ce) < 1e-12:
        return None
    eps_port = (loss_t.port_value - ce) / (uni - ce)
    eps_ref = (loss_t.ref_value - ce) / (uni - ce)
    if 0 < eps_port < 1 and abs(eps_port - round(eps_port, 3)) < 1e-4 and abs(eps_ref) < 1e-4:
        return _finding("label_smoothing", "loss",
                        f"label smoothing {round(eps_port, 3):g} in the port's loss, none in the reference's",
                        f"F.cross_entropy(..., label_smoothing=0) (or give the reference label_smoothing="
                        f"{round(eps_port, 3):g})", "gradients",
                        evidence=f"port loss {loss_t.port_value:.6g} = (1-e)*CE + e*mean(-log p) with e = "
                                 f"{eps_port:.6f}")
    if 0 < eps_ref < 1 and abs(eps_ref - round(eps_ref, 3)) < 1e-4 and abs(eps_port) < 1e-4:
        return _finding("label_smoothing", "loss",
                        f"label smoothing {round(eps_ref, 3):g} in the reference's loss, none in the port's",
                        f"F.cross_entropy(..., label_smoothing={round(eps_ref, 3):g})", "gradients",
                        evidence=f"reference loss {loss_t.ref_value:.6g} = (1-e)*CE + e*mean(-log p), "
                                 f"e = {eps_ref:.6f}")
    return None


def _port_train_probabilities(run: _Run):
    """softmax of the port's train-mode output on the reference's first batch (the forward stages agreed, so
    these are the reference's probabilities too); the port's state is restored after."""
    ts = run.ts
    snap = ts.snapshot()
    try:
        ts.module.train()
        with ts.torch.no_grad():
            out = ts.module(ts.to_input(run.ref.inputs[0]))
        return out.softmax(dim=1).cpu().numpy()
    finally:
        ts.restore(snap)


# ---- optimizer step -----------------------------------------------------------------------------------------
def _step_rules(run: _Run, stage, diff: TensorDiff) -> list[Finding]:
    res = run.result
    grads = res.stage("gradients")
    if grads is not None and not grads.skipped and not grads.passed:
        return []
    opt = res.optimizer or {}
    kind = str(opt.get("kind", ""))
    path = _base(diff.path)
    failing = [t for t in stage.tensors if not t.passed]
    for rule in (_lr_schedule_rule, _lr_mult_rule):
        f = rule(run, stage, diff, opt)
        if f is not None:
            return [f]
    l2 = opt.get("l2") or {}
    if l2 and failing:
        layers = {_base(t.path): run.ref_layer(_base(t.path)) for t in failing}
        if all(layer in l2 for layer in layers.values()) and all(
                "weight" in t.path.split(":")[1] for t in failing if ":" in t.path):
            return [_l2_rule(run, path, diff, l2, layers, opt)]
    if kind.startswith("adam"):
        f = _adam_eps_rule(run, path, diff, opt)
        if f is not None:
            return [f]
    if kind.startswith("adam"):
        msg = ("gradients agree but the Adam update differs: epsilon placement (Keras adds eps to the "
               "uncorrected sqrt(v); torch to the corrected one) or beta/eps values")
        fix = "torch eps = keras_eps / sqrt(1 - beta_2**t) (parity.core.conventions.torch_adam_eps_from_keras)"
    else:
        msg = ("gradients agree but the optimizer update differs: weight decay / L2 (Keras l2(lam) == "
               "torch weight_decay 2*lam), momentum convention, lr_mult, or lr schedule")
        fix = "configure the torch optimizer with the named rules in parity.optim.adapters"
    return [_finding("optimizer", path, msg, fix, stage.name, evidence=diff.describe())]


def _step_of(path: str) -> int:
    """``k`` of a ``...@stepk`` tensor path (1 without a suffix: a one-step check)."""
    tail = path.rsplit("@step", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 1


def _lr_schedule_rule(run: _Run, stage, diff, opt) -> Finding | None:
    """Every update agrees until the step where the learning rate changes: the two optimizers put the lr in
    different places of the momentum recursion (Caffe SGD: ``h = mu*h + lr*g; w -= h``, the old lr stays in
    the history; torch SGD: ``buf = mu*buf + g; w -= lr*buf``, the new lr scales the whole buffer)."""
    k = _step_of(diff.path)
    lrs = [float(x) for x in (opt.get("lr_schedule") or [])]
    if k < 2 or len(lrs) < k or _close(lrs[k - 1], lrs[k - 2], 1e-12):
        return None
    if any(not t.passed for t in stage.tensors if _step_of(t.path) < k):
        return None
    return _finding(
        "lr_in_momentum", _base(diff.path),
        f"the updates agree until step {k}, where the learning rate changes ({lrs[k - 2]:g} -> {lrs[k - 1]:g}): "
        "the port's optimizer applies the new lr to its whole momentum buffer (torch SGD: buf = mu*buf + g, "
        "w -= lr*buf) where the reference keeps each step's lr inside its history (Caffe SGD: h = mu*h + lr*g, "
        "w -= h)",
        "use an optimizer with Caffe's rule (ported_torch.optim.CaffeSGD), or rescale the momentum buffers by "
        "lr_old/lr_new at the lr change", stage.name,
        evidence=f"{sum(1 for t in stage.tensors if _step_of(t.path) < k)} update/slot tensors of steps < {k} "
                 f"agree; {diff.describe()}")


def _lr_mult_of(opt: dict, layer: str | None, var: str) -> float | None:
    table = opt.get("lr_mult") or {}
    if not table or layer is None:
        return None
    role = "bias" if var in ("bias", "beta") else "kernel"
    for key in (f"{layer}:{var}", f"{layer}:{role}", f"{layer}/{var}", layer):
        if key in table:
            return float(table[key])
    return 1.0


def _lr_mult_rule(run: _Run, stage, diff, opt) -> Finding | None:
    """A parameter the reference's solver freezes (``lr_mult: 0``) changes in the port, or its update is the
    reference's divided by the layer's ``lr_mult``: the port's optimizer lost the per-layer multipliers."""
    if ".update" not in diff.path or not opt.get("lr_mult"):
        return None
    path = _base(diff.path)
    var = "bias" if ":bias" in diff.path else "kernel"
    lm = _lr_mult_of(opt, run.ref_layer(path), var)
    if lm is None or lm == 1.0:
        return None
    fix = ("one param group per layer with the solver's multipliers (lr = base_lr * lr_mult, weight_decay = "
           "wd * decay_mult; lr_mult 0: requires_grad=False): ported_torch.optim.CaffeSGD takes them per group")
    if lm == 0.0 and diff.scale == 0.0 and diff.max_abs > 0:
        return _finding("lr_mult", path, f"the reference's solver freezes {path} (lr_mult 0: its update is exactly "
                        "0) but the port updates it", fix, stage.name, evidence=diff.describe())
    if lm and diff.ref_value and _close(diff.port_value / diff.ref_value, 1.0 / lm, 1e-3):
        return _finding("lr_mult", path, f"the port's update of {path} is the reference's divided by {lm:g}: "
                        f"lr_mult {lm:g} is missing in the port's optimizer", fix, stage.name,
                        evidence=diff.describe())
    return None


def _l2_rule(run: _Run, path, diff, l2, layers, opt) -> Finding:
    names = sorted(set(layers.values()))
    lam = float(l2[names[0]])
    want = torch_weight_decay_from_keras_l2(lam)
    ev = f"only the kernels with a Keras l2 regulariser differ ({', '.join(names)})"
    implied = None
    if run.ref is not None and diff.index is not None and diff.path.split(":")[-1].startswith("weight.update"):
        from weight_converters.keras import var_to_torch

        tap = run.tap_by_path.get(path)
        w = run.ref.weights.get(tap.ref, {}).get("kernel") if tap is not None else None
        if w is not None:
            w_t = var_to_torch(tap.kind, "kernel", w, flatten_chw=tap.flatten_chw)
            wi = float(w_t[diff.index])
            lr = float(opt.get("lr", 0.0))
            if wi and lr:
                # torch update = -lr (g + wd w); reference = -lr (g + 2 lam w)
                implied = want - (diff.port_value - diff.ref_value) / (lr * wi)
                ev += (f"; port - reference update = {diff.port_value - diff.ref_value:.3g} = lr*(2*lam - wd)*w "
                       f"with w = {wi:.4g}: implied port weight_decay {implied:.4g}, needed {want:.4g}")
    if implied is not None and abs(implied) < 1e-3 * want:
        what = "the port has no weight decay on them"
    elif implied is not None and _close(implied, lam, 1e-3):
        what = f"the port uses weight_decay={lam:g} (= lam, not 2*lam)"
    elif implied is not None:
        what = f"the port's effective weight_decay is {implied:.4g}"
    else:
        what = "the port's weight decay on them differs"
    return _finding("l2_weight_decay", path,
                    f"Keras l2({lam:g}) on {', '.join(names)} adds 2*lam*w = {want:g}*w to the gradient; {what}",
                    f"torch weight_decay={want:g} on exactly those kernels (parity.core.conventions."
                    "torch_weight_decay_from_keras_l2)", "step", evidence=ev)


def _adam_eps_rule(run: _Run, path, diff, opt) -> Finding | None:
    """Step 1: torch's update with a plain eps is -lr * g / (|g| + eps); Keras' -lr * g / (|g| + eps / sqrt(1 - b2))."""
    if run.ref is None or diff.index is None or ":" not in diff.path or ".update" not in diff.path:
        return None
    tap = run.tap_by_path.get(path)
    if tap is None:
        return None
    suffix = diff.path.split(":")[1].split(".update")[0]
    key = f"{tap.port}.{suffix}" if tap.port else suffix
    from weight_converters.keras import LAYER_VARS, var_to_torch

    var = next((v for v, s in LAYER_VARS.get(tap.kind, {}).items() if s == suffix and v in
                run.ref.param_grads.get(tap.ref, {})), None)
    g_ref = run.ref.param_grads.get(tap.ref, {}).get(var) if var else None
    if g_ref is None:
        return None
    g = float(var_to_torch(tap.kind, var, g_ref, flatten_chw=tap.flatten_chw)[diff.index])
    lr, eps, b2 = float(opt.get("lr", 0)), float(opt.get("epsilon", 0)), float(opt.get("beta_2", 0.999))
    if g == 0 or not lr:
        return None
    plain = -lr * g / (abs(g) + eps)
    if _close(diff.port_value, plain, 1e-6):
        good = torch_adam_eps_from_keras(eps, b2, 1)
        return _finding(
            "adam_epsilon", path,
            f"Adam epsilon: the port uses torch.optim.Adam(eps={eps:g}) as given to Keras; Keras adds eps to the "
            f"uncorrected sqrt(v), torch to the bias-corrected one, so torch needs eps/sqrt(1-beta_2**t) "
            f"({good:.3g} at step 1)",
            "set group['eps'] = keras_eps / sqrt(1 - beta_2**t) every step "
            "(parity.core.conventions.torch_adam_eps_from_keras)", "step",
            evidence=f"{key} at {diff.index}: gradient {g:.4g}; port update {diff.port_value:.6g} = -lr*g/(|g|+eps) "
                     f"= {plain:.6g}; reference {diff.ref_value:.6g}")
    return None


# ==== stage attachment ========================================================================================
def attach_stages(result: CheckResult) -> None:
    """Set each structural finding's ``stage`` to the first numeric stage where its layer diverged."""
    order = [s for s in result.stages if s.name != "structure" and not s.skipped]
    for f in result.findings:
        if f.stage not in (None, "structure"):
            continue
        for s in order:
            hit = next((t for t in s.tensors if not t.passed and _base(t.path) == f.path), None)
            if hit is not None:
                f.stage = s.name
                f.evidence = (f.evidence + "; " if f.evidence else "") + f"{s.name}: max|Δ| {hit.max_abs:.3g}"
                break
