"""Automatic alignment of a user's Keras model with a user's torch port: which reference layer is which port
module (or group of modules), by what they compute, never by what they are called.

1. Trace the reference: ``model.layers`` in topological order, each with its class, config, weight shapes
   converted to torch layout by the converter's rules (HWIO -> OIHW, Dense (in, out) -> (out, in), depthwise
   (kh, kw, in, m) -> (in*m, 1, kh, kw); other families: their converter) and its output shape in NCHW.
2. Trace the port: the modules that compute something (leaf modules; ``depthwise``+``pointwise`` units and
   modules whose parameters are one multi-module layer's) in call order, via forward hooks on one example
   input in eval mode, with their parameter shapes, output shapes and data flow (which call made each input,
   recorded at hook time, so an in-place activation is a producer like any other); functional ops that
   matter (add, cat, relu, softmax, flatten, pooling) join the sequence from a ``torch.fx`` trace when the
   model is traceable (they cannot be tapped, but they hold their place).
3. Group by structure: a depthwise conv (groups = in_channels) whose output feeds exactly one call, a 1x1
   stride-1 conv, with the weight shapes of one of the reference's SeparableConv2D, becomes one
   ``separable_conv2d`` node wherever the two modules live (children with any names, an ``nn.Sequential``,
   siblings); ``--align REF=DW+PW`` forces such a group.
4. Align the two sequences: pins first, then anchors (weighted layers with a unique signature), data flow,
   then Needleman-Wunsch over the rest, where a match scores kind agreement, equal converted parameter
   shapes, equal output shapes, equal activations, inputs from matched partners and the same matched
   neighbour before it; a gap costs a little, more for a layer with weights.
5. Every layer ends in the table with a status: ``aligned``, ``pinned``, ``fused`` (a port activation folded
   into the reference layer's ``activation=``, or a flatten into a global pooling), ``functional`` (a port
   op that is not a module: no tap), ``shared`` (a later call of a weighted port module that already stands
   for another reference layer), ``unaligned-ref`` or ``unaligned-port``. Nothing is dropped silently.
   :meth:`Alignment.incomplete` says what keeps weights from being transferred (the check's first verdict).
6. What the port's own modules cannot express is named for :mod:`parity.user.view`: module groups,
   per-call aliases of a parameter-free module called repeatedly (``act#2``), and a padding conv seen from
   a reference that pads with ZeroPadding2D (``conv#unpadded``).

Steps 1-3 are the backends' (:mod:`parity.backends.keras_trace`, :mod:`parity.backends.torch_trace`, the nodes
both make in :mod:`parity.backends.trace_nodes`); this module aligns and re-exports their public names.
Frameworks are imported inside the functions (torch for the example input and the port's probes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.backends.keras_trace import keras_param_shapes, trace_keras
from parity.backends.torch_side import apply_transform
from parity.backends.torch_trace import PortTrace, group_name, group_separable, torch_kind, trace_torch
from parity.backends.trace_nodes import (
    CALL_MARK, CHEAP_REF, FUNCTIONAL_OPS, GROUP_JOIN, KERAS_KINDS, PADDED_MARK, TORCH_ACTIVATIONS, AlignmentError,
    Node, close_names)
from parity.core.families import refuse_unsupported
from parity.core.families.recurrent import RNN_KINDS
from parity.core.spec import Tap

__all__ = [
    "CALL_MARK", "CHEAP_REF", "COMPATIBLE", "FUNCTIONAL_OPS", "GROUP_JOIN", "KERAS_KINDS", "PADDED_MARK",
    "TORCH_ACTIVATIONS", "Alignment", "AlignmentError", "Node", "PortTrace", "Row", "align", "align_nodes",
    "anchors", "example_input", "follow_dataflow", "group_name", "group_separable", "integer_input_range",
    "keras_param_shapes", "needleman_wunsch", "parse_pins", "score", "separable_signatures",
    "supported_transforms", "torch_kind", "trace_keras", "trace_torch"]

#: port transforms that act on each element alone: they compose with an axis move (``"relu|channels_last"``)
ELEMENTWISE_TRANSFORMS = (None, "relu", "relu6", "sigmoid", "tanh", "elu", "swish", "silu", "linear")

#: kinds that may be matched although they differ (score 1 instead of 3)
COMPATIBLE = {frozenset(("conv2d", "depthwise_conv2d")), frozenset(("conv1d", "depthwise_conv1d")),
              frozenset(("gap", "avgpool")),
              frozenset(("reshape", "flatten")),
              # a MultiHeadAttention ported as nn.MultiheadAttention (packed in_proj): converted as the port's kind
              frozenset(("attention", "attention_packed"))}

#: the view's name of a unit seen with the converter's child names (``sa#attention``: parity.user.view)
ROLES_MARK = "#attention"

MATCH_SAME_KIND = 3.0
MATCH_COMPATIBLE = 1.0
MATCH_FUNCTIONAL = 1.5
GAP_WEIGHTED = -3.0
GAP_PLAIN = -1.0
GAP_CHEAP = -0.2


@dataclass
class Row:
    """One line of the alignment table."""

    ref: str | None
    port: str | None
    kind: str
    score: float | None
    status: str
    ref_class: str = ""
    port_class: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return {"ref": self.ref, "port": self.port, "kind": self.kind,
                "score": None if self.score is None else round(self.score, 3), "status": self.status,
                "ref_class": self.ref_class, "port_class": self.port_class, "note": self.note}


@dataclass
class Alignment:
    taps: list[Tap]
    rows: list[Row]
    ref_nodes: list[Node]
    port_nodes: list[Node]
    traced_with: str = "hooks"
    #: port module groups that stand for one reference layer: group path -> member module paths (in call order)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: port paths that name one use of a module (dots as slashes): ``"block/act#2"`` -> ("call", "block.act", 2)
    #: (the second call of a parameter-free module), ``"conv_b#unpadded"`` -> ("padded", "conv_b", (1, 1)) (a
    #: padding conv fed the
    #: reference's explicitly padded input in the isolated stage)
    aliases: dict[str, tuple] = field(default_factory=dict)
    #: weighted port modules called for several distinct reference layers: module path -> reference layers
    shared: dict[str, list[str]] = field(default_factory=dict)
    #: (reference layer, port module, activation): a fused ``activation=`` the port's forward never applies
    missing_activations: list[tuple[str, str, str]] = field(default_factory=list)
    #: the reference ends in softmax and so does the port's forward (F.softmax / nn.Softmax last): the port
    #: returns probabilities, and is trained with Keras' loss on them (LossSpec.port_probabilities)
    port_probabilities: bool = False

    def table(self) -> list[dict]:
        return [r.to_dict() for r in self.rows]

    def incomplete(self) -> dict[str, Any] | None:
        """What keeps weights from being transferred, or None when every weighted layer has a partner:
        ``ref_left`` (reference layers with weights and no port counterpart, each with its closest port
        candidates and the ``--align`` pin that would fix it), ``port_left`` (port modules with parameters and
        no reference counterpart) and ``shared`` (port modules standing for several distinct reference layers)."""
        ref_by = {n.name: n for n in self.ref_nodes}
        port_by = {n.name: n for n in self.port_nodes if not n.functional}
        # a later call of a module whose first call is aligned reuses transferred weights (a layer the reference
        # shares too, e.g. one tower for two inputs): not a leftover
        transferred = {r.port for r in self.rows if r.status in ("aligned", "pinned")}
        left_port = [r.port for r in self.rows if r.status == "unaligned-port" and r.port in port_by
                     and port_by[r.port].weighted and r.port not in transferred]
        ref_left = []
        for r in self.rows:
            n = ref_by.get(r.ref)
            if r.status != "unaligned-ref" or n is None or not n.weighted:
                continue
            pool = [port_by[q] for q in left_port]
            ranked = sorted(((score(n, p), p.name) for p in pool), key=lambda t: -t[0])
            cands = [name for sc, name in ranked if sc > -math.inf][:3]
            if n.kind == "separable_conv2d":  # a depthwise conv and a 1x1 conv of its shapes, left over
                dws = [p.name for p in pool if p.kind == "depthwise_conv2d"
                       and p.params.get("weight") == n.params.get("depthwise.weight")]
                pws = [p.name for p in pool if p.kind == "conv2d"
                       and p.params.get("weight") == n.params.get("pointwise.weight")]
                cands = [f"{a}{GROUP_JOIN}{b}" for a in dws for b in pws][:3]
            after = next((self.rows[k].port for k in range(len(self.rows)) if self.rows[k].ref is not None
                          and self.rows[k].port and any(ref_by.get(self.rows[k].ref) is self.ref_nodes[q]
                                                         for q in n.producers if q >= 0)), None)
            ref_left.append({"layer": n.name, "class": n.cls, "candidates": cands, "after": after,
                             "pin": f"--align {n.name}={cands[0]}" if cands else None})
        if not ref_left and not left_port and not self.shared:
            return None
        return {"ref_left": ref_left,
                "port_left": [{"module": q, "class": port_by[q].cls,
                               "params": sorted(port_by[q].params)} for q in left_port],
                "shared": [{"module": m, "calls": len(refs), "layers": list(refs)} for m, refs in self.shared.items()]}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def format(self) -> str:
        """A plain-text table (the CLI and error messages use it)."""
        lines = [f"{'reference layer':<28} {'port module':<30} {'kind':<17} {'score':>5}  status"]
        for r in self.rows:
            sc = "" if r.score is None else f"{r.score:.2f}"
            note = f"  ({r.note})" if r.note else ""
            lines.append(f"{(r.ref or '-'):<28} {(r.port if r.port is not None else '-') or '<output>':<30} "
                         f"{r.kind:<17} {sc:>5}  {r.status}{note}")
        return "\n".join(lines)


def _dotless(path: str) -> str:
    """A port path as the name of one module of the view (module names cannot hold dots)."""
    return path.replace(".", "/")


# --- scoring and alignment --------------------------------------------------------------------------------
def _act_norm(a: str | None) -> str | None:
    return {"swish": "silu"}.get(a, a) if a else a


def score(r: Node, p: Node) -> float:
    """How well reference node ``r`` matches port node ``p``; ``-inf`` when they cannot match."""
    if r.kind == p.kind:
        s = MATCH_FUNCTIONAL if p.functional else MATCH_SAME_KIND
    elif frozenset((r.kind, p.kind)) in COMPATIBLE:
        s = MATCH_COMPATIBLE
    else:
        return -math.inf
    if p.functional:
        return s
    if r.params or p.params:
        for key, shp in r.params.items():
            if key not in p.params:
                s -= 0.5
            elif tuple(p.params[key]) == tuple(shp):
                s += 1.0
            else:
                s -= 0.5
        s -= 0.25 * sum(1 for k in p.params if k not in r.params)
    if r.out_shape is not None and p.out_shape is not None and None not in r.out_shape:
        s += 1.0 if tuple(r.out_shape) == tuple(p.out_shape) else -0.5
    if r.kind == "activation" and r.act is not None and p.act is not None:
        s += 1.0 if _act_norm(r.act) == _act_norm(p.act) else 0.0
    return s


def _max_score(r: Node) -> float:
    return MATCH_SAME_KIND + len(r.params) + (1.0 if r.out_shape else 0.0) + (1.0 if r.kind == "activation" else 0.0)


def _gap(n: Node) -> float:
    if n.functional or n.cheap:
        return GAP_CHEAP
    return GAP_WEIGHTED if n.weighted else GAP_PLAIN


def needleman_wunsch(ref: list[Node], port: list[Node], sc: list[list[float]] | None = None
                     ) -> list[tuple[int | None, int | None, float | None]]:
    """Global alignment of the two sequences; returns (ref index | None, port index | None, score).
    ``sc``: the match scores (``score`` of every pair when not given)."""
    n, m = len(ref), len(port)
    neg = -math.inf
    if sc is None:
        sc = [[score(r, p) for p in port] for r in ref]
    dp = [[neg] * (m + 1) for _ in range(n + 1)]
    bt = [[0] * (m + 1) for _ in range(n + 1)]
    dp[0][0] = 0.0
    for i in range(1, n + 1):
        dp[i][0], bt[i][0] = dp[i - 1][0] + _gap(ref[i - 1]), 1
    for j in range(1, m + 1):
        dp[0][j], bt[0][j] = dp[0][j - 1] + _gap(port[j - 1]), 2
    for i in range(1, n + 1):
        gi = _gap(ref[i - 1])
        for j in range(1, m + 1):
            best, how = dp[i - 1][j] + gi, 1
            v = dp[i][j - 1] + _gap(port[j - 1])
            if v > best:
                best, how = v, 2
            s = sc[i - 1][j - 1]
            if s > neg and dp[i - 1][j - 1] + s >= best:
                best, how = dp[i - 1][j - 1] + s, 0
            dp[i][j], bt[i][j] = best, how
    out = []
    i, j = n, m
    while i > 0 or j > 0:
        how = bt[i][j] if i > 0 and j > 0 else (1 if i > 0 else 2)
        if how == 0:
            out.append((i - 1, j - 1, sc[i - 1][j - 1]))
            i, j = i - 1, j - 1
        elif how == 1:
            out.append((i - 1, None, None))
            i -= 1
        else:
            out.append((None, j - 1, None))
            j -= 1
    return out[::-1]


def _signature(n: Node):
    return (n.kind, tuple(sorted(n.params.items())), n.out_shape)


def anchors(ref: list[Node], port: list[Node], exclude_r=(), exclude_p=()) -> dict[int, int]:
    """Weighted layers whose (kind, converted parameter shapes, output shape) signature occurs as often on
    both sides: the k-th occurrence in the reference is the k-th in the port. Branch order may differ
    between the two graphs (Keras lists a residual branch after the main path, a port may run it first);
    these matches do not depend on it."""
    by_sig_r: dict[Any, list[int]] = {}
    by_sig_p: dict[Any, list[int]] = {}
    for i, r in enumerate(ref):
        if r.weighted and i not in exclude_r and r.out_shape is not None:
            by_sig_r.setdefault(_signature(r), []).append(i)
    for j, p in enumerate(port):
        if p.weighted and not p.functional and j not in exclude_p and p.out_shape is not None:
            by_sig_p.setdefault(_signature(p), []).append(j)
    out = {}
    for sig, rs in by_sig_r.items():
        ps = by_sig_p.get(sig, [])
        if len(ps) == len(rs):
            out.update(zip(rs, ps))
    return out


CONTEXT_BONUS = 1.5
#: a free pair whose nearest matched predecessors are partners scores this much more, else this much less
POSITION_BONUS = 1.5
#: nodes a data-flow walk passes through when they have no partner (an extra Identity / Dropout)
TRANSPARENT = {("activation", "linear"), ("dropout", None)}


def _effective_producers(nodes: list[Node], i: int, matched: set[int]) -> set[int]:
    """Producers of node ``i``, looking through unmatched identity-like nodes (extra Identity / Dropout)."""
    out: set[int] = set()
    stack = list(nodes[i].producers)
    seen = set()
    while stack:
        q = stack.pop()
        if q in seen:
            continue
        seen.add(q)
        if q >= 0 and q not in matched and (nodes[q].kind, nodes[q].act) in TRANSPARENT and nodes[q].producers:
            stack.extend(nodes[q].producers)
        else:
            out.add(q)
    return out


def follow_dataflow(ref: list[Node], port: list[Node], fixed: dict[int, int]) -> dict[int, int]:
    """Grow the matched set along the data flow: a reference node whose producers are all matched pairs with
    the best-scoring free port node of a compatible kind fed by exactly their partners (looking through an
    unmatched Identity / Dropout on either side). Independent of the order the graphs list their layers in
    (two parallel streams, branches), which a sequence alignment cannot cross."""
    matched = dict(fixed)
    taken = set(matched.values())
    found: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for i, r in enumerate(ref):
            if i in matched or not r.producers:
                continue
            prods = _effective_producers(ref, i, set(matched))
            if any(q >= 0 and q not in matched for q in prods):
                continue
            want = {matched[q] if q >= 0 else -1 for q in prods}
            best, best_j = -math.inf, None
            for j, p in enumerate(port):
                if j in taken or p.functional or not p.producers:
                    continue
                if _effective_producers(port, j, taken) != want:
                    continue
                v = score(r, p)
                if v > best:
                    best, best_j = v, j
            if best_j is not None:
                matched[i] = best_j
                taken.add(best_j)
                found[i] = best_j
                changed = True
    return found


def align_nodes(ref: list[Node], port: list[Node], pins: dict[str, str] | None = None
                ) -> list[tuple[int | None, int | None, float | None, str]]:
    """Align node lists; returns (ref index | None, port index | None, score, status) in reference order.

    Pins first, then anchors (:func:`anchors`), then Needleman-Wunsch over the rest, where a pair whose
    inputs come from an already matched pair scores :data:`CONTEXT_BONUS` more (data flow, not position),
    then a last pass pairs same-kind leftovers whose shapes agree uniquely."""
    pins = pins or {}
    ref_names = [r.name for r in ref]
    port_names = [p.name for p in port if not p.functional]
    pinned: dict[int, int] = {}
    for rname, pname in pins.items():
        if rname not in ref_names:
            raise AlignmentError(f"--align {rname}={pname}: expected a layer of the reference model. Received: "
                                 f"{rname!r}, which it does not have.{close_names(rname, ref_names)}")
        if pname not in port_names:
            raise AlignmentError(f"--align {rname}={pname}: expected a module path of the port that runs in "
                                 f"forward. Received: {pname!r}.{close_names(pname, port_names)}")
        pinned[ref_names.index(rname)] = next(j for j, p in enumerate(port) if p.name == pname)
    anchored = anchors(ref, port, exclude_r=set(pinned), exclude_p=set(pinned.values()))
    fixed = dict(anchored)
    fixed.update(pinned)
    anchored.update(follow_dataflow(ref, port, fixed))
    fixed.update(anchored)
    free_r = [i for i in range(len(ref)) if i not in fixed]
    taken = set(fixed.values())
    free_p = [j for j in range(len(port)) if j not in taken]

    def scores(matched: dict[int, int]) -> list[list[float]]:
        # position: the matched pair nearest before each node (a free node between two matched pairs in one
        # model belongs between their partners in the other)
        fixed_r = sorted(matched)
        fixed_p = sorted(matched.values())

        def before(sorted_idx, k):
            lo = [q for q in sorted_idx if q < k]
            return lo[-1] if lo else None

        sc = []
        for i in free_r:
            r = ref[i]
            want = {matched.get(q, -1) if q >= 0 else -1 for q in r.producers}
            pr = before(fixed_r, i)
            anchor_r = matched[pr] if pr is not None else None
            row = []
            for j in free_p:
                v = score(r, port[j])
                if v > -math.inf and r.producers and port[j].producers and want & set(port[j].producers):
                    v += CONTEXT_BONUS
                if v > -math.inf and anchor_r is not None:
                    anchor_p = before(fixed_p, j)
                    if anchor_p is not None:
                        v += POSITION_BONUS if anchor_p == anchor_r else -POSITION_BONUS
                row.append(v)
            sc.append(row)
        return sc

    pairs = needleman_wunsch([ref[i] for i in free_r], [port[j] for j in free_p], scores(fixed))
    result: list[tuple[int | None, int | None, float | None, str]] = []
    for a, b, s in pairs:
        ri = free_r[a] if a is not None else None
        pj = free_p[b] if b is not None else None
        if ri is not None and pj is not None:
            result.append((ri, pj, score(ref[ri], port[pj]),
                           "functional" if port[pj].functional else "aligned"))
        elif ri is not None:
            result.append((ri, None, None, "unaligned-ref"))
        else:
            result.append((None, pj, None, "unaligned-port"))
    # leftovers of one kind on both sides whose shapes pair them uniquely (graphs visited in another order)
    left_r = [k for k, r in enumerate(result) if r[3] == "unaligned-ref"]
    left_p = [k for k, r in enumerate(result) if r[3] == "unaligned-port" and not port[r[1]].functional]
    used: set[int] = set()
    for kr in left_r:
        ri = result[kr][0]
        if ref[ri].out_shape is None or ref[ri].kind in ("activation", "dropout"):
            continue
        cands = [kp for kp in left_p if kp not in used
                 and score(ref[ri], port[result[kp][1]]) >= _max_score(ref[ri]) - 0.01]
        if len(cands) == 1:
            kp = cands[0]
            used.add(kp)
            result[kr] = (ri, result[kp][1], score(ref[ri], port[result[kp][1]]), "aligned")
            result[kp] = (None, None, None, "dropped")
    result = [r for r in result if r[3] != "dropped"]
    for ri, pj in anchored.items():
        result.append((ri, pj, score(ref[ri], port[pj]), "aligned"))
    for ri, pj in pinned.items():
        result.append((ri, pj, score(ref[ri], port[pj]), "pinned"))
    # table order: the reference's; a port-only row goes right after the port row it follows
    port_pos = {r[1]: r[0] for r in result if r[0] is not None and r[1] is not None}
    keyed = []
    for k, r in enumerate(result):
        if r[0] is not None:
            keyed.append((float(r[0]), 0, k, r))
        else:
            before = [port_pos[q] for q in range(r[1] - 1, -1, -1) if q in port_pos]
            keyed.append(((before[0] if before else -1) + 0.5, r[1], k, r))
    keyed.sort(key=lambda t: (t[0], t[1], t[2]))
    return [r for *_, r in keyed]


def parse_pins(pins) -> dict[str, str]:
    """``["ref=port.path", ...]`` (or a dict) -> ``{ref: port}``."""
    if not pins:
        return {}
    if isinstance(pins, dict):
        return {str(k): str(v) for k, v in pins.items()}
    out = {}
    for item in pins:
        ref, sep, port = str(item).partition("=")
        if not sep or not ref.strip():
            raise AlignmentError(f"--align: expected REF_LAYER=PORT.MODULE.PATH (e.g. conv1=features.0). "
                                 f"Received: {item!r}.")
        out[ref.strip()] = port.strip()
    return out


# --- the public entry point --------------------------------------------------------------------------------
#: the name of the layer that packs a reference's several outputs into one (batch, sum of widths) tensor
#: (:func:`parity.user.outputs.packed_outputs`)
PACKED_OUTPUTS = "parity_outputs"


def packed_transform(ref, producers) -> str | None:
    """The port transform of the packed outputs: softmax on the columns of each output that ends in softmax
    (``"softmax[0:3]"``, ``+``-joined; :func:`parity.backends.torch_side.apply_transform`), None when none does."""
    parts, at = [], 0
    for q in producers:
        n = ref[q]
        width = int(n.out_shape[-1]) if n.out_shape else 0
        if n.kind == "softmax" or n.act == "softmax":
            parts.append(f"softmax[{at}:{at + width}]")
        at += width
    return "+".join(parts) or None


def supported_transforms() -> set[str]:
    """Activation names ``parity.backends.torch_side.apply_transform`` accepts (feature-detected)."""
    import torch

    ok = set()
    for name in ("softmax", "relu", "relu6", "sigmoid", "tanh", "elu", "gelu", "swish", "silu", "linear"):
        try:
            apply_transform(name, torch.zeros(1, 2))
            ok.add(name)
        except (ValueError, KeyError, TypeError):
            pass
    return ok


def _flatten_order(calls: list[dict], k: int, flat, keras_shape=None) -> str | None:
    """Probe the port: is ``flat`` (a flatten's output or a Linear's input at call ``k``) a channels-first
    ("chw": torch's order, the reference's Dense rows need reordering) or a channels-last ("hwc": Keras' own
    order) flattening of the latest image, volume or sequence tensor seen up to that call? Returns "chw", "hwc"
    or None. A monotone elementwise function between the two (``torch.relu`` or ``F.sigmoid`` in the parent's
    forward after the last module) is seen through (:func:`_same_order`). A sequence (N, C, L) or (N, L, C)
    counts only with ``keras_shape``, the reference's (L, C), to tell its layout by (square: undecided)."""
    import torch

    if flat is None or flat.dim() != 2:
        return None
    for prev in reversed(calls[:k + 1]):
        for t in ([prev["output"]] if prev["output"] is not None else []) + list(prev["inputs"]):
            if t is None or t.dim() not in (3, 4, 5) or t[0].numel() != flat.shape[1] or not t.is_floating_point():
                continue
            if t.dim() == 3:  # a sequence: its layout from the reference's (L, C)
                if keras_shape is None or len(keras_shape) != 2 or keras_shape[0] == keras_shape[1]:
                    continue
                if tuple(t.shape[1:]) == tuple(keras_shape):  # channels-last port tensor: Keras' order as is
                    orders = (("hwc", t.flatten(1)),)
                elif tuple(t.shape[1:]) == tuple(reversed(keras_shape)):
                    orders = (("chw", t.flatten(1)), ("hwc", t.movedim(1, -1).flatten(1)))
                else:
                    continue
            else:
                orders = (("chw", t.flatten(1)), ("hwc", t.movedim(1, -1).flatten(1)))
            for name, cand in orders:
                if torch.equal(cand, flat):
                    return name
            fits = [name for name, cand in orders if _same_order(cand, flat)]
            if len(fits) == 1:
                return fits[0]
    return None


