"""Attention: Keras MultiHeadAttention <-> torch nn.MultiheadAttention (packed ``in_proj_weight``,
``batch_first``) or a hand-written attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers.
Layouts: ``weight_converters/attention.py``."""
from __future__ import annotations

import math

import numpy as np

from parity.core.conventions import float32_rounded
from parity.core.families.base import Family, Named, RuleHit

KERAS_ATTENTION_SCALE = "1/sqrt(key_dim)"
"""keras/src/layers/attention/multi_head_attention.py ``_compute_attention``: query * 1/sqrt(key_dim); torch
``scaled_dot_product_attention`` scales by 1/sqrt(head_dim): equal when head_dim == key_dim."""
KERAS_MASK_POLARITY = "True = attend"
"""Keras ``attention_mask``: 1/True where attention is allowed; torch ``attn_mask`` (bool) / ``key_padding_mask``:
True where it is NOT allowed (torch/nn/modules/activation.py): the polarity is inverted."""


KERAS_CAUSAL_MASK = "lower-triangular, True = attend (i attends to 0..i)"
"""keras/src/layers/attention/multi_head_attention.py ``_compute_causal_mask``: ``row_index >= col_index`` of a
(1, T, S) mask, True where attention is allowed (the diagonal included). torch's causal ``attn_mask`` is its
complement, ``torch.triu(ones, diagonal=1)`` (True = masked), or ``is_causal=True`` in
``F.scaled_dot_product_attention``."""
KERAS_MASKED_SCORE = -1e9
"""keras/src/layers/activations/softmax.py ``_large_negative_number`` (-1e9 unless float16): a masked score is
replaced by it before the softmax (``where(mask, scores, -1e9)``), then the probabilities are zeroed where masked.
exp(-1e9 - max) is exactly 0 in float32 and float64, so a port masking with -inf or -1e9 agrees to rounding."""


def keras_attention_scale(key_dim: int) -> float:
    """The query scale Keras 3 applies: ``ops.cast(1 / sqrt(key_dim), dtype)`` of a Python float, which TF makes
    a float32 tensor first (keras/src/layers/attention/multi_head_attention.py ``_compute_attention``): a
    float64 model scales by the float32-rounded value (1/sqrt(8): off by 1.7e-8 relative). A float64 port
    matches it only with the same rounded value."""
    return float32_rounded(1.0 / math.sqrt(float(key_dim)))


#: float64 only: the relative tolerance a check holds every stage to when Keras' float32-rounded 1/sqrt(key_dim)
#: meets a port's ``nn.MultiheadAttention``, whose scale is ``head_dim ** -0.5`` in the module's dtype and cannot
#: be set (torch/nn/functional.py ``multi_head_attention_forward``). The rounding is <= 2**-24 of the scale
#: (1.7e-8 for key_dim 8); through the scores, softmax, backward and one step it was measured at <= 9.2e-9
#: relative (the packed key_dim-8 port of tests/families/test_attention_masks.py, six checks): 1e-7 keeps a 10x
#: margin and stays far below every convention the attention family names (scale, masks, q/k/v order: 1e-3 up).
KERAS_SCALE_ROUNDING_RTOL = 1e-7


def _scale_rounding_floor(info: dict, port_class: str, dtype: str):
    """float64, a Keras MultiHeadAttention whose float32-rounded 1/sqrt(key_dim) is not exact, ported with torch's
    ``nn.MultiheadAttention`` (which cannot take Keras' value): :data:`KERAS_SCALE_ROUNDING_RTOL` and the warning."""
    kd = info.get("key_dim")
    if dtype != "float64" or info.get("class") != "MultiHeadAttention" or port_class != "MultiheadAttention" or \
            not isinstance(kd, int) or kd <= 0 or keras_attention_scale(kd) == 1.0 / math.sqrt(kd):
        return None
    rounded = keras_attention_scale(kd)
    return KERAS_SCALE_ROUNDING_RTOL, (
        "attention_scale",
        f"Keras scales the query by 1/sqrt({kd}) rounded to float32 ({rounded!r}) even in a float64 model; "
        f"nn.MultiheadAttention uses the exact value and cannot be given another "
        f"({abs(rounded * math.sqrt(kd) - 1):.1e} relative): every stage of this check is held to rtol "
        f"{KERAS_SCALE_ROUNDING_RTOL:g} instead of the float64 policy's 1e-10..1e-8, so differences below that are "
        "not seen",
        "to check at the full float64 policy, compute the attention with F.scaled_dot_product_attention(..., "
        "scale=keras_attention_scale(key_dim))", "")


