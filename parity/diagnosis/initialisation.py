"""Initialisation parity: do the two freshly built models draw their weights from the same distribution?

Parity checks copy the reference's weights into the port, so initialisation never shows in the numeric
stages; it matters the day the port is trained from scratch. Keras and torch defaults differ:

=======================  =============================================  ==========================================
layer                    Keras default                                  torch default
=======================  =============================================  ==========================================
Conv2D / Dense kernel    glorot_uniform: U(+-sqrt(6 / (fan_in+fan_out)))  kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in))
bias                     zeros                                          U(+-1/sqrt(fan_in))
he_normal                truncated normal, std sqrt(2/fan_in) (cut 2s)  kaiming_normal_: plain normal (no cut)
=======================  =============================================  ==========================================

The reference side is read from each layer's config (``kernel_initializer`` / ``bias_initializer`` /
``depthwise_initializer`` / ``pointwise_initializer``; the Keras class defaults when a config does not say),
the port side from sample statistics of the fresh torch weights (std, max |w| / std, excess kurtosis)
against the theoretical values of each known torch initialiser for that tensor's fan-in / fan-out. Each
difference is a :class:`parity.core.results.Finding` (cause ``init``, severity ``warning``) with the one-line fix.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from parity.core.results import Finding
from parity.core.spec import Tap
from weight_converters.keras import LAYER_VARS

#: Keras' truncated normal keeps draws within 2 stddev and divides the stddev by this so that the resulting
#: std is the nominal one (keras/src/initializers/random_initializers.py, VarianceScaling).
TRUNC_STD_CORRECTION = 0.87962566103423978
#: relative band in which a measured std counts as the theoretical one (tensors of >= 64 elements)
STD_TOLERANCE = 0.15
MIN_ELEMENTS = 64
#: below this many elements the kurtosis / max-to-std ratio cannot tell uniform, truncated and normal apart
SHAPE_MIN_ELEMENTS = 256

#: Keras layer class -> {variable: default initializer class name}
KERAS_DEFAULTS = {
    "Conv2D": {"kernel": "GlorotUniform", "bias": "Zeros"},
    "Dense": {"kernel": "GlorotUniform", "bias": "Zeros"},
    "DepthwiseConv2D": {"kernel": "GlorotUniform", "depthwise_kernel": "GlorotUniform", "bias": "Zeros"},
    "SeparableConv2D": {"depthwise_kernel": "GlorotUniform", "pointwise_kernel": "GlorotUniform", "bias": "Zeros"},
}
CONFIG_KEY = {"kernel": "kernel_initializer", "bias": "bias_initializer", "depthwise_kernel": "depthwise_initializer",
              "pointwise_kernel": "pointwise_initializer"}
#: Keras 3 DepthwiseConv2D names its kernel ``kernel`` but configures it with ``depthwise_initializer``
DEPTHWISE_KERNEL_KEY = "depthwise_initializer"


def keras_fans(shape) -> tuple[int, int]:
    """keras.src.initializers.random_initializers.compute_fans."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    rf = int(np.prod(shape[:-2]))
    return shape[-2] * rf, shape[-1] * rf


