"""The ``structure`` stage: per aligned layer, kinds, configs (eps, momentum, padding, bias, strides),
parameter counts (Keras trainable / non-trainable against torch parameters / buffers / num_batches_tracked),
output shapes, the whole-model parameter reconciliation, modules the port shares where the reference has
distinct layers, and the weight conversion report.
"""
from __future__ import annotations

import re

import time

import numpy as np

from parity import diagnosis
from parity.backends.torch_probe import computes_tf_same
from parity.backends.torch_side import module_info
from parity.core.families import torch_info
from parity.core.results import Finding, StageResult
from parity.core.spec import Tap
from parity.stages.context import CheckContext


def run(ctx: CheckContext) -> None:
    """The structure stage, first in the result; its findings join the check's findings."""
    if "structure" not in ctx.stages:
        return
    t = time.perf_counter()
    st = StageResult("structure")
    findings: list[Finding] = []
    for tap in ctx.taps:
        _layer_row(ctx, tap, st, findings)
    _reconcile_parameters(ctx, st)
    findings += shared_module_findings(ctx)
    _conversion_info(ctx, st)
    for f in findings:
        if f.severity == "error" and f"{f.path}: {f.message}" not in st.errors:
            st.errors.append(f"{f.path}: {f.message}")
    st.findings = findings
    ctx.result.findings += findings
    st.seconds = time.perf_counter() - t
    ctx.result.stages.insert(0, st)


def _ref_shape(tap: Tap, acts, path) -> tuple:
    """The shape of a reference activation in the port's layout, without loading a spilled array."""
    h = acts.handle(path) if hasattr(acts, "handle") else acts[path]
    shape = tuple(np.shape(h) if not hasattr(h, "shape") else h.shape)
    if len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    if len(shape) == 5:  # a volume (N, D, H, W, C) -> (N, C, D, H, W)
        return (shape[0], shape[4], shape[1], shape[2], shape[3])
    return shape


def _port_info(mod, tap: Tap, rinfo: dict) -> dict:
    """The port module's description, amended by what the alignment saw around it (a pad before it, a crop after
    it, a time-major feed) and by what it computes (TF 'same' observed)."""
    pinfo = module_info(mod)
    nd_pre = re.search(r"prepad\[(\d+(?:,\d+){3,})\]", tap.port_transform or "")  # an image's or a volume's
    nd_pre = [int(v) for v in nd_pre.group(1).split(",")] if nd_pre else None
    if nd_pre:
        pinfo["prepad"] = nd_pre
    if rinfo.get("padding") == "same" and not pinfo.get("tf_padding") and computes_tf_same(mod, rinfo, prepad=nd_pre):
        # ceil_mode=True on an even size, a subclass padding in its own forward, an F.pad before the module in the
        # parent's forward: TF 'same' by what it computes
        pinfo["tf_padding"] = "same (observed)"
    if (tap.port_transform or "").startswith(("time_major", "bidirectional_time_major")):
        pinfo["fed_time_major"] = True  # batch_first=False fed (L, N, C): the alignment saw the transpose
    pre = re.search(r"prepad\[(\d+),(\d+)\]", tap.port_transform or "")
    if pre:  # the port pads before its Conv1d: left only is the conv's causal pad, (p, p) its symmetric padding=p
        left, right = int(pre.group(1)), int(pre.group(2))
        own = pinfo.get("padding")
        own = int(own[0]) if isinstance(own, list) and own else 0
        pinfo["prepad"] = [left + own, right + own]  # the padding the conv sees in all (TF 'same': conv1d family)
        if right == 0:
            pinfo["causal_pad"] = left
        elif left == right:
            pinfo["padding"] = [left]
    if (tap.port_transform or "").startswith("crop["):  # a transposed conv cropped to 'same' after the module
        pinfo["class"] = f"{pinfo.get('class')} + crop"
    return pinfo


