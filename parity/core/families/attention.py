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


def keras_attention_scale(key_dim: int) -> float:
    """The query scale Keras 3 applies: ``ops.cast(1 / sqrt(key_dim), dtype)`` of a Python float, which TF makes
    a float32 tensor first (keras/src/layers/attention/multi_head_attention.py ``_compute_attention``): a
    float64 model scales by the float32-rounded value (1/sqrt(8): off by 1.7e-8 relative). A float64 port
    matches it only with the same rounded value."""
    return float32_rounded(1.0 / math.sqrt(float(key_dim)))


PROJECTIONS = ("q_proj", "k_proj", "v_proj")
PROBE_RTOL = 1e-6


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= PROBE_RTOL * max(float(np.max(np.abs(b))), 1e-300)))


def torch_unit(module) -> str | None:
    """An attention is one unit by structure (its Linear layers are not aligned one by one): a hand-written one
    with q_proj, k_proj, v_proj and out_proj children, or ``nn.MultiheadAttention`` itself (packed
    ``in_proj_weight``; its ``out_proj`` child is never called as a module: torch applies its weight with
    ``F.linear``)."""
    if hasattr(module, "in_proj_weight"):
        return "attention_packed" if getattr(module, "in_proj_weight", None) is not None and \
            hasattr(module, "out_proj") else None
    return "attention" if all(hasattr(module, p) for p in PROJECTIONS + ("out_proj",)) else None


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind not in ("attention", "attention_packed"):
        return out
    rh, ph = ref.get("num_heads"), port.get("num_heads")
    if rh is not None and ph is not None and int(rh) != int(ph):
        out.append(("attention_heads", f"num_heads={ph} in the port, {rh} in the reference",
                    f"num_heads={rh} (head_dim = embed_dim / num_heads = key_dim {ref.get('key_dim')})",
                    "the same weights split into other heads give another attention pattern"))
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
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def _scale_probe(kind: str, ev: dict):
    """Recompute the self-attention in numpy from the port's input and the converted weights with the usual
    scales; the one the port's output follows names the convention it broke."""
    if kind != "attention" or ev.get("port_out") is None or not ev.get("port_in") or not ev.get("want"):
        return None
    w = ev["want"]
    heads = (ev.get("ref_info") or {}).get("num_heads")
    if not heads or any(f"{p}.weight" not in w for p in PROJECTIONS + ("out_proj",)):
        return None
    x = np.asarray(ev["port_in"][0], dtype=np.float64)
    if x.ndim != 3:
        return None
    n, length, _ = x.shape
    h = int(heads)

    def proj(p, t):
        return t @ np.asarray(w[f"{p}.weight"]).T + np.asarray(w.get(f"{p}.bias", 0.0))

    def split(t):
        return t.reshape(n, length, h, -1).transpose(0, 2, 1, 3)

    q, k, v = split(proj("q_proj", x)), split(proj("k_proj", x)), split(proj("v_proj", x))
    kd = q.shape[-1]
    port = np.asarray(ev["port_out"], dtype=np.float64)
    for label, scale in (("1 (none)", 1.0), (f"1/sqrt(embed_dim) = 1/sqrt({h * kd})", 1 / math.sqrt(h * kd)),
                         (f"1/key_dim = 1/{kd}", 1.0 / kd)):
        att = _softmax(scale * q @ k.transpose(0, 1, 3, 2)) @ v
        out = proj("out_proj", att.transpose(0, 2, 1, 3).reshape(n, length, -1))
        if out.shape == port.shape and np.allclose(out, port, rtol=1e-6, atol=1e-9 * float(np.max(np.abs(port)))):
            return ("attention_scale", f"attention scores scaled by {label} in the port; Keras scales the query by "
                    f"1/sqrt(key_dim) = 1/sqrt({kd})", f"scores * {1 / math.sqrt(kd):.6g} (1/sqrt(head_dim))",
                    "the port's output equals a numpy attention with that scale")
    return None


FAMILY = Family(
    name="attention",
    summary="MultiHeadAttention (self- or cross-attention, no mask) <-> nn.MultiheadAttention or q/k/v/out Linear",
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
        Named("layout", "(N, L, E)", "batch_first=True (default (L, N, E))", "torch/nn/modules/activation.py"),
    ),
    keras_keys=("num_heads", "key_dim", "value_dim", "dropout"),
    torch_attrs=("num_heads", "embed_dim", "head_dim"),
    rules=(_rules,),
    refuse=_refuse,
    probes=(_weights_probe, _heads_probe, _scale_probe),
    kinds=("attention", "attention_packed"),
)