def torch_fans(shape) -> tuple[int, int]:
    """torch.nn.init._calculate_fan_in_and_fan_out."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * rf, shape[0] * rf


def _init_name(cfg) -> tuple[str, dict]:
    if cfg is None:
        return "", {}
    if isinstance(cfg, str):
        return cfg, {}
    if isinstance(cfg, dict):
        return str(cfg.get("class_name", "")), dict(cfg.get("config") or {})
    return type(cfg).__name__, {}


def keras_distribution(init_cfg, shape) -> dict[str, Any]:
    """The distribution a Keras initializer draws from, for a Keras-layout ``shape``:
    ``{"family", "dist": uniform|normal|truncated|constant|other, "std", "bound", "value", "name"}``."""
    name, cfg = _init_name(init_cfg)
    key = name.replace("_", "").lower()
    fi, fo = keras_fans(shape)
    vs = {"glorotuniform": (1.0, "fan_avg", "uniform"), "glorotnormal": (1.0, "fan_avg", "truncated"),
          "heuniform": (2.0, "fan_in", "uniform"), "henormal": (2.0, "fan_in", "truncated"),
          "lecununiform": (1.0, "fan_in", "uniform"), "lecunnormal": (1.0, "fan_in", "truncated")}
    if key == "variancescaling":
        dist = cfg.get("distribution", "truncated_normal")
        vs[key] = (float(cfg.get("scale", 1.0)), cfg.get("mode", "fan_in"),
                   "uniform" if dist == "uniform" else ("truncated" if dist == "truncated_normal" else "normal"))
    if key in vs:
        scale, mode, dist = vs[key]
        n = {"fan_in": fi, "fan_out": fo, "fan_avg": (fi + fo) / 2.0}[mode]
        std = math.sqrt(scale / max(n, 1))
        fam = {"glorotuniform": "glorot_uniform", "glorotnormal": "glorot_normal (truncated)",
               "heuniform": "he_uniform", "henormal": "he_normal (truncated)", "lecununiform": "lecun_uniform",
               "lecunnormal": "lecun_normal (truncated)"}.get(key, f"variance_scaling({scale:g}, {mode}, {dist})")
        if dist == "uniform":
            return {"family": fam, "dist": "uniform", "std": std, "bound": std * math.sqrt(3.0)}
        if dist == "truncated":
            s = std / TRUNC_STD_CORRECTION
            return {"family": fam, "dist": "truncated", "std": std, "bound": 2 * s, "trunc_std": s}
        return {"family": fam, "dist": "normal", "std": std}
    if key in ("zeros", "zero"):
        return {"family": "zeros", "dist": "constant", "value": 0.0, "std": 0.0}
    if key in ("ones", "one"):
        return {"family": "ones", "dist": "constant", "value": 1.0, "std": 0.0}
    if key == "constant":
        v = float(cfg.get("value", 0.0))
        return {"family": f"constant({v:g})", "dist": "constant", "value": v, "std": 0.0}
    if key in ("randomnormal", "normal"):
        s = float(cfg.get("stddev", 0.05))
        return {"family": f"random_normal(stddev={s:g})", "dist": "normal", "std": s}
    if key in ("truncatednormal",):
        s = float(cfg.get("stddev", 0.05))
        return {"family": f"truncated_normal(stddev={s:g})", "dist": "truncated", "std": s * TRUNC_STD_CORRECTION,
                "bound": 2 * s, "trunc_std": s}
    if key in ("randomuniform", "uniform"):
        lo, hi = float(cfg.get("minval", -0.05)), float(cfg.get("maxval", 0.05))
        return {"family": f"random_uniform({lo:g}, {hi:g})", "dist": "uniform", "std": (hi - lo) / math.sqrt(12),
                "bound": max(abs(lo), abs(hi))}
    return {"family": name or "unknown", "dist": "other", "std": None}


def torch_candidates(shape) -> list[dict[str, Any]]:
    """Known torch initialisers for a torch-layout ``shape`` with their theoretical std."""
    fi, fo = torch_fans(shape)
    out = [
        {"family": "kaiming_uniform(a=sqrt(5)) (torch default)", "dist": "uniform", "bound": 1 / math.sqrt(fi)},
        {"family": "xavier_uniform", "dist": "uniform", "bound": math.sqrt(6.0 / (fi + fo))},
        {"family": "kaiming_uniform(relu)", "dist": "uniform", "bound": math.sqrt(6.0 / fi)},
        {"family": "xavier_normal", "dist": "normal", "std": math.sqrt(2.0 / (fi + fo))},
        {"family": "kaiming_normal(relu) (no truncation)", "dist": "normal", "std": math.sqrt(2.0 / fi)},
    ]
    for c in out:
        if c["dist"] == "uniform":
            c["std"] = c["bound"] / math.sqrt(3.0)
    return out


#: ``describe_sample`` results by the bytes they describe, while :func:`remember_samples` is on (a ``--watch``
#: session rebuilds the port after every edit: its fresh weights are mostly the same bytes as the last time)
_SAMPLES: dict[tuple, dict[str, Any]] | None = None
#: at most this many remembered descriptions (the oldest go first)
SAMPLES_KEPT = 4096


def remember_samples(on: bool = True) -> None:
    """Remember :func:`describe_sample` results of tensors of up to :data:`SAMPLE_MAX` elements, keyed by the
    tensor's dtype, shape and a BLAKE2b digest of its bytes: a pure function of those bytes, so a remembered
    result is the one it would compute (a larger tensor is described from a sample, which costs less than hashing
    it: xception's 156 fresh tensors, 0.2-0.3 s sampled vs 0.4 s remembered). Off (the default) forgets them."""
    global _SAMPLES
    _SAMPLES = {} if on else None


def describe_sample(w: np.ndarray) -> dict[str, Any]:
    memo = _SAMPLES
    if memo is None or np.size(w) > SAMPLE_MAX:  # (a sampled description costs less than hashing every byte)
        return _describe_sample(w)
    a = np.ascontiguousarray(w)
    key = (a.dtype.str, a.shape, hashlib.blake2b(a.reshape(-1).view(np.uint8), digest_size=16).digest())
    if key not in memo:
        if len(memo) >= SAMPLES_KEPT:
            memo.pop(next(iter(memo)))
        memo[key] = _describe_sample(a)
    return dict(memo[key])


#: a tensor of more elements is described from this many of them, drawn at fixed pseudo-random positions
#: (seed :data:`SAMPLE_SEED`, with replacement). Why: the full statistics of a fresh Xception's 23 M weights took
#: 1.2 s of a 24 s check (cProfile); from 2**16 draws of i.i.d. initial values the std is within ~0.3 % (one
#: standard error, 1/sqrt(2n)) and the excess kurtosis within ~0.02 (sqrt(24/n)), far inside the bands that
#: tell the initialisers apart (std: :data:`STD_TOLERANCE`; kurtosis: uniform -1.2 vs the -0.9 cut, normal
#: truncated at 2 std -0.78 vs -0.9 and -0.3). Random positions, not a stride, so that a structured tensor (a
#: Dirac-initialised conv) is not read at one kernel position only.
SAMPLE_MAX = 1 << 16
#: the seed of those positions (a fixed one: the same tensor is always described the same way)
SAMPLE_SEED = 0


def _describe_sample(w: np.ndarray) -> dict[str, Any]:
    w = np.asarray(w).reshape(-1)
    n_all = int(w.size)
    if n_all > SAMPLE_MAX:
        out = _describe_all(w[np.random.default_rng(SAMPLE_SEED).integers(0, n_all, SAMPLE_MAX)])
        if out.get("dist") != "constant":  # (a constant sample is checked on every element)
            out["n"], out["sampled"] = n_all, SAMPLE_MAX
            return out
    return _describe_all(w)


def _describe_all(w: np.ndarray) -> dict[str, Any]:
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size == 0:
        return {"n": 0}
    std = float(w.std())
    if std == 0:
        return {"n": w.size, "std": 0.0, "value": float(w[0]) if np.all(w == w[0]) else None, "dist": "constant"}
    # each statistic once, and one temporary (a fresh port's weights: 23 M values for Xception); the same
    # operations in the same order as (w - w.mean()) / std, z ** 4 and np.abs(w).max(): the same bits
    mean = w.mean()
    z = np.subtract(w, mean)
    np.divide(z, std, out=z)
    np.power(z, 4, out=z)
    kurt = float(np.mean(z) - 3.0)
    del z
    top = max(w.max(), -w.min())  # max |w| without an |w| temporary
    ratio = float(top / std)
    if ratio <= 1.8 and kurt < -0.9:
        dist = "uniform"
    elif ratio <= 2.4 and kurt < -0.3:
        dist = "truncated"
    else:
        dist = "normal"
    return {"n": int(w.size), "std": std, "mean": float(mean), "max_over_std": ratio, "kurtosis": kurt,
            "dist": dist, "max": float(top)}


def identify_torch(w: np.ndarray) -> tuple[str, dict]:
    """Name the torch initialiser a fresh tensor most likely came from (by its std and shape of distribution)."""
    s = describe_sample(w)
    if s.get("dist") == "constant":
        return (f"constant({s['value']:g})" if s.get("value") is not None else "constant"), s
    if w.ndim < 2:
        return f"{s['dist']} (std {s['std']:.3g})", s
    best, err = None, math.inf
    for c in torch_candidates(w.shape):
        # the shape of the distribution is only readable from enough samples
        if s["n"] >= SHAPE_MIN_ELEMENTS and c["dist"] != s["dist"]:
            continue
        e = abs(math.log(s["std"] / c["std"]))
        if e < err:
            best, err = c, e
    if best is not None and err < STD_TOLERANCE:
        return best["family"], s
    return f"{s['dist']} (std {s['std']:.3g})", s


def _fix_for(dist: dict, shape_keras, torch_shape, var: str) -> str:
    fam = dist.get("family", "")
    if dist["dist"] == "constant":
        v = dist.get("value", 0.0)
        return "nn.init.zeros_(w)" if v == 0 else ("nn.init.ones_(w)" if v == 1 else f"nn.init.constant_(w, {v:g})")
    kfi, kfo = keras_fans(shape_keras)
    tfi, tfo = torch_fans(torch_shape)
    same_fans = (kfi, kfo) == (tfi, tfo)
    if fam == "glorot_uniform" and same_fans:
        return "nn.init.xavier_uniform_(w)"
    if fam == "he_uniform" and same_fans:
        return "nn.init.kaiming_uniform_(w, nonlinearity='relu')"
    if dist["dist"] == "uniform":
        return f"nn.init.uniform_(w, -{dist['bound']:.6g}, {dist['bound']:.6g})"
    if dist["dist"] == "truncated":
        s = dist["trunc_std"]
        return f"nn.init.trunc_normal_(w, std={s:.6g}, a={-2 * s:.6g}, b={2 * s:.6g})"
    if dist["dist"] == "normal":
        return f"nn.init.normal_(w, std={dist['std']:.6g})"
    return "initialise like the reference"


def _keras_var_torch_key(kind: str, var: str) -> str | None:
    return LAYER_VARS.get(kind, {}).get(var)


def compare_tensor(path: str, var: str, keras_init, keras_shape, torch_w: np.ndarray, assumed: bool = False
                   ) -> Finding | None:
    """One variable: the Keras initializer (config) vs the fresh torch tensor's statistics."""
    dist = keras_distribution(keras_init, keras_shape)
    if dist["dist"] == "other" or torch_w.size == 0:
        return None
    name, s = identify_torch(torch_w)
    key = var
    note = " (Keras default assumed: the layer config was not recorded)" if assumed else ""
    if dist["dist"] == "constant":
        if s.get("dist") == "constant" and s.get("value") is not None and abs(s["value"] - dist["value"]) < 1e-12:
            return None
        got = name if s.get("dist") == "constant" else f"{s.get('dist')} with std {s.get('std', 0):.3g}"
        if var == "bias" and torch_w.ndim == 1 and s.get("dist") != "constant":
            got = f"uniform(+-1/sqrt(fan_in)) (torch default), measured std {s['std']:.3g}"
        return Finding("init", path, f"{key} init: reference {dist['family']}{note}, port {got}",
                       _fix_for(dist, keras_shape, torch_w.shape, var).replace("(w", f"(m.{_torch_attr(var)}"),
                       stage="structure", severity="warning",
                       evidence=f"port {key}: mean {s.get('mean', 0):.3g}, std {s.get('std', 0):.3g}")
    if torch_w.size < MIN_ELEMENTS:
        return None
    if s.get("dist") == "constant":
        return Finding("init", path, f"{key} init: reference {dist['family']}{note}, port constant",
                       _fix_for(dist, keras_shape, torch_w.shape, var).replace("(w", f"(m.{_torch_attr(var)}"),
                       stage="structure", severity="warning")
    ratio = s["std"] / dist["std"] if dist["std"] else math.inf
    shape_ok = s["n"] < SHAPE_MIN_ELEMENTS or dist["dist"] == s["dist"]
    if abs(math.log(ratio)) < STD_TOLERANCE and shape_ok:
        return None
    want = (f"U(+-{dist['bound']:.3g})" if dist["dist"] == "uniform" else
            f"{'truncated ' if dist['dist'] == 'truncated' else ''}normal, std {dist['std']:.3g}")
    return Finding("init", path,
                   f"{key} init: reference {dist['family']} ({want}){note}, port {name} (measured std "
                   f"{s['std']:.3g}, max|w|/std {s['max_over_std']:.2f})",
                   _fix_for(dist, keras_shape, torch_w.shape, var).replace("(w", f"(m.{_torch_attr(var)}"),
                   stage="structure", severity="warning",
                   evidence=f"std ratio port/reference {ratio:.3f}; Keras fans {keras_fans(keras_shape)}, torch fans "
                            f"{torch_fans(torch_w.shape)}")


def _torch_attr(var: str) -> str:
    return {"kernel": "weight", "bias": "bias", "depthwise_kernel": "depthwise.weight",
            "pointwise_kernel": "pointwise.weight"}.get(var, var)


def _initializer_for(layer_class: str, config: dict, var: str):
    """(initializer config, assumed?) of one Keras variable."""
    keys = [CONFIG_KEY.get(var)]
    if layer_class == "DepthwiseConv2D" and var == "kernel":
        keys.insert(0, DEPTHWISE_KERNEL_KEY)
    for k in keys:
        if k and config.get(k) is not None:
            return config[k], False
    default = KERAS_DEFAULTS.get(layer_class, {}).get(var)
    return default, True


def init_findings_from_parts(structure: dict[str, dict], shapes: dict[str, dict[str, tuple]],
                             port_state: dict[str, np.ndarray], taps: list[Tap]) -> list[Finding]:
    """The harness's form: ``structure`` = ``ReferenceRun.structure`` (``layer_info`` per Keras layer; its
    ``kernel_initializer``... keys when recorded), ``shapes`` = ``{layer: {var: Keras shape}}``,
    ``port_state`` = the port's state_dict as numpy *before* any weight is loaded."""
    out = []
    for tap in taps:
        if tap.kind not in ("conv2d", "depthwise_conv2d", "separable_conv2d", "dense"):
            continue
        info = structure.get(tap.ref, {})
        cls = info.get("class", "")
        for var, kshape in (shapes.get(tap.ref) or {}).items():
            suffix = _keras_var_torch_key(tap.kind, var)
            if suffix is None:
                continue
            key = f"{tap.port}.{suffix}" if tap.port else suffix
            w = port_state.get(key)
            if w is None:
                continue
            init, assumed = _initializer_for(cls, info, var)
            if init is None:
                continue
            f = compare_tensor(tap.path, suffix, init, kshape, np.asarray(w), assumed)
            if f is not None:
                out.append(f)
    return out


def init_findings(keras_model, torch_module, taps: list[Tap]) -> list[Finding]:
    """Compare the initialisation of a freshly built Keras model and a freshly built torch module, layer by
    layer (``taps`` align them). Returns warnings (cause ``init``) with the torch call that reproduces the
    reference's initialiser."""
    structure, shapes = {}, {}
    for layer in keras_model.layers:
        cfg = layer.get_config()
        info = {"class": type(layer).__name__}
        for k in ("kernel_initializer", "bias_initializer", "depthwise_initializer", "pointwise_initializer"):
            if k in cfg:
                info[k] = cfg[k]
        structure[layer.name] = info
        shapes[layer.name] = {w.name.split("/")[-1].split(":")[0]: tuple(int(d) for d in w.shape)
                              for w in layer.weights}
    state = {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
    return init_findings_from_parts(structure, shapes, state, taps)


def init_findings_from_run(ref_run, torch_module, taps: list[Tap]) -> list[Finding]:
    """For the harness: call right after the port is built, before its weights are loaded."""
    shapes = {layer: {var: tuple(np.shape(a)) for var, a in vars_.items()} for layer, vars_ in ref_run.weights.items()}
    state = {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
    return init_findings_from_parts(ref_run.structure, shapes, state, taps)