def _layer_row(ctx: CheckContext, tap: Tap, st: StageResult, findings: list[Finding]) -> None:
    """One aligned layer: its row in the stage's table, its errors and findings."""
    ref = ctx.ref
    rinfo = ref.structure.get(tap.ref, {})
    mod = ctx.ts.modules.get(tap.port)
    row = {"path": tap.path, "kind": tap.kind, "reference": f"{tap.ref} ({rinfo.get('class', '?')})",
           "port": f"{tap.port or '<output>'} ({type(mod).__name__ if mod is not None else 'MISSING'})"}
    if mod is None:
        st.errors.append(f"{tap.path}: port module {tap.port!r} not found")
        findings.append(Finding("missing_module", tap.path, f"port has no module {tap.port!r}",
                                "add the layer (or fix the tap's module path)", stage="structure"))
        st.rows.append(row | {"status": "missing"})
        return
    pinfo = _port_info(mod, tap, rinfo)
    if tap.weighted:
        rt, rn = rinfo.get("trainable_params", 0), rinfo.get("non_trainable_params", 0)
        # torch-only parameters a layer family declares (an LSTM's bias_hh next to Keras' one bias)
        pt, pb = pinfo["params"] - pinfo.get("torch_only_params", 0), pinfo["buffers"]
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
    shapes = ctx.eval_shapes
    if shapes is not None and tap.path in ref.eval_acts and tap.path in shapes:
        rs = _ref_shape(tap, ref.eval_acts, tap.path)[1:]
        pa = shapes[tap.path]
        ps = (tuple(pa) if isinstance(pa, tuple) else tuple(np.shape(pa)))[1:]
        row.update(ref_shape=list(rs), port_shape=list(ps))
        if rs != ps:
            st.errors.append(f"{tap.path}: output shape {ps} in the port, {rs} in the reference")
    f = diagnosis.structure_findings(tap, rinfo, pinfo)
    findings += f
    row["status"] = "differs" if f else "ok"
    st.rows.append(row)


def _reconcile_parameters(ctx: CheckContext, st: StageResult) -> None:
    """Whole-model parameter counts: Keras' total / trainable / non-trainable against torch's parameters,
    buffers and num_batches_tracked counters, and the published total when the pair has one."""
    mp = ctx.ref.model_params
    module = ctx.ts.module
    tparams = sum(p.numel() for p in module.parameters())
    tparams -= sum(torch_info(m).get("torch_only_params", 0) for m in module.modules())  # e.g. an LSTM's bias_hh
    bufs = {k: b for k, b in module.named_buffers()}
    tbuf = sum(b.numel() for k, b in bufs.items() if not k.endswith("num_batches_tracked"))
    ntracked = sum(1 for k in bufs if k.endswith("num_batches_tracked"))
    recon = {"reference_total": mp["total"], "reference_trainable": mp["trainable"],
             "reference_non_trainable": mp["non_trainable"], "port_parameters": int(tparams),
             "port_buffers": int(tbuf), "port_num_batches_tracked": ntracked,
             "published": dict(ctx.spec.published_params)}
    recon["explanation"] = (
        f"Keras counts {mp['total']:,} = {mp['trainable']:,} trainable + {mp['non_trainable']:,} non-trainable "
        f"(BatchNorm moving mean/variance); torch counts {tparams:,} parameters (= Keras trainable) and keeps "
        f"the {tbuf:,} running statistics as buffers, plus {ntracked} num_batches_tracked counters "
        f"(torch-only bookkeeping, not parameters).")
    st.info["param_reconciliation"] = recon
    if (tparams, tbuf) != (mp["trainable"], mp["non_trainable"]):
        st.errors.append(f"model parameters: reference {mp['trainable']:,} trainable + {mp['non_trainable']:,} "
                         f"non-trainable, port {tparams:,} parameters + {tbuf:,} buffers")
    pub = ctx.spec.published_params
    if pub and ctx.result.config == ctx.spec.config():
        if pub.get("total") not in (None, mp["total"]):
            st.errors.append(f"reference model: {mp['total']:,} parameters, published {pub['total']:,}")


def _conversion_info(ctx: CheckContext, st: StageResult) -> None:
    """The weight conversion report, how ``--weights FILE`` was read, and the pair's named conventions."""
    report = ctx.conversion
    for prob in report.problems():
        st.errors.append(f"weights: {prob}")
    st.info["conversion"] = report.summary()
    if ctx.ref.meta.get("weights_report"):  # how --weights FILE was read (format, assumptions such as squeezes)
        st.info["weights_file"] = ctx.ref.meta["weights_report"]
    st.info["conventions"] = [{"name": c.name, "reference": c.reference, "port": c.port, "origin": c.origin}
                              for c in ctx.spec.conventions]


def shared_module_findings(ctx: CheckContext) -> list[Finding]:
    """A port module with parameters called more than once in the eval forward (e.g. one middle-flow block
    called 8x): shared weights where the reference has distinct layers. Reported at the first tap where the reuse
    shows (the second alias), with the parameter gap it explains."""
    from ported_torch.inspect import shared_modules

    if getattr(ctx.spec, "alignment", None) is not None:
        # a user pair: its alignment knows which reference layers a reused module stands for (a layer the
        # reference shares too is no finding); parity.user.pair.alignment_verdict names the rest
        return []
    ts, taps = ctx.ts, ctx.taps
    if getattr(ts, "module_calls", None) is None:  # a port that cannot run is reported by the forward stages
        return []
    shared = shared_modules(ts.module, ts.module_calls)  # counted in the eval forward (parity.stages.forward)
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