def _same_order(x, y) -> bool:
    """``y == f(x)`` elementwise for some non-decreasing ``f`` (ReLU, sigmoid, tanh, leaky ReLU, identity), with
    ``y`` not constant: sorted by ``x``, ``y`` never decreases. A flatten in another element order breaks it."""
    import torch

    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    if x.numel() < 4 or not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        return False
    ys = y[torch.argsort(x, stable=True)]
    span = float(ys.max() - ys.min())
    if span == 0.0:
        return False
    return bool((ys[1:] - ys[:-1] >= -1e-12 * span).all())


def example_input(input_shape, dtype, seed: int = 0, integer_range: int | None = None):
    """A batch of 2 for one reference input of per-sample shape ``input_shape`` (Keras layout), in the port's
    layout: an image (H, W, C) becomes (2, C, H, W), any other shape stays as it is. Uniform in [-1, 1] (fixed
    seed), or token ids in ``[0, integer_range)`` (int64) for an integer input."""
    import numpy as np
    import torch

    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (shape[2], shape[0], shape[1])
    elif len(shape) == 4:  # a volume (D, H, W, C) -> (C, D, H, W)
        shape = (shape[3], shape[0], shape[1], shape[2])
    rng = np.random.default_rng(seed)
    if integer_range is not None:
        return torch.from_numpy(rng.integers(0, max(int(integer_range), 1), size=(2,) + shape, dtype=np.int64))
    return torch.from_numpy(rng.uniform(-1, 1, size=(2,) + shape)).to(dtype)