PROJECTIONS = ("q_proj", "k_proj", "v_proj")
PROBE_RTOL = 1e-6


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= PROBE_RTOL * max(float(np.max(np.abs(b))), 1e-300)))


ROLES = PROJECTIONS + ("out_proj",)
#: what a hand-written attention's forward calls (read from its source, never run): the evidence that four Linear
#: layers make an attention and not, say, an MLP
ATTENTION_CALLS = ("softmax", "scaled_dot_product_attention")


def _linear(m) -> bool:
    return hasattr(m, "in_features") and hasattr(m, "out_features") and getattr(m, "weight", None) is not None


def _forward_attends(module) -> bool:
    import inspect

    try:
        src = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return any(c in src for c in ATTENTION_CALLS)


def unit_roles(module) -> tuple[str, str, str, str] | None:
    """A hand-written attention whose projections have other names: exactly four Linear layers and no other
    parameter, three of them the children of one container (``nn.ModuleList``/``ModuleDict``: query, key,
    value in its order), the fourth the output projection, and a forward that calls a softmax or
    ``scaled_dot_product_attention``. Returns their paths in (q, k, v, out) order, else None. The roles come
    from the structure, never from what the forward does with them: a forward that uses ``proj[1]`` as the
    query still gets Keras' key there, and diverges."""
    if any(True for _ in module.parameters(recurse=False)) or all(hasattr(module, p) for p in ROLES):
        return None
    leaves = [(n, m) for n, m in module.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if len(leaves) != 4 or not all(_linear(m) for _, m in leaves) or \
            any(True for _, m in leaves for c in m.children()):
        return None
    for name, child in module.named_children():
        kids = [f"{name}.{n}" for n, c in child.named_children() if _linear(c)]
        if len(kids) == 3 and len(list(child.children())) == 3:
            out = [n for n, _ in leaves if n not in kids]
            if len(out) == 1 and _forward_attends(module):
                return (*kids, out[0])
    return None


def torch_unit(module) -> str | None:
    """An attention is one unit by structure (its Linear layers are not aligned one by one): a hand-written one
    with q_proj, k_proj, v_proj and out_proj children, or ``nn.MultiheadAttention`` itself (packed
    ``in_proj_weight``; its ``out_proj`` child is never called as a module: torch applies its weight with
    ``F.linear``)."""
    if hasattr(module, "in_proj_weight"):
        return "attention_packed" if getattr(module, "in_proj_weight", None) is not None and \
            hasattr(module, "out_proj") else None
    if all(hasattr(module, p) for p in ROLES):
        return "attention"
    return "attention" if unit_roles(module) is not None else None


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind not in ("attention", "attention_packed"):
        return out
    rh, ph = ref.get("num_heads"), port.get("num_heads")
    if rh is not None and ph is not None and int(rh) != int(ph):
        out.append(("attention_heads", f"num_heads={ph} in the port, {rh} in the reference",
                    f"num_heads={rh} (head_dim = embed_dim / num_heads = key_dim {ref.get('key_dim')})",
                    "the same weights split into other heads give another attention pattern"))
    rd, pd = ref.get("dropout"), port.get("dropout")
    if isinstance(rd, (int, float)) and isinstance(pd, (int, float)) and not isinstance(pd, bool) and \
            float(rd) != float(pd):
        out.append(("attention_dropout", f"attention dropout {pd:g} in the port, {rd:g} in the reference",
                    f"dropout={float(rd):g} like the reference (and check with 0.0 on both sides: random masks "
                    "never agree)", "the attention probabilities are dropped at another rate in training"))
    if kind == "attention_packed" and port.get("batch_first") is False:
        out.append(("batch_first", "nn.MultiheadAttention batch_first=False in the port: it reads (L, N, E) where "
                    "Keras gives (N, L, E)", "nn.MultiheadAttention(..., batch_first=True)", ""))
    return out


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls != "MultiHeadAttention":
        return None
    if cfg.get("value_dim") not in (None, cfg.get("key_dim")):
        return "MultiHeadAttention with value_dim != key_dim is not yet supported"
    if cfg.get("output_shape") is not None or cfg.get("use_gate") or cfg.get("use_bias") is False:
        return "MultiHeadAttention with output_shape, use_gate or use_bias=False is not yet supported"
    if cfg.get("call_attention_mask") is not None:
        return ("MultiHeadAttention called with attention_mask= (a mask given as an input) is not yet supported "
                "(use_causal_mask=True is)")
    if cfg.get("call_return_attention_scores"):
        return "MultiHeadAttention(return_attention_scores=True) is not yet supported"
    axes = cfg.get("attention_axes")
    if axes not in (None, (1,), [1]):
        return f"MultiHeadAttention(attention_axes={axes}) is not yet supported"
    return None


def _weights_probe(kind: str, ev: dict):
    """A projection that holds another projection's converted weights (q and k swapped, a packed in_proj in
    another order), or per-head kernels flattened in (k, h) instead of (h, k) order."""
    if kind not in ("attention", "attention_packed") or not ev.get("want") or not ev.get("got"):
        return None
    want, got = ev["want"], ev["got"]
    if kind == "attention_packed" and "in_proj_weight" in want and "in_proj_weight" in got:
        w, g = np.split(np.asarray(want["in_proj_weight"]), 3), np.split(np.asarray(got["in_proj_weight"]), 3)
        perm = [next((j for j in range(3) if _same(g[i], w[j])), None) for i in range(3)]
        if None not in perm and perm != [0, 1, 2]:
            names = ("q", "k", "v")
            return ("attention_qkv_order", f"in_proj_weight holds {', '.join(names[j] for j in perm)} where "
                    "torch expects q, k, v", "pack in_proj_weight as [query; key; value]", "")
    for key in (f"{p}.weight" for p in PROJECTIONS):
        if key not in want or key not in got or _same(got[key], want[key]):
            continue
        other = next((o for o in (f"{p}.weight" for p in PROJECTIONS) if o != key and o in want
                      and _same(got[key], want[o])), None)
        if other is not None:
            return ("attention_qkv_order", f"{key} holds the reference's {other.split('_')[0]} projection",
                    "map query -> q_proj, key -> k_proj, value -> v_proj", "")
    return None


def _heads_probe(kind: str, ev: dict):
    """Per-head kernels flattened (k, h) instead of Keras' head-major (h, k): the rows of a projection hold the
    right numbers in another order."""
    if kind != "attention" or not ev.get("want") or not ev.get("got"):
        return None
    heads = (ev.get("ref_info") or {}).get("num_heads")
    for key in (f"{p}.weight" for p in PROJECTIONS):
        w, g = ev["want"].get(key), ev["got"].get(key)
        if not heads or w is None or g is None or np.shape(w) != np.shape(g) or _same(g, w):
            continue
        h = int(heads)
        k = np.shape(w)[0] // h
        alt = np.asarray(w).reshape(h, k, -1).transpose(1, 0, 2).reshape(np.shape(w))
        if _same(g, alt):
            return ("attention_head_layout", f"{key}: per-head kernel rows in (key_dim, heads) order; Keras' "
                    "(d, h, k) kernel flattens head-major (h, k)", "kernel.reshape(d, h * k).T (head-major)",
                    "the rows equal the converted rows permuted (k, h) <-> (h, k)")
    return None


def _softmax(a):
    with np.errstate(invalid="ignore"):  # a fully masked row (-inf everywhere): NaN, as in torch
        a = a - a.max(axis=-1, keepdims=True)
        e = np.exp(a)
        return e / e.sum(axis=-1, keepdims=True)


def _parts(kind: str, w: dict):
    """[(W, b)] of the query, key, value and output projections (torch layout) from either kind's converted
    weights; None when one is missing."""
    if kind == "attention_packed":
        if "in_proj_weight" not in w or "out_proj.weight" not in w:
            return None
        ws = np.split(np.asarray(w["in_proj_weight"], dtype=np.float64), 3)
        bs = np.split(np.asarray(w["in_proj_bias"], dtype=np.float64), 3) if "in_proj_bias" in w else [0.0] * 3
        parts = list(zip(ws, bs))
    else:
        if any(f"{p}.weight" not in w for p in PROJECTIONS + ("out_proj",)):
            return None
        parts = [(np.asarray(w[f"{p}.weight"], dtype=np.float64), np.asarray(w.get(f"{p}.bias", 0.0)))
                 for p in PROJECTIONS]
    return parts + [(np.asarray(w["out_proj.weight"], dtype=np.float64), np.asarray(w.get("out_proj.bias", 0.0)))]


def numpy_attention(x, parts, heads: int, scale: float, keep=None, fill=float("-inf"), after=False):
    """Self-attention of ``x`` (N, L, E) in numpy: scores ``scale * q k^T`` per head, ``keep`` (L, L) True where
    attention is allowed (None: everywhere), masked scores set to ``fill`` before the softmax, or (``after``)
    the probabilities zeroed after it."""
    n, length, _ = x.shape

    def split(t):
        return t.reshape(n, length, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (split(x @ w.T + b) for w, b in parts[:3])
    scores = scale * q @ k.transpose(0, 1, 3, 2)
    if keep is not None and not after:
        scores = np.where(keep, scores, fill)
    probs = _softmax(scores)
    if keep is not None and after:
        probs = np.where(keep, probs, 0.0)
    att = (probs @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
    return att @ parts[3][0].T + parts[3][1]


def _matches(out, port, rtol=1e-6) -> bool:
    """Same shape, NaN where the port is NaN, and close elsewhere."""
    if out.shape != port.shape:
        return False
    nan_o, nan_p = ~np.isfinite(out), ~np.isfinite(port)
    if not np.array_equal(nan_o, nan_p) or nan_p.all():
        return False
    o, p = out[~nan_p], port[~nan_p]
    return bool(np.allclose(o, p, rtol=rtol, atol=rtol * 1e-3 * float(np.max(np.abs(p)))))


def _self_attention_evidence(kind: str, ev: dict):
    """(x, parts, heads, key_dim, port output, the reference's keep mask) for a self-attention probe, or None."""
    if kind not in ("attention", "attention_packed") or ev.get("port_out") is None or not ev.get("port_in") \
            or not ev.get("want"):
        return None
    heads = (ev.get("ref_info") or {}).get("num_heads")
    parts = _parts(kind, ev["want"])
    x = np.asarray(ev["port_in"][0], dtype=np.float64)
    if not heads or parts is None or x.ndim != 3 or parts[0][0].shape[1] != x.shape[-1]:
        return None
    h = int(heads)
    kd = parts[0][0].shape[0] // h
    causal = bool((ev.get("ref_info") or {}).get("call_use_causal_mask"))
    keep = np.tril(np.ones((x.shape[1],) * 2, dtype=bool)) if causal else None
    return x, parts, h, kd, np.asarray(ev["port_out"], dtype=np.float64), keep


def _scale_probe(kind: str, ev: dict):
    """Recompute the self-attention in numpy from the port's input and the converted weights with the usual
    scales (and the reference's mask); the one the port's output follows names the convention it broke."""
    got = _self_attention_evidence(kind, ev)
    if got is None:
        return None
    x, parts, h, kd, port, keep = got
    for label, scale in (("1 (none)", 1.0), (f"1/sqrt(embed_dim) = 1/sqrt({h * kd})", 1 / math.sqrt(h * kd)),
                         (f"1/key_dim = 1/{kd}", 1.0 / kd)):
        if _matches(numpy_attention(x, parts, h, scale, keep), port):
            return ("attention_scale", f"attention scores scaled by {label} in the port; Keras scales the query by "
                    f"1/sqrt(key_dim) = 1/sqrt({kd})", f"scores * {1 / math.sqrt(kd):.6g} (1/sqrt(head_dim))",
                    "the port's output equals a numpy attention with that scale")
    exact, rounded = 1 / math.sqrt(kd), keras_attention_scale(kd)
    if exact != rounded and _matches(numpy_attention(x, parts, h, exact, keep), port, rtol=1e-12) and \
            not _matches(numpy_attention(x, parts, h, rounded, keep), port, rtol=1e-12):
        return ("attention_scale", f"the port scales by the exact 1/sqrt({kd}); Keras by 1/sqrt(key_dim) rounded to "
                f"float32 ({rounded!r}, keras_attention_scale), even in a float64 model: a {abs(rounded / exact - 1):.1e} "
                "relative difference, above the float64 tolerance", "scale=keras_attention_scale(key_dim) ("
                "F.scaled_dot_product_attention(..., scale=...)); nn.MultiheadAttention cannot take it: check in "
                "float32, or a key_dim whose 1/sqrt is exact in float32 (1, 4, 16, 64...)",
                "the port's output equals a numpy attention with the exact scale to 1e-12, not with Keras'")
    return None


def _roles_probe(kind: str, ev: dict):
    """The port's forward uses its projections in other roles (``k, q, v = (p(x) for p in self.proj)``): its
    output equals a numpy attention with the converted q/k/v weights permuted."""
    import itertools

    got = _self_attention_evidence(kind, ev)
    if got is None:
        return None
    x, parts, h, kd, port, keep = got
    names = ("query", "key", "value")
    for perm in itertools.permutations(range(3)):
        if perm == (0, 1, 2):
            continue
        if _matches(numpy_attention(x, [parts[i] for i in perm] + [parts[3]], h, keras_attention_scale(kd), keep),
                    port):
            used = ", ".join(f"the {names[i]} projection as {names[j]}" for j, i in enumerate(perm) if i != j)
            return ("attention_qkv_order", f"the port's forward uses {used}; its projections hold Keras' query, "
                    "key, value in the order they are defined", "use the projections as query, key, value in "
                    "the order they are defined (q_proj/k_proj/v_proj, or the container's order)",
                    "the port's output equals a numpy attention with those roles")
    return None


def _dropout_probe(kind: str, ev: dict):
    """A training-forward divergence at a MultiHeadAttention with dropout: its probabilities are dropped at
    random, and no two frameworks draw the same mask."""
    rate = (ev.get("ref_info") or {}).get("dropout")
    if kind not in ("attention", "attention_packed") or ev.get("stage") != "forward_train" or not rate:
        return None
    return ("attention_dropout", f"MultiHeadAttention(dropout={rate:g}) drops attention probabilities at random in "
            "training: no two frameworks draw the same mask, so the training forward cannot agree (the eval "
            "forward does)", "check with dropout=0.0 on both sides (every stage is then exact; the GOTURN pair's "
            "PARITY_DROPOUT_RATE does the same), and train with your rate", f"reference dropout {rate:g}")


def _mask_probe(kind: str, ev: dict):
    """The port's attention recomputed in numpy with the masks ports get wrong, against the reference's (causal
    or none): the one the port's output follows (NaN where a row is fully masked, like torch) names the cause."""
    got = _self_attention_evidence(kind, ev)
    if got is None:
        return None
    x, parts, h, kd, port, keep = got
    scale = keras_attention_scale(kd)
    length = x.shape[1]
    tril = np.tril(np.ones((length, length), dtype=bool))
    fix = "attn_mask=torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1) (True = masked), or is_causal=True"
    if keep is None:
        cands = [("attention_causal_mask_extra", tril, False, "the port masks future positions (causal); the "
                  "reference attends to every position (MultiHeadAttention called without use_causal_mask)",
                  "drop the port's causal mask (or call the reference with use_causal_mask=True)")]
    else:
        cands = [
            ("attention_causal_mask_missing", None, False, "the port attends to every position; the reference is "
             "causal (MultiHeadAttention(..., use_causal_mask=True): position i attends to 0..i)", fix),
            ("attention_mask_polarity", ~tril, False, "the port's causal mask has the inverted polarity: it masks "
             "the positions Keras attends to (Keras' mask is True where attention is allowed, torch's boolean "
             "attn_mask True where it is NOT)", fix + "; with Keras' tril mask: masked_fill(mask == 0, -inf)"),
            ("attention_causal_offset", np.tril(tril, -1), False, "the port's causal mask also masks the diagonal "
             "(torch.triu(ones) without diagonal=1): Keras lets position i attend to itself", fix),
            ("attention_mask_after_softmax", tril, True, "the port masks the attention probabilities after the "
             "softmax (its rows no longer sum to 1); Keras masks the scores before it (-1e9, "
             "keras/src/layers/activations/softmax.py)", "scores.masked_fill(~keep, float('-inf')) before "
             "the softmax, or attn_mask / is_causal=True"),
        ]
    for cause, mask, after, message, fx in cands:
        fills = (0.0,) if after or mask is None else (float("-inf"), KERAS_MASKED_SCORE)
        if any(_matches(numpy_attention(x, parts, h, scale, mask, fill, after), port) for fill in fills):
            return (cause, message, fx, "the port's output equals a numpy attention with that mask")
    return None


FAMILY = Family(
    name="attention",
    summary="MultiHeadAttention (self- or cross-attention, no mask or use_causal_mask=True) <-> "
            "nn.MultiheadAttention or q/k/v/out Linear",
    keras_classes={"MultiHeadAttention": "attention"},
    torch_classes={"MultiheadAttention": "attention_packed"},
    weighted=("attention", "attention_packed"),
    converter="weight_converters.attention",
    conventions=(
        Named("projection kernels", "per head: query/key/value (d, h, k), output (h, k, d)",
              "in_proj_weight (3hk, d) = [q; k; v] or q/k/v_proj (hk, d); out_proj (d, hk)",
              "keras/src/layers/attention/multi_head_attention.py; torch/nn/modules/activation.py"),
        Named("scaling", KERAS_ATTENTION_SCALE, "1/sqrt(head_dim)", "torch/nn/functional.py"),
        Named("mask polarity", KERAS_MASK_POLARITY, "True = masked out (attn_mask bool, key_padding_mask)",
              "torch/nn/modules/activation.py"),
        Named("causal mask", KERAS_CAUSAL_MASK, "torch.triu(ones, diagonal=1) True = masked, or is_causal=True",
              "keras/src/layers/attention/multi_head_attention.py; torch/nn/functional.py"),
        Named("masked score", f"{KERAS_MASKED_SCORE:g} before the softmax, probabilities zeroed after",
              "-inf (attn_mask float / bool) before the softmax", "keras/src/layers/activations/softmax.py"),
        Named("layout", "(N, L, E)", "batch_first=True (default (L, N, E))", "torch/nn/modules/activation.py"),
    ),
    keras_keys=("num_heads", "key_dim", "value_dim", "dropout", "call_use_causal_mask"),
    torch_attrs=("num_heads", "embed_dim", "head_dim", "dropout"),
    rules=(_rules,),
    refuse=_refuse,
    probes=(_weights_probe, _heads_probe, _mask_probe, _scale_probe, _roles_probe, _dropout_probe),
    kinds=("attention", "attention_packed"),
    tolerance_floor=_scale_rounding_floor,
)
