"""MultiHeadAttention, Keras <-> torch, as pure numpy, for the two torch layouts ports use.

=========================  ====================================  ============================================
Keras variable             layout                                torch key (layout)
=========================  ====================================  ============================================
query/kernel               (d, h, k): per-head kernels           ``attention``: q_proj.weight (h*k, d)
key/kernel, value/kernel   (d, h, k)                             k_proj.weight, v_proj.weight (h*k, d)
query|key|value/bias       (h, k)                                q_proj|k_proj|v_proj.bias (h*k,)
attention_output/kernel    (h, k, d)                             out_proj.weight (d, h*k)
attention_output/bias      (d,)                                  out_proj.bias (d,)
(all three projections)                                          ``attention_packed`` (nn.MultiheadAttention):
                                                                 in_proj_weight (3*h*k, d) = [q; k; v],
                                                                 in_proj_bias (3*h*k,)
=========================  ====================================  ============================================

Head ``j`` owns rows ``j*k .. (j+1)*k`` of a torch projection: Keras' (d, h, k) reshaped to (d, h*k) (head-major)
then transposed. Both scale the query by 1/sqrt(k). Origins: keras/src/layers/attention/multi_head_attention.py
(``EinsumDense`` kernels ``abc,cde->abde`` / ``abcd,cde->abe``), torch/nn/modules/activation.py
(``MultiheadAttention.in_proj_weight``, ``out_proj``), torch/nn/functional.py (``_in_projection_packed``)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from weight_converters.report import ConversionError, ConversionReport

PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "attention_output": "out_proj"}
PER_HEAD = ("MultiHeadAttention per-head kernels (d,h,k) -> Linear (h*k,d) (head-major reshape, transpose); "
            "output (h,k,d) -> (d,h*k)")
PACKED = "MultiHeadAttention query/key/value -> nn.MultiheadAttention in_proj_weight [q; k; v] (3*h*k, d)"

KINDS = {
    "attention": {f"{v}/{p}": f"{t}.{'weight' if p == 'kernel' else 'bias'}"
                  for v, t in PROJ.items() for p in ("kernel", "bias")},
    # 1:1 only for the output projection; q/k/v share in_proj_* (layer_to_torch / layer_to_keras)
    "attention_packed": {"attention_output/kernel": "out_proj.weight", "attention_output/bias": "out_proj.bias"},
}

#: Keras variables converted many-to-one (into in_proj_*), so not in the 1:1 table the gradient stages read
EXTRA_VARS = {"attention_packed": tuple(f"{v}/{p}" for v in ("query", "key", "value") for p in ("kernel", "bias"))}


#: the packed torch parameters of ``attention_packed``, each the concatenation of three Keras variables (q, k, v)
PACKED_PARAMS = {"in_proj_weight": tuple(f"{v}/kernel" for v in ("query", "key", "value")),
                 "in_proj_bias": tuple(f"{v}/bias" for v in ("query", "key", "value"))}


def packed_value(param: str, layer_vars: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """``in_proj_weight`` / ``in_proj_bias`` (torch layout) from a layer's q/k/v Keras arrays (weights, their
    gradients, updated values or optimizer slots: the concatenation commutes with each); None when one is
    absent."""
    parts = [layer_vars.get(v) for v in PACKED_PARAMS[param]]
    if any(a is None for a in parts):
        return None
    return np.concatenate([var_to_torch("attention_packed", v, a) for v, a in zip(PACKED_PARAMS[param], parts)])


def var_to_torch(kind: str, var: str, a: np.ndarray, report: ConversionReport | None = None) -> np.ndarray:
    a = np.asarray(a)
    if var in PACKED_PARAMS:  # already packed in torch's layout (packed_value)
        return a
    part = var.rsplit("/", 1)[-1]
    if var.startswith("attention_output/"):
        out = a.reshape(-1, a.shape[-1]).T if part == "kernel" else a
    else:
        out = a.reshape(a.shape[0], -1).T if part == "kernel" else a.reshape(-1)
    if report is not None:
        report.convention(PER_HEAD)
    return np.ascontiguousarray(out)


def var_to_keras(kind: str, var: str, w: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    w = np.asarray(w)
    part = var.rsplit("/", 1)[-1]
    if part == "kernel":
        w = w.T
    if shape is None:
        raise ConversionError(f"{var}: the Keras shape (num_heads, key_dim) is needed to split heads",
                              ConversionReport(direction="torch->keras"))
    return np.ascontiguousarray(w.reshape(shape))


def layer_to_torch(kind: str, variables: Mapping[str, np.ndarray], report: ConversionReport) -> dict[str, np.ndarray]:
    out = {}
    if kind == "attention_packed":
        qkv = [f"{v}/kernel" for v in ("query", "key", "value")]
        if all(v in variables for v in qkv):
            out["in_proj_weight"] = np.concatenate([var_to_torch(kind, v, variables[v]) for v in qkv])
            report.convention(PACKED)
        bs = [f"{v}/bias" for v in ("query", "key", "value")]
        if all(v in variables for v in bs):
            out["in_proj_bias"] = np.concatenate([var_to_torch(kind, v, variables[v]) for v in bs])
    for var, a in variables.items():
        if var in KINDS[kind]:
            out[KINDS[kind][var]] = var_to_torch(kind, var, a, report)
        elif not (kind == "attention_packed" and var.split("/")[0] in ("query", "key", "value")):
            report.unexpected.append(var)
    return out


def layer_to_keras(kind: str, state: Mapping[str, np.ndarray], variables, report: ConversionReport,
                   shapes: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    shapes = shapes or {}
    out = {}
    for var in variables:
        if kind == "attention_packed" and var.split("/")[0] in ("query", "key", "value"):
            i = ("query", "key", "value").index(var.split("/")[0])
            key = "in_proj_weight" if var.endswith("kernel") else "in_proj_bias"
            if key not in state:
                report.missing.append(var)
                continue
            packed = np.asarray(state[key])
            out[var] = var_to_keras(kind, var, np.split(packed, 3)[i], shapes.get(var))
            continue
        key = KINDS[kind].get(var)
        if key is None or key not in state:
            report.missing.append(var)
            continue
        out[var] = var_to_keras(kind, var, state[key], shapes.get(var))
    return out


def torch_keys(kind: str, variables) -> set[str]:
    keys = {KINDS[kind][v] for v in variables if v in KINDS[kind]}
    if kind == "attention_packed":
        keys |= {"in_proj_weight", "in_proj_bias"}
    return keys