def integer_input_range(keras_model, index: int = 0) -> int | None:
    """For an integer input of the Keras model: the ``input_dim`` of the first Embedding reading it (token ids
    are drawn from ``[0, input_dim)``); 2 when no Embedding reads it; None for a float input."""
    inp = keras_model.inputs[index]
    if "int" not in str(getattr(inp, "dtype", "")):
        return None
    for layer in keras_model.layers:
        if type(layer).__name__ == "Embedding":
            try:
                sources = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            except (AttributeError, ValueError):
                sources = []
            if any(t is inp for t in sources) or len(keras_model.inputs) == 1:
                return int(layer.get_config()["input_dim"])
    return 2


def separable_signatures(ref: list[Node]) -> list[tuple]:
    """(depthwise, pointwise) torch weight shapes of every reference separable convolution."""
    return [(r.params["depthwise.weight"], r.params["pointwise.weight"]) for r in ref
            if r.kind in ("separable_conv2d", "separable_conv1d") and "depthwise.weight" in r.params
            and "pointwise.weight" in r.params]


def align(keras_model, torch_module, *, pins=None, input_shape=None, seed: int = 0, example=None) -> Alignment:
    """Align a Keras model with a torch module and build the taps (reference order). ``input_shape``: the
    (H, W, C) of one input when the Keras model does not define it; ``example``: the port's example input(s)
    in its own layout (a tensor or a tuple), built from ``input_shape`` when not given. Raises
    :class:`AlignmentError` with what to do when pins are wrong or a layer cannot be compared."""
    import torch

    refuse_unsupported(keras_model.layers, variants_only=True)  # one line, exit 2, before the port is traced
    ref = trace_keras(keras_model)
    if example is None:
        dtype = next((p.dtype for p in torch_module.parameters() if p.is_floating_point()), torch.float32)
        shapes = [input_shape] if input_shape is not None and len(keras_model.inputs) == 1 else [
            tuple(int(d) for d in t.shape[1:]) for t in keras_model.inputs]
        example = tuple(example_input(s, dtype, seed + k, integer_input_range(keras_model, k))
                        for k, s in enumerate(shapes))
    pin_map = parse_pins(pins)
    forced = [tuple(v.split(GROUP_JOIN)) for v in pin_map.values() if GROUP_JOIN in v]
    pin_map = {k: (group_name(v.split(GROUP_JOIN)) if GROUP_JOIN in v else v) for k, v in pin_map.items()}
    trace = trace_torch(torch_module, example, separable=separable_signatures(ref), forced_groups=forced)
    port = trace.nodes
    pairs = align_nodes(ref, port, pin_map)
    supported = supported_transforms()
    call_index = {j: p.info["call_k"] for j, p in enumerate(port) if not p.functional and "call_k" in p.info}
    matched_port = {pj for ri, pj, _, _ in pairs if ri is not None and pj is not None}
    last_ref = ref[-1].name if ref else None
    ends_in_softmax = bool(ref) and (ref[-1].kind == "softmax" or ref[-1].act == "softmax")
    # a model with several outputs reaches the check packed (parity.user.outputs): each output layer is a model
    # output (a softmax there belongs to the port's loss), the packed outputs are the whole port's return value
    packed = bool(ref) and ref[-1].name == PACKED_OUTPUTS and ref[-1].kind == "concat"
    output_layers = {ref[q].name for q in ref[-1].producers if q >= 0} if packed else {last_ref}

    input_only: set[int] = set()
    for i, r in enumerate(ref):
        if not r.weighted and r.producers and all(q == -1 or q in input_only for q in r.producers):
            input_only.add(i)
    rows: list[Row] = []
    taps: list[Tap] = []
    fused_port: set[int] = set()
    aliases: dict[str, tuple] = {}
    shared: dict[str, list[str]] = {}
    missing_acts: list[tuple[str, str, str]] = []
    pending_chw: tuple[int, int, int] | None = None  # a flatten's (C, H, W) until the Dense that reads it
    pending_kshape = None  # that flatten's input shape in the reference ((H, W, C), (L, C), ...)
    seq_channels_first = False  # the latest aligned sequence (N, L, C) layer's port module is (N, C, L)
    for ri, pj, s, status in pairs:
        r = ref[ri] if ri is not None else None
        p = port[pj] if pj is not None else None
        if r is None:
            if pj not in fused_port:
                rows.append(Row(None, p.name, p.kind, None, status, port_class=p.cls,
                                note="functional op in the port's forward" if p.functional else _port_only_note(p)))
            continue
        row = Row(r.name, p.name if p is not None else None, r.kind,
                  (s / _max_score(r)) if s is not None else None, status, ref_class=r.cls,
                  port_class=p.cls if p is not None else "")
        rows.append(row)
        if p is not None and "members" in p.info:
            row.note = (f"{' + '.join(p.info['members'])}: a depthwise conv and the 1x1 conv it feeds, one "
                        f"{r.cls} (weights split between them)")
        flatten_chw = None
        if r.kind == "flatten":
            kshape = r.in_shapes[0] if r.in_shapes and r.in_shapes[0] else None
            chw = kshape if kshape is not None and len(kshape) in (3, 4) else None
            if kshape is not None and len(kshape) == 2 and None not in kshape:
                # a sequence (L, C): torch's (N, C, L) flattens C-major; the converter reorders like an image's
                chw = (kshape[1], kshape[0])
            order = None
            if p is not None and not p.functional:
                kc = call_index[pj]
                order = _flatten_order(trace.calls, kc, trace.calls[kc]["output"], kshape)
            if chw is not None and len(kshape) == 2 and order is None and not seq_channels_first:
                chw = None  # a channels-last sequence port (Linear/RNN/attention outputs): Keras' order as is
            if chw is not None and None not in chw and order != "hwc":
                flatten_chw = tuple(chw)
                if order is None:
                    row.note = "flatten order not observable: assumed torch's channels-first order"
            pending_chw = flatten_chw if chw is not None else None
            pending_kshape = kshape
        elif r.kind == "dense" and pending_chw is not None:
            order = None
            if p is not None and not p.functional:
                kc = call_index[pj]
                ins = trace.calls[kc]["inputs"]
                order = _flatten_order(trace.calls[:kc], kc - 1, ins[0] if ins else None, pending_kshape)
            flatten_chw = pending_chw if order != "hwc" else None
            if order == "hwc":
                row.note = "the port flattens in Keras' channels-last order: the kernel's rows kept as they are"
            pending_chw = None
        elif r.kind not in ("dropout", "activation"):
            pending_chw = None
        if packed and r.name == PACKED_OUTPUTS:
            row.port, row.status = "", "aligned"
            row.note = ("the model's outputs in the Keras order, concatenated (the port's forward returns them as a "
                        "tuple, a list or a dict); softmax applied to the port's logits of a softmax output")
            taps.append(Tap(r.name, r.name, "", "output", port_transform=packed_transform(ref, ref[-1].producers)))
            continue
        if p is None:
            if packed and r.name in output_layers and r.kind == "softmax":
                row.port, row.status = "", "aligned"
                row.note = "model output: softmax inside the port's loss; compared in the packed outputs"
            elif r.name in output_layers and r.kind == "softmax":
                # the reference's softmax belongs to the port's loss (F.cross_entropy): compare softmax(logits)
                row.port, row.status = "", "aligned"
                row.note = "model output: softmax applied to the port's logits (softmax inside the loss)"
                taps.append(Tap(r.name, r.name, "", "softmax", port_transform="softmax"))
            else:
                row.note = _ref_only_note(r)
            continue
        if p.functional:
            row.note = "the port computes this with a functional op (not a module): no tap here"
            continue
        transform = None
        # a recurrent layer's activation= is its cell's (tanh inside the recurrence), never applied to its output
        fused = r.act if (r.kind not in ("activation", "softmax") + RNN_KINDS and r.act and r.act != "linear") \
            else None
        nxt = pj + 1
        nxt_node = port[nxt] if nxt < len(port) else None
        if fused is not None:
            follows = (nxt_node is not None and not nxt_node.functional and nxt not in matched_port
                       and _act_norm(nxt_node.act or ("softmax" if nxt_node.kind == "softmax" else None))
                       == _act_norm(fused))
            if fused == "softmax" and r.name in output_layers:
                transform = "softmax"
                row.note = "softmax fused in the reference's last layer: compared as softmax(port logits)"
            elif fused in supported and not follows and "fx" in trace.traced_with and not (
                    nxt_node is not None and nxt_node.functional and _act_norm(nxt_node.act) == _act_norm(fused)):
                # the whole forward is known (torch.fx) and no such activation follows: compare the raw output
                row.note = (f"activation={fused!r} fused in the reference; no separate {fused} follows {p.name} "
                            "in the port: its output is compared as it is")
                missing_acts.append((r.name, p.name, fused))
            elif fused in supported:
                transform = fused
                row.note = f"activation={fused!r} fused in the reference: compared as {fused}(port output)"
                if follows:
                    fused_port.add(nxt)
                    rows.append(Row(None, nxt_node.name, nxt_node.kind, None, "fused", port_class=nxt_node.cls,
                                    note=f"the port's {fused} after {p.name}: folded into {r.name}"))
            else:
                raise AlignmentError(
                    f"reference layer {r.name!r} ({r.cls}) has activation={fused!r} fused into it, which the port "
                    f"side cannot apply to {p.name!r} (supported: {', '.join(sorted(supported))}). Expected a "
                    f"separate activation layer: build it as {r.cls}(..., activation=None) followed by "
                    f"Activation({fused!r}).")
        if r.kind in ("gap", "global_maxpool") and p.out_shape is not None and len(p.out_shape) in (2, 3, 4) \
                and nxt_node is not None \
                and nxt_node.kind == "flatten" and nxt not in matched_port:
            # AdaptiveAvgPool2d(1) + a flatten (module or view) in the port == GlobalAveragePooling2D: the tap
            # stays on the pooling (compared as (N, C): parity.backends.torch_side.gap_as_keras)
            fused_port.add(nxt)
            row.note = f"{p.name} + {nxt_node.name} (flatten) == global average pooling"
            rows.append(Row(None, nxt_node.name, nxt_node.kind, None, "fused", port_class=nxt_node.cls,
                            note=f"folded into {r.name}"))
        if transform is None and r.kind in ("gap", "global_maxpool") and p.in_shapes and r.in_shapes and \
                r.in_shapes[0] and p.in_shapes[0] and len(r.in_shapes[0]) == 2 and \
                tuple(p.in_shapes[0]) == tuple(reversed(r.in_shapes[0])) and r.in_shapes[0][0] != r.in_shapes[0][1]:
            # nn.AdaptiveMaxPool1d(1) / AdaptiveAvgPool1d(1) reads (N, C, L): fed that layout in isolation, its
            # (N, C, 1) output compared as Keras' (N, C) (parity.backends.torch_side.gap_as_keras)
            transform = "channels_last"
            row.note = (row.note + "; " if row.note else "") + "reads (N, C, L): fed Keras' (N, L, C) transposed"
        fam = r.info.get("family") or {}
        if transform is None and fam.get("return_sequences") is False and p.cls in ("LSTM", "GRU", "RNN"):
            # torch's module returns the whole sequence, Keras the last step (a Bidirectional's backward half: its
            # step 0): compared after taking that step (parity.core.families.recurrent)
            transform = "bidirectional_last_step" if fam.get("bidirectional") else "last_step"
            row.note = (row.note + "; " if row.note else "") + f"compared at Keras' last step ({transform})"
        if p.cls in ("LSTM", "GRU", "RNN") and p.info.get("batch_first") is False and transform in (
                None, "last_step", "bidirectional_last_step") and p.in_shapes and r.in_shapes and \
                tuple(p.in_shapes[0] or ()) != tuple(r.in_shapes[0] or ()):
            # a time-major module fed a transposed sequence (L, N, C): compared in Keras' (N, L, C) layout. Fed
            # Keras' (N, L, C) as is (its per-sample shape the reference layer's), batch_first=False is the bug
            # (parity.core.families.recurrent, rule batch_first); a sequence as short as the example batch (2)
            # cannot tell the two apart
            transform = {None: "time_major", "last_step": "time_major_last_step",
                         "bidirectional_last_step": "bidirectional_time_major_last_step"}[transform]
            row.note = (row.note + "; " if row.note else "") + "batch_first=False: (L, N, C) compared as (N, L, C)"
        if transform is None and r.kind == "conv2d_transpose" and p.cls == "ConvTranspose2d" and \
                r.out_shape is not None and p.out_shape is not None and len(r.out_shape) == len(p.out_shape) == 3 \
                and r.out_shape[0] == p.out_shape[0] and all(
                    0 < p.out_shape[i] - r.out_shape[i] for i in (1, 2)):
            # Keras 'same' (out = in * stride) from a plain ConvTranspose2d whose full output the port crops after
            # the module (``tconv(x)[..., :2H, :2W]``): compared on TF's window, (k - s) // 2 cropped at the start
            # (parity.core.families.upsampling.same_transpose_crop); a port cropping elsewhere diverges at the
            # layer that reads the crop
            (h0, w0) = ((p.out_shape[i] - r.out_shape[i]) // 2 for i in (1, 2))
            transform = f"crop[{h0}:{h0 + r.out_shape[1]},{w0}:{w0 + r.out_shape[2]}]"
            row.note = (row.note + "; " if row.note else "") + (
                f"the full transposed-conv output {tuple(p.out_shape[1:])} compared on Keras' 'same' window "
                f"{tuple(r.out_shape[1:])} (the port crops after the module)")
        if p.cls in ("LSTM", "GRU", "RNN") and fam.get("go_backwards") and not fam.get("bidirectional"):
            # Keras reads the sequence from its end: in isolation the module is fed x.flip(1), its output compared
            # as it is (parity.core.families.recurrent.KERAS_GO_BACKWARDS)
            transform = f"go_backwards|{transform}" if transform else "go_backwards"
            row.note = (row.note + "; " if row.note else "") + "go_backwards: fed the reversed sequence in isolation"
        if transform in ELEMENTWISE_TRANSFORMS and r.out_shape is not None and p.out_shape is not None and \
                len(r.out_shape) == 2 and tuple(p.out_shape) == tuple(reversed(r.out_shape)) and (
                    r.out_shape[0] != r.out_shape[1] or p.kind in (
                        "conv1d", "maxpool", "avgpool", "depthwise_conv1d", "separable_conv1d", "conv1d_transpose",
                        "upsample")):
            # a channels-first port module (N, C, L) of a channels-last sequence layer (N, L, C); a square (L == C)
            # output decides by the module: torch's 1-D convolutions and pools are channels-first. An activation
            # fused in the reference (Conv1D(activation='relu'), F.relu after the port's Conv1d) is applied first
            transform = f"{transform}|channels_last" if transform else "channels_last"
            row.note = (row.note + "; " if row.note else "") + "(N, C, L) compared as Keras' (N, L, C)"
        extra = (p.in_shapes[0][-1] - r.in_shapes[0][0]) if (
            p.cls == "Conv1d" and r.kind in ("conv1d", "depthwise_conv1d") and "channels_last" in (transform or "")
            and p.in_shapes
            and r.in_shapes and p.in_shapes[0] and r.in_shapes[0] and len(p.in_shapes[0]) == 2
            and len(r.in_shapes[0]) == 2) else 0
        if extra > 0 and p.info.get("zero_steps"):
            # the port pads the sequence before its Conv1d (F.pad(x, (left, right)) in the parent's forward): the
            # module is fed that pad in isolation, and the pad stands for the conv's own (a causal one: left only)
            lead, tail = p.info["zero_steps"]
            left = min(lead, extra)
            if extra - left <= tail:
                transform = f"{transform}|prepad[{left},{extra - left}]"
                row.note = (row.note + "; " if row.note else "") + (
                    f"padded by the port before the module: (left {left}, right {extra - left})")
        if r.out_shape is not None and len(r.out_shape) == 2:  # (L, C): a sequence layer
            seq_channels_first = "channels_last" in (transform or "")
        if p.cls in ("Conv2d", "Conv3d") and p.info.get("zero_border") and r.kind in ("conv2d", "conv3d") and \
                p.in_shapes and r.in_shapes and p.in_shapes[0] and r.in_shapes[0] and \
                len(p.in_shapes[0]) == len(r.in_shapes[0]) == len(p.info["zero_border"]) + 1 and \
                None not in r.in_shapes[0] and p.in_shapes[0][0] == r.in_shapes[0][0]:  # both (C, *spatial)
            # the port pads the image or volume before its conv (F.pad(x, (0, 1, 0, 1)) in the parent's forward,
            # TF 'same' on an even size at stride 2): the module is fed that pad in isolation
            extra = [p.in_shapes[0][1 + i] - r.in_shapes[0][1 + i] for i in range(len(p.info["zero_border"]))]
            if all(e >= 0 for e in extra) and any(extra):
                pads = []
                for e, (lead, tail) in zip(extra, p.info["zero_border"]):
                    left = min(lead, e)
                    pads.append((left, e - left) if e - left <= tail else None)
                if None not in pads:
                    flat = ",".join(f"{a},{b}" for a, b in pads)
                    transform = f"{transform}|prepad[{flat}]" if transform else f"prepad[{flat}]"
                    row.note = (row.note + "; " if row.note else "") + (
                        f"padded by the port before the module: {tuple(pads)} (before, after) per axis")
        port_path = p.name
        if p.info.get("call", 1) > 1:
            first = next((ref[ri2].name for ri2, pj2, _, _ in pairs if ri2 is not None and pj2 is not None
                          and port[pj2].name == p.name and port[pj2].info.get("call", 1) == 1), None)
            if p.weighted:
                # one module (one set of weights) where the reference has distinct layers: no tap, no transfer
                row.status = "shared"
                row.note = (f"call {p.info['call']} of port module {p.name}, whose weights already stand for "
                            f"{first or 'an earlier layer'}: the reference has distinct weights here")
                shared.setdefault(p.name, [first] if first else []).append(r.name)
                continue
            port_path = f"{_dotless(p.name)}{CALL_MARK}{p.info['call']}"
            aliases[port_path] = ("call", p.name, p.info["call"])
            row.port = port_path
            row.note = (row.note + "; " if row.note else "") + f"call {p.info['call']} of a module called repeatedly"
        pad = _explicit_padding(ref, ri, p)
        if pad is not None:
            port_path = f"{_dotless(p.name)}{PADDED_MARK}"
            aliases[port_path] = ("padded", p.name, pad[1])
            row.port = port_path
            row.note = (row.note + "; " if row.note else "") + (
                f"{ref[pad[0]].name} ({ref[pad[0]].cls} {pad[1]}) + {r.name} == {p.name}(padding={pad[1]})")
        if p.info.get("roles") and port_path == p.name:
            # a hand-written attention whose projections have other names (an nn.ModuleList): seen through a
            # view with the converter's names (q_proj, k_proj, v_proj, out_proj: the same Linear layers)
            port_path = f"{_dotless(p.name)}{ROLES_MARK}"
            aliases[port_path] = ("roles", p.name, dict(p.info["roles"]))
            row.port = port_path
            row.note = (row.note + "; " if row.note else "") + "projections " + ", ".join(
                f"{v} as {k}" for k, v in p.info["roles"].items())
        if not r.weighted and ri in input_only:
            # a parameter-free op on the raw input (a channel split): the port's tensor has no gradient
            row.note = (row.note + "; " if row.note else "") + "computed from the input alone: not tapped"
            continue
        # a MultiHeadAttention's weights go to the port's layout: q/k/v/out Linear layers or nn.MultiheadAttention
        kind = p.kind if (r.kind, p.kind) == ("attention", "attention_packed") else r.kind
        taps.append(Tap(r.name, r.name, port_path, kind, port_transform=transform, flatten_chw=flatten_chw))
    groups = {port[pj].name: tuple(port[pj].info["members"]) for ri, pj, _, _ in pairs
              if ri is not None and pj is not None and "members" in port[pj].info}
    for r in rows:  # a gap+flatten fusion found after the flatten's own row was written
        if r.ref is None and r.status != "fused" and r.port in {x.port for x in rows if x.status == "fused"}:
            r.status = "dropped"
    rows = [r for r in rows if r.status != "dropped"]
    # the port's forward ends in a softmax (a module, or a functional call torch.fx saw) like the reference's
    port_probabilities = ends_in_softmax and not packed and bool(port) and port[-1].kind == "softmax"
    return Alignment(taps=taps, rows=rows, ref_nodes=ref, port_nodes=port, traced_with=trace.traced_with,
                     groups=groups, aliases=aliases, shared=shared, missing_activations=missing_acts,
                     port_probabilities=port_probabilities)


def _explicit_padding(ref: list[Node], ri: int, p: Node):
    """``(index of the ZeroPadding2D, padding)`` when reference layer ``ri`` is a conv fed only by a symmetric
    ZeroPadding2D and its port conv pads by the same amount itself (``Conv2d(padding=p)``); else None."""
    r = ref[ri]
    if r.kind not in ("conv2d", "depthwise_conv2d", "conv3d", "conv1d", "depthwise_conv1d") or \
            len(r.producers) != 1 or r.producers[0] < 0:
        return None
    q = ref[r.producers[0]]
    pad = p.info.get("padding")
    if q.cls not in ("ZeroPadding2D", "ZeroPadding3D", "ZeroPadding1D") or pad is None or isinstance(pad, str) \
            or not any(pad):
        return None
    cfg = q.info.get("padding_cfg")
    sym = {"ZeroPadding2D": _symmetric_pads, "ZeroPadding1D": _symmetric_pads_1d}.get(q.cls, _symmetric_pads_3d)(cfg)
    if sym is None or tuple(sym) != tuple(pad):
        return None
    return r.producers[0], tuple(pad)


def _symmetric_pads(cfg):
    """Keras ZeroPadding2D ``padding`` (int, (ph, pw) or ((top, bottom), (left, right))) -> (ph, pw) when
    symmetric, else None."""
    if isinstance(cfg, int):
        return (cfg, cfg)
    try:
        a, b = cfg
    except (TypeError, ValueError):
        return None
    if isinstance(a, int) and isinstance(b, int):
        return (a, b)
    try:
        (t, bo), (le, ri) = a, b
    except (TypeError, ValueError):
        return None
    return (t, le) if t == bo and le == ri else None


def _symmetric_pads_1d(cfg):
    """Keras ZeroPadding1D ``padding`` (int or (left, right)) -> (p,) when symmetric, else None."""
    if isinstance(cfg, int):
        return (cfg,)
    try:
        a, b = cfg
    except (TypeError, ValueError):
        return None
    return (a,) if a == b else None


def _symmetric_pads_3d(cfg):
    """Keras ZeroPadding3D ``padding`` (int, (pd, ph, pw) or three (before, after) pairs) -> (pd, ph, pw) when
    symmetric, else None."""
    if isinstance(cfg, int):
        return (cfg, cfg, cfg)
    try:
        axes = list(cfg)
    except TypeError:
        return None
    if len(axes) != 3:
        return None
    if all(isinstance(a, int) for a in axes):
        return tuple(axes)
    try:
        return tuple(a for a, b in axes) if all(a == b for a, b in axes) else None
    except (TypeError, ValueError):
        return None


def _ref_only_note(r: Node) -> str:
    if r.kind == "separable_conv1d":
        return ("a Keras SeparableConv1D is a depthwise Conv1d (groups = in_channels) whose output feeds only a "
                "kernel-1 Conv1d; no such pair with its weight shapes runs in the port")
    if r.kind == "separable_conv2d":
        return ("a Keras SeparableConv2D is a depthwise conv (groups = in_channels) whose output feeds only a 1x1 "
                "conv; no such pair with its weight shapes runs in the port")
    if r.cls == "ZeroPadding2D":
        return "padding: in the port usually part of the next conv (padding=...)"
    if r.kind == "reshape" or r.cheap:
        return "no port module (a view or no-op in the port)"
    if r.weighted:
        return "has weights but no port counterpart: its weights cannot be transferred (pin it with --align)"
    return "no port counterpart"


def _port_only_note(p: Node) -> str:
    if p.kind == "dropout":
        return "dropout only in the port: identity in eval, random in training"
    if p.kind == "activation" and p.act == "linear":
        return "identity"
    if p.weighted:
        return "has parameters but no reference counterpart: they keep their initial values"
    return "only in the port"
