"""Keras <-> torch layouts, per layer kind, as pure numpy (after timm's ``checkpoint_filter_fn``).

Every layout rule is a named function; every convention applied is written into the report:

=================  ===============================  =================================================
Keras layer        Keras variable (layout)          torch key (layout)
=================  ===============================  =================================================
Conv2D             kernel (kh, kw, in/g, out) HWIO  weight (out, in/g, kh, kw) OIHW: transpose(3,2,0,1)
DepthwiseConv2D    depthwise_kernel (kh,kw,in,mult) weight (in*mult, 1, kh, kw): out channel c*mult + m
SeparableConv2D    depthwise_kernel, pointwise_...  depthwise.weight, pointwise.weight (+ pointwise.bias)
Dense              kernel (in, out)                 weight (out, in): transpose; after Flatten the rows
                                                    are reordered HWC -> CHW when ``flatten_chw`` is given
BatchNormalization gamma, beta, moving_mean,        weight, bias, running_mean, running_var (+
                   moving_variance                  num_batches_tracked = 0, torch-only bookkeeping)
=================  ===============================  =================================================

Origins: keras/src/layers/convolutional/*.py (kernel shapes), torch/nn/modules/conv.py, keras/src/layers/core/dense.py, torch/nn/modules/linear.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from weight_converters.families import CONVERTERS, FAMILY_VARS
from weight_converters.report import ConversionError, ConversionReport, check_values

#: Keras variable name -> torch parameter suffix, per layer kind.
LAYER_VARS: dict[str, dict[str, str]] = {
    "conv2d": {"kernel": "weight", "bias": "bias"},
    # Keras 2 named the DepthwiseConv2D kernel ``depthwise_kernel``, Keras 3 names it ``kernel``
    # (keras/src/layers/convolutional/base_depthwise_conv.py)
    "depthwise_conv2d": {"depthwise_kernel": "weight", "kernel": "weight", "bias": "bias"},
    "separable_conv2d": {"depthwise_kernel": "depthwise.weight", "pointwise_kernel": "pointwise.weight",
                         "bias": "pointwise.bias"},
    "dense": {"kernel": "weight", "bias": "bias"},
    "batchnorm": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                  "moving_variance": "running_var"},
}
#: torch-only state_dict entries, filled on Keras -> torch and dropped (not "unexpected") on the way back.
TORCH_ONLY = {"batchnorm": {"num_batches_tracked": np.array(0, dtype=np.int64)}}
# the layer families with their own converter (weight_converters/<family>.py, listed in families.py)
LAYER_VARS.update(FAMILY_VARS)

CONV_HWIO_TO_OIHW = "Conv2D kernel HWIO -> OIHW (transpose 3,2,0,1)"
DEPTHWISE_TO_TORCH = "Depthwise kernel (kh,kw,in,mult) -> (in*mult,1,kh,kw), out channel = c*mult + m"
POINTWISE_TO_TORCH = "Pointwise kernel (1,1,in,out) HWIO -> (out,in,1,1)"
DENSE_TRANSPOSE = "Dense kernel (in,out) -> Linear weight (out,in) (transpose)"
DENSE_FLATTEN = "Dense rows after Flatten: Keras HWC order -> torch CHW order"
BN_NAMES = "BatchNormalization gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var"
BN_VAR_AS_IS = ("moving_variance copied as running_var unchanged: both are used as-is in eval; only the "
                "*update* differs (torch unbiased, Keras biased)")
BN_TRACKED = "num_batches_tracked = 0 (torch bookkeeping; Keras has none)"


@dataclass(frozen=True)
class LayerMap:
    """One reference layer <-> one port module. ``flatten_chw`` for a Dense after Flatten (the (C,H,W) of
    the flattened tensor); ``depth_multiplier`` for depthwise/separable kernels on the way back to Keras."""

    ref: str
    port: str
    kind: str
    flatten_chw: tuple[int, int, int] | None = None
    depth_multiplier: int | None = None


# --- Per-array layout rules ------------------------------------------------------------------------------
def conv_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1))


def conv_kernel_to_keras(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def depthwise_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    kh, kw, cin, mult = k.shape
    return np.ascontiguousarray(k.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None])


def depthwise_kernel_to_keras(w: np.ndarray, depth_multiplier: int = 1) -> np.ndarray:
    cm, _, kh, kw = w.shape
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0).reshape(kh, kw, cm // depth_multiplier, depth_multiplier))


def dense_kernel_to_torch(k: np.ndarray, flatten_chw: tuple[int, int, int] | None = None) -> np.ndarray:
    if flatten_chw is not None:  # (C, H, W), or a volume's (C, D, H, W): rows HWC (DHWC) -> CHW (CDHW)
        c, spatial = flatten_chw[0], tuple(flatten_chw[1:])
        n = len(spatial)
        k = k.reshape((*spatial, c, k.shape[1])).transpose(n, *range(n), n + 1).reshape(-1, k.shape[1])
    return np.ascontiguousarray(k.T)


def dense_kernel_to_keras(w: np.ndarray, flatten_chw: tuple[int, int, int] | None = None) -> np.ndarray:
    k = w.T
    if flatten_chw is not None:
        c, spatial = flatten_chw[0], tuple(flatten_chw[1:])
        n = len(spatial)
        k = k.reshape((c, *spatial, k.shape[1])).transpose(*range(1, n + 1), 0, n + 1).reshape(-1, k.shape[1])
    return np.ascontiguousarray(k)


def var_to_torch(kind: str, var: str, a: np.ndarray, *, flatten_chw=None, report: ConversionReport | None = None):
    """One Keras variable (kernel, gradient or optimizer slot of it) -> torch layout."""
    a = np.asarray(a)
    if kind in CONVERTERS:
        return CONVERTERS[kind].var_to_torch(kind, var, a, report)
    note = None
    if kind == "conv2d" and var == "kernel":
        out, note = conv_kernel_to_torch(a), CONV_HWIO_TO_OIHW
    elif var == "depthwise_kernel" or (kind == "depthwise_conv2d" and var == "kernel"):
        out, note = depthwise_kernel_to_torch(a), DEPTHWISE_TO_TORCH
    elif var == "pointwise_kernel":
        out, note = conv_kernel_to_torch(a), POINTWISE_TO_TORCH
    elif kind == "dense" and var == "kernel":
        out, note = dense_kernel_to_torch(a, flatten_chw), DENSE_TRANSPOSE
        if flatten_chw is not None and report is not None:
            report.convention(f"{DENSE_FLATTEN} (C,H,W)={tuple(flatten_chw)}")
    else:
        out = np.array(a, copy=True)
        if kind == "batchnorm":
            note = BN_NAMES
            if var == "moving_variance" and report is not None:
                report.convention(BN_VAR_AS_IS)
    if note and report is not None:
        report.convention(note)
    return out


def companion_vars(kind: str, var: str) -> list[tuple[str, str]]:
    """The other torch keys (suffixes) one Keras variable fills, each with the variable (name) that converts to
    it through :func:`var_to_torch` (a GRU's two-row bias -> ``bias_hh``); ``[]`` for most layers."""
    conv = CONVERTERS.get(kind)
    extra = getattr(conv, "companion_vars", None)
    return list(extra(kind, var)) if extra is not None else []


def var_to_keras(kind: str, var: str, a: np.ndarray, *, flatten_chw=None, depth_multiplier: int = 1):
    """Inverse of :func:`var_to_torch`."""
    a = np.asarray(a)
    if kind in CONVERTERS:
        return CONVERTERS[kind].var_to_keras(kind, var, a)
    if kind == "conv2d" and var == "kernel":
        return conv_kernel_to_keras(a)
    if var == "depthwise_kernel" or (kind == "depthwise_conv2d" and var == "kernel"):
        return depthwise_kernel_to_keras(a, depth_multiplier)
    if var == "pointwise_kernel":
        return conv_kernel_to_keras(a)
    if kind == "dense" and var == "kernel":
        return dense_kernel_to_keras(a, flatten_chw)
    return np.array(a, copy=True)




# --- Whole-model conversion ---------------------------------------------------------------------------
def keras_to_torch(weights: Mapping[str, Mapping[str, np.ndarray]], mapping: Sequence[LayerMap], *,
                   expected: Mapping[str, tuple] | None = None, strict: bool = True,
                   ) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """``weights``: ``{keras_layer: {var_name: array}}``. ``expected``: the port's ``{key: shape}`` (its
    state_dict), which makes missing / unexpected / shape checks possible. Strict raises
    :class:`ConversionError` on any problem; non-strict returns what converted and the report."""
    report = ConversionReport(direction="keras->torch")
    out: dict[str, np.ndarray] = {}
    mapped_layers = set()
    absent: set[str] = set()  # torch keys whose source layer is missing (listed once, by source name)
    for m in mapping:
        table = LAYER_VARS.get(m.kind)
        if table is None:
            continue
        mapped_layers.add(m.ref)
        layer = weights.get(m.ref)
        prefix = f"{m.port}." if m.port else ""
        if layer is None:
            for v, t in table.items():
                if (expected is None or prefix + t in expected) and prefix + t not in absent:
                    absent.add(prefix + t)
                    report.missing.append(f"{m.ref}/{v} (-> {prefix}{t})")
            continue
        if m.kind in CONVERTERS:
            _family_to_torch(m, layer, prefix, table, out, report)
            continue
        for var, arr in layer.items():
            src = f"{m.ref}/{var}"
            if var not in table:
                report.unexpected.append(src)
                continue
            dst = prefix + table[var]
            conv = var_to_torch(m.kind, var, arr, flatten_chw=m.flatten_chw, report=report)
            check_values(src, var, conv, report)
            out[dst] = conv
            report.mapped.append((src, dst, ""))
        for extra, value in TORCH_ONLY.get(m.kind, {}).items():
            key = prefix + extra
            if expected is None or key in expected:
                out[key] = value.copy()
                report.convention(BN_TRACKED)
    for layer, vars_ in weights.items():
        if layer not in mapped_layers and len(vars_):
            report.unexpected += [f"{layer}/{v}" for v in vars_]
    if expected is not None:
        for key, shape in expected.items():
            if key not in out:
                if key not in absent:
                    report.missing.append(key)
            elif tuple(out[key].shape) != tuple(shape):
                report.shape_mismatches.append((key, tuple(shape), tuple(out[key].shape)))
        for key in list(out):
            if key not in expected:
                report.unexpected.append(key)
    if strict:
        report.raise_if_failed()
    return out, report


def _family_to_torch(m: LayerMap, layer, prefix: str, table, out: dict, report: ConversionReport) -> None:
    """One layer of a family with its own converter (weight_converters/families.py)."""
    extra = getattr(CONVERTERS[m.kind], "EXTRA_VARS", {}).get(m.kind, ())  # many-to-one (packed attention)
    known = {v: a for v, a in layer.items() if v in table or v in extra}
    report.unexpected += [f"{m.ref}/{v}" for v in layer if v not in table and v not in extra]
    try:
        conv = CONVERTERS[m.kind].layer_to_torch(m.kind, known, report)
    except ConversionError as exc:
        report.unexpected.append(f"{m.ref}: {exc}")
        return
    for suffix, arr in conv.items():
        check_values(prefix + suffix, suffix, arr, report)
        out[prefix + suffix] = arr
        report.mapped.append((f"{m.ref}", prefix + suffix, ""))


def _family_to_keras(m: LayerMap, state_dict, prefix: str, table, expected, used: set, report) -> dict:
    conv = CONVERTERS[m.kind]
    want = (expected or {}).get(m.ref)
    extra = getattr(conv, "EXTRA_VARS", {}).get(m.kind, ())
    if want is not None:
        variables = [v for v in want if v in table or v in extra]
    else:  # no expected layout: the variables whose torch keys exist, Bidirectional when a reverse key does
        present = [v for v, k in table.items() if prefix + k in state_dict]
        bidi = any(v.startswith("backward/") for v in present)
        variables = [v for v in present if v.startswith(("forward/", "backward/")) == bidi]
    local = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}
    n_missing = len(report.missing)
    arrs = conv.layer_to_keras(m.kind, local, variables, report, shapes=want)
    report.missing[n_missing:] = [f"{m.ref}/{v} (<- {prefix}{table[v]})" for v in report.missing[n_missing:]]
    used.update(prefix + k for k in conv.torch_keys(m.kind, variables) if prefix + k in state_dict)
    for var, arr in arrs.items():
        check_values(f"{m.ref}/{var}", var, arr, report)
        if want is not None and var in want and tuple(arr.shape) != tuple(want[var]):
            report.shape_mismatches.append((f"{m.ref}/{var}", tuple(want[var]), tuple(arr.shape)))
        report.mapped.append((prefix, f"{m.ref}/{var}", ""))
    return arrs


