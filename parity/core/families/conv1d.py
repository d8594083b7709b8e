"""1-D convolution and pooling on sequences: Conv1D (valid, same at any stride, causal; dilation; groups),
DepthwiseConv1D, SeparableConv1D, MaxPooling1D, AveragePooling1D, GlobalMaxPooling1D (+ ZeroPadding1D,
Cropping1D, which carry no weights) <-> nn.Conv1d (a depthwise one: groups = in_channels; a separable one: a
depthwise Conv1d feeding a kernel-1 Conv1d) / nn.MaxPool1d / nn.AvgPool1d / nn.AdaptiveMaxPool1d(1). Keras is channels-last (N, L, C), torch
channels-first (N, C, L): a port transposes once at its input, and its tapped tensors are compared after the
``channels_last`` port transform. Layout: ``weight_converters/conv1d.py``."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit

KERAS_CAUSAL_PADDING = "left (k - 1) * dilation, right 0"
"""keras Conv1D(padding='causal') (keras/src/layers/convolutional/base_conv.py: ``_compute_causal_padding``);
torch has no causal mode: F.pad(x, ((k - 1) * d, 0)) before a padding=0 Conv1d."""
TF_SAME_1D = ("pad_total = max((ceil(L / s) - 1) * s + (k - 1) * d + 1 - L, 0): left pad_total // 2, the extra "
              "one on the right")
"""TF 'same' (tensorflow/python/ops/nn_ops.py; Keras 3 delegates to it: keras/src/backend/tensorflow/nn.py
``conv``). Stride 1: pad_total = (k - 1) * d, and torch Conv1d(padding='same') pads the same way (extra on the
right). Stride 2 on an even length, or an even kernel: asymmetric, and torch's padding=p (symmetric by
construction, torch/nn/modules/conv.py) shifts every window; torch refuses padding='same' with a stride > 1.
``ported_torch.layers1d.Conv1dSame`` pads like TF."""
KERAS_DEPTHWISE_ORDER = "output channel c * depth_multiplier + m (kernel (k, in, mult) reshaped to (k, in*mult))"
"""keras/src/layers/convolutional/base_depthwise_conv.py (kernel ``kernel_size + (input_channel,
depth_multiplier)``, TF depthwise_conv2d's channel order); torch Conv1d(in, in*mult, k, groups=in): group c makes
outputs c*mult .. c*mult + mult - 1 (torch/nn/modules/conv.py). A port reading the kernel as (k, mult, in)
(m * in + c) feeds each output from the wrong input channel."""
KERAS_SEPARABLE_1D = "depthwise (groups = in) then a kernel-1 pointwise conv; the bias on the pointwise conv only"
"""keras/src/layers/convolutional/base_separable_conv.py (``depthwise_kernel``, ``pointwise_kernel`` of shape
(1, in*mult, filters), ``bias`` (filters,)); torch has no separable conv: Conv1d(groups=in, bias=False) then
Conv1d(in*mult, filters, 1)."""


def causal_pad(kernel: int, dilation: int = 1) -> int:
    """Left padding that makes a stride-1 Conv1d causal like Keras' ``padding='causal'``."""
    return (kernel - 1) * dilation


def _one(v):
    return v[0] if isinstance(v, (list, tuple)) else v


def tf_same_pads(length: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(left, right) padding of TF 'same' on a sequence of ``length`` steps (:data:`TF_SAME_1D`)."""
    eff = (kernel - 1) * dilation + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + eff - length, 0)
    return total // 2, total - total // 2


def _same_padding_rule(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    """A port Conv1d whose symmetric padding is not TF 'same' on this input length (stride > 1 or an even kernel)."""
    if kind == "separable_conv1d" and isinstance(port.get("depthwise"), dict):
        port = port["depthwise"]  # the padding is the depthwise conv's
    if ref.get("padding") != "same" or port.get("tf_padding") or (
            port.get("causal_pad") is not None and not port.get("prepad")):
        return []
    k, s = _one(ref.get("kernel_size")), _one(ref.get("strides")) or 1
    d = _one(ref.get("dilation_rate")) or 1
    p = port.get("padding")
    inp = ref.get("input_shape")
    if not (k and inp and isinstance(inp, (list, tuple)) and len(inp) == 2 and isinstance(inp[0], int)):
        return []
    if isinstance(p, str) or p is None:
        return []
    p = int(_one(p))
    left, right = tf_same_pads(int(inp[0]), int(k), int(s), int(d))
    got = tuple(port["prepad"]) if port.get("prepad") else (p, p)  # the parent's F.pad before the conv, if any
    if (left, right) == got:
        return []
    why = (f"the extra step goes on the right, {'stride ' + str(s) if int(s) > 1 else 'even kernel ' + str(k)}"
           if left != right else f"TF pads {left} on each side")
    said = f"padding={p} (symmetric)" if got == (p, p) else f"padded (left {got[0]}, right {got[1]})"
    return [("conv_padding", f"Conv1d {said} where Keras {ref.get('class', 'Conv1D')}(padding='same') "
             f"(kernel {k}, stride {s}) pads (left {left}, right {right}) on a length-{inp[0]} sequence ({why}): "
             "every output window is shifted",
             "use ported_torch.layers1d.Conv1dSame, or F.pad(x, (%d, %d)) then Conv1d(padding=0)" % (left, right),
             TF_SAME_1D)]


def _depthwise_probe(kind: str, ev: dict):
    """A depthwise kernel whose output channels are ordered m * in + c (Keras' (k, in, mult) read as (k, mult, in))
    instead of c * mult + m."""
    if kind not in ("depthwise_conv1d", "separable_conv1d"):
        return None
    key = "weight" if kind == "depthwise_conv1d" else "depthwise.weight"
    w, g = (ev.get("want") or {}).get(key), (ev.get("got") or {}).get(key)
    if w is None or g is None:
        return None
    import numpy as np

    w, g = np.asarray(w, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if w.shape != g.shape or np.allclose(g, w, rtol=1e-6, atol=0):
        return None
    cm = w.shape[0]
    for cin in range(2, cm):
        if cm % cin or cm // cin < 2:
            continue
        mult = cm // cin
        # the port's channel j = m * cin + c holds Keras' (c, m): the converted row c * mult + m
        cand = w.reshape(cin, mult, *w.shape[1:]).transpose(1, 0, *range(2, w.ndim + 1)).reshape(w.shape)
        if np.allclose(g, cand, rtol=1e-6, atol=1e-12 * max(float(np.abs(w).max()), 1e-300)):
            return ("depthwise_channel_order", f"the depthwise kernel's output channels are ordered m * {cin} + c "
                    f"(multiplier-major) in the port; Keras and torch's groups=in order them c * {mult} + m",
                    "convert the (k, in, mult) kernel with kernel.reshape(k, in * mult).T[:, None, :]",
                    KERAS_DEPTHWISE_ORDER)
    return None


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind not in ("conv1d", "depthwise_conv1d", "separable_conv1d"):
        return out
    out += _same_padding_rule(kind, ref, port)
    dw = port.get("depthwise") if kind == "separable_conv1d" else None
    k, d = _one(ref.get("kernel_size")), _one(ref.get("dilation_rate")) or 1
    src = dw if isinstance(dw, dict) else port
    pk, pd = _one(src.get("kernel_size")), _one(src.get("dilation")) or 1
    rs, ps = _one(ref.get("strides")) or 1, _one(src.get("stride"))
    if rs and ps and int(rs) != int(ps):
        out.append(("stride", f"stride {ps} in the port, {rs} in the reference", f"stride={rs}", ""))
    rg, pg = ref.get("groups"), port.get("groups")
    if kind == "conv1d" and rg is not None and pg is not None and int(rg) != int(pg):
        out.append(("groups", f"groups={pg} in the port, {rg} in the reference", f"groups={rg}",
                    "the kernel shapes differ, so the reference's weights cannot be loaded"))
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


SEQ_CLASSES = ("Conv1D", "Convolution1D", "SeparableConv1D", "SeparableConvolution1D", "DepthwiseConv1D",
               "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D",
               "ZeroPadding1D", "Cropping1D")


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls in SEQ_CLASSES and cfg.get("data_format") == "channels_first":
        return f"{cls}(data_format='channels_first') is not yet supported (channels-last sequences only)"
    if cls in ("SeparableConv1D", "SeparableConvolution1D", "DepthwiseConv1D") and \
            _one(cfg.get("dilation_rate")) not in (None, 1) and _one(cfg.get("strides")) not in (None, 1):
        return f"{cls} with both strides and dilation_rate > 1 is not yet supported"
    if cls in ("GlobalMaxPooling1D", "GlobalMaxPool1D") and cfg.get("keepdims"):
        return f"{cls}(keepdims=True) is not yet supported"
    return None


FAMILY = Family(
    name="conv1d",
    summary="Conv1D (valid, same at any stride, causal, dilation, groups), DepthwiseConv1D, SeparableConv1D, "
            "MaxPooling1D, AveragePooling1D, GlobalMaxPooling1D (+ ZeroPadding1D, Cropping1D) on (N, L, C)",
    keras_classes={"Conv1D": "conv1d", "Convolution1D": "conv1d", "MaxPooling1D": "maxpool",
                   "MaxPool1D": "maxpool", "AveragePooling1D": "avgpool", "AvgPool1D": "avgpool",
                   "DepthwiseConv1D": "depthwise_conv1d", "SeparableConv1D": "separable_conv1d",
                   "SeparableConvolution1D": "separable_conv1d", "GlobalMaxPooling1D": "global_maxpool",
                   "GlobalMaxPool1D": "global_maxpool", "ZeroPadding1D": "other", "Cropping1D": "other"},
    torch_classes={"Conv1d": "conv1d", "Conv1dSame": "conv1d", "MaxPool1d": "maxpool", "AvgPool1d": "avgpool",
                   "AdaptiveMaxPool1d": "global_maxpool", "AdaptiveAvgPool1d": "gap"},
    weighted=("conv1d", "depthwise_conv1d", "separable_conv1d"),
    converter="weight_converters.conv1d",
    conventions=(
        Named("layout", "channels-last (N, L, C)", "channels-first (N, C, L)", "keras/src/layers/convolutional/"
              "base_conv.py (data_format); torch/nn/modules/conv.py"),
        Named("kernel", "(k, in, out)", "(out, in, k)", "keras/src/layers/convolutional/base_conv.py"),
        Named("causal padding", KERAS_CAUSAL_PADDING, "none built in: F.pad left", "keras/src/layers/convolutional/"
              "base_conv.py"),
        Named("'same' (even kernel, stride > 1)", TF_SAME_1D,
              "padding='same' agrees at stride 1 (refused above); padding=p is symmetric",
              "tensorflow/python/ops/nn_ops.py; torch/nn/modules/conv.py"),
        Named("depthwise channel order", KERAS_DEPTHWISE_ORDER, "Conv1d(groups=in): output c * mult + m",
              "keras/src/layers/convolutional/base_depthwise_conv.py; torch/nn/modules/conv.py"),
        Named("separable conv", KERAS_SEPARABLE_1D, "depthwise Conv1d(groups=in) + Conv1d(kernel 1)",
              "keras/src/layers/convolutional/base_separable_conv.py; torch/nn/modules/conv.py"),
    ),
    keras_keys=("padding", "kernel_size", "dilation_rate", "strides", "groups", "depth_multiplier"),
    torch_attrs=("kernel_size", "dilation", "padding", "stride", "groups", "tf_padding"),
    torch_info=_torch_info,
    rules=(_rules,),
    refuse=_refuse,
    probes=(_depthwise_probe,),
    kinds=("conv1d", "depthwise_conv1d", "separable_conv1d"),
)
