"""1-D convolution and pooling on sequences: Conv1D (valid, same, causal; dilation), MaxPooling1D,
AveragePooling1D <-> nn.Conv1d / nn.MaxPool1d / nn.AvgPool1d. Keras is channels-last (N, L, C), torch
channels-first (N, C, L): a port transposes once at its input, and its tapped tensors are compared after the
``channels_last`` port transform. Layout: ``weight_converters/conv1d.py``."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit

KERAS_CAUSAL_PADDING = "left (k - 1) * dilation, right 0"
"""keras Conv1D(padding='causal') (keras/src/layers/convolutional/base_conv.py: ``_compute_causal_padding``);
torch has no causal mode: F.pad(x, ((k - 1) * d, 0)) before a padding=0 Conv1d."""
TF_SAME_1D = "pad_total = (k - 1) * d (stride 1): left pad_total // 2, the extra one on the right"
"""TF 'same' (tensorflow/python/ops/nn_ops.py); torch Conv1d(padding='same') pads the same way (extra on the
right), padding=p pads p on both sides: differs for an even kernel."""


def causal_pad(kernel: int, dilation: int = 1) -> int:
    """Left padding that makes a stride-1 Conv1d causal like Keras' ``padding='causal'``."""
    return (kernel - 1) * dilation


def _one(v):
    return v[0] if isinstance(v, (list, tuple)) else v


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind != "conv1d":
        return out
    k, d = _one(ref.get("kernel_size")), _one(ref.get("dilation_rate")) or 1
    pk, pd = _one(port.get("kernel_size")), _one(port.get("dilation")) or 1
    if k and pk and int(k) != int(pk):
        out.append(("kernel_size", f"kernel {pk} in the port, {k} in the reference", f"kernel_size={k}", ""))
    if d and pd and int(d) != int(pd):
        out.append(("dilation", f"dilation {pd} in the port, {d} in the reference", f"dilation={d}", ""))
    pad = ref.get("padding")
    pp = port.get("causal_pad")
    if pad == "causal" and pp is None and k:
        p = _one(port.get("padding"))
        out.append(("causal_padding", f"Keras padding='causal' (left {causal_pad(int(k), int(d))}, right 0); the "
                    f"port pads {p!r} on both sides: every output sees {'future' if p else 'fewer past'} steps",
                    f"F.pad(x, ({causal_pad(int(k), int(d))}, 0)) then Conv1d(padding=0)", KERAS_CAUSAL_PADDING))
    return out


def _torch_info(m) -> dict:
    return {"causal_pad": m.causal_pad} if hasattr(m, "causal_pad") else {}


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls == "Conv1D" and _one(cfg.get("strides")) not in (None, 1) and cfg.get("padding") == "same":
        return "Conv1D(strides>1, padding='same') is not yet supported"
    if cls == "Conv1D" and cfg.get("groups", 1) not in (1, None):
        return "Conv1D(groups>1) is not yet supported"
    return None


FAMILY = Family(
    name="conv1d",
    summary="Conv1D (valid, same, causal, dilation), MaxPooling1D, AveragePooling1D on (N, L, C)",
    keras_classes={"Conv1D": "conv1d", "Convolution1D": "conv1d", "MaxPooling1D": "maxpool",
                   "MaxPool1D": "maxpool", "AveragePooling1D": "avgpool", "AvgPool1D": "avgpool"},
    torch_classes={"Conv1d": "conv1d", "MaxPool1d": "maxpool", "AvgPool1d": "avgpool"},
    weighted=("conv1d",),
    converter="weight_converters.conv1d",
    conventions=(
        Named("layout", "channels-last (N, L, C)", "channels-first (N, C, L)", "keras/src/layers/convolutional/"
              "base_conv.py (data_format); torch/nn/modules/conv.py"),
        Named("kernel", "(k, in, out)", "(out, in, k)", "keras/src/layers/convolutional/base_conv.py"),
        Named("causal padding", KERAS_CAUSAL_PADDING, "none built in: F.pad left", "keras/src/layers/convolutional/"
              "base_conv.py"),
        Named("'same' (even kernel)", TF_SAME_1D, "padding='same' agrees; padding=p is symmetric",
              "tensorflow/python/ops/nn_ops.py; torch/nn/modules/conv.py"),
    ),
    keras_keys=("padding", "kernel_size", "dilation_rate", "strides"),
    torch_attrs=("kernel_size", "dilation", "padding"),
    torch_info=_torch_info,
    rules=(_rules,),
    refuse=_refuse,
    kinds=("conv1d",),
)