def torch_to_keras(state_dict: Mapping[str, np.ndarray], mapping: Sequence[LayerMap], *,
                   expected: Mapping[str, Mapping[str, tuple]] | None = None, strict: bool = True,
                   ) -> tuple[dict[str, dict[str, np.ndarray]], ConversionReport]:
    """Inverse of :func:`keras_to_torch`. ``expected``: ``{keras_layer: {var: shape}}`` of the reference
    (gives the depth multiplier where the LayerMap does not)."""
    report = ConversionReport(direction="torch->keras")
    out: dict[str, dict[str, np.ndarray]] = {}
    used: set[str] = set()
    for m in mapping:
        table = LAYER_VARS.get(m.kind)
        if table is None:
            continue
        prefix = f"{m.port}." if m.port else ""
        if m.kind in CONVERTERS:
            arrs = _family_to_keras(m, state_dict, prefix, table, expected, used, report)
            if arrs:
                out[m.ref] = arrs
            continue
        layer_out: dict[str, np.ndarray] = {}
        for var, suffix in table.items():
            key = prefix + suffix
            want = (expected or {}).get(m.ref, {}).get(var)
            if m.kind == "depthwise_conv2d" and var in ("kernel", "depthwise_kernel"):
                # one torch key, two Keras names: the expected layout decides, Keras 3's "kernel" by default
                names = set((expected or {}).get(m.ref, {}))
                if (var in names) is False and (names & {"kernel", "depthwise_kernel"} or var == "depthwise_kernel"):
                    continue
            if key not in state_dict:
                if want is not None:
                    report.missing.append(f"{m.ref}/{var} (<- {key})")
                continue
            used.add(key)
            mult = m.depth_multiplier
            if mult is None and want is not None and key.endswith("weight") and len(want) == 4 and (
                    var == "depthwise_kernel" or m.kind == "depthwise_conv2d"):
                mult = int(want[3])
            if mult is None:
                mult = 1
                if var == "depthwise_kernel" or (m.kind == "depthwise_conv2d" and var == "kernel"):
                    report.assume(f"{m.ref}: depth_multiplier 1 (not given, no expected shape)")
            arr = var_to_keras(m.kind, var, np.asarray(state_dict[key]), flatten_chw=m.flatten_chw,
                               depth_multiplier=mult)
            check_values(key, var, arr, report)
            if want is not None and tuple(arr.shape) != tuple(want):
                report.shape_mismatches.append((f"{m.ref}/{var}", tuple(want), tuple(arr.shape)))
            layer_out[var] = arr
            report.mapped.append((key, f"{m.ref}/{var}", ""))
        for extra in TORCH_ONLY.get(m.kind, {}):
            used.add(prefix + extra)
        if layer_out:
            out[m.ref] = layer_out
        if expected is not None and m.ref in expected:
            for var in expected[m.ref]:
                if var not in layer_out and not any(s.startswith(f"{m.ref}/{var} ") for s in report.missing):
                    report.missing.append(f"{m.ref}/{var}")
    for key in state_dict:
        if key not in used:
            report.unexpected.append(key)
    if strict:
        report.raise_if_failed()
    return out, report
