"""3-D convolution and pooling on volumes: Conv3D, MaxPooling3D, AveragePooling3D, GlobalAveragePooling3D,
GlobalMaxPooling3D (+ ZeroPadding3D, Cropping3D, UpSampling3D, which carry no weights) <-> nn.Conv3d /
nn.MaxPool3d / nn.AvgPool3d / nn.AdaptiveAvgPool3d(1) / nn.AdaptiveMaxPool3d(1) / nn.Upsample.

Keras is channels-last (N, D, H, W, C), torch channels-first (N, C, D, H, W): the reference's input and its
activations are moved to NCDHW before they meet the port (``parity.core.tensors.nhwc_to_nchw`` handles 5-D
tensors like 4-D ones), so a port written the natural torch way is compared as it computes. Layout of the
kernel: ``weight_converters/conv3d.py``. TF 'same' (conv and pooling) pads ``pad_total // 2`` before and the
extra one after on every axis (back, bottom, right): ``ported_torch.layers3d.Conv3dSame`` / ``MaxPool3dSame`` /
``AvgPool3dSame`` do that in torch."""
from __future__ import annotations

import itertools
import os

import numpy as np

from parity.core.families.base import Family, Named, RuleHit

KERAS_LAYOUT_NDHWC = "channels-last (N, D, H, W, C)"
"""Keras' default ``data_format='channels_last'`` for Conv3D and the 3-D poolings (keras/src/layers/convolutional/
base_conv.py, keras/src/layers/pooling/base_pooling.py); torch Conv3d / MaxPool3d read (N, C, D, H, W)
(torch/nn/modules/conv.py, torch/nn/modules/pooling.py)."""
TORCH_LAYOUT_NCDHW = "channels-first (N, C, D, H, W)"
"""torch/nn/modules/conv.py (``Conv3d``: input (N, C_in, D, H, W))."""
KERAS_CONV3D_KERNEL = "(kd, kh, kw, in/groups, out)"
"""keras/src/layers/convolutional/base_conv.py: ``kernel_shape = self.kernel_size + (input_channel // groups,
self.filters)``."""
TORCH_CONV3D_WEIGHT = "(out, in/groups, kd, kh, kw)"
"""torch/nn/modules/conv.py: ``Conv3d.weight`` (out_channels, in_channels / groups, kernel_size[0..2])."""
TF_SAME_3D = ("pad_total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) per axis: pad_total // 2 before, "
              "the extra one after (back, bottom, right)")
"""TF 'same' (tensorflow/python/ops/nn_ops.py, ``_get_padding`` / the conv3d and max_pool3d kernels; Keras 3
delegates to them: keras/src/backend/tensorflow/nn.py ``conv`` / ``max_pool``). Odd kernel, stride 1: symmetric
(torch padding=k // 2 agrees). Even kernel, or stride 2 on an even size: asymmetric, and no torch ``padding=p``
(symmetric by construction, torch/nn/modules/conv.py) reproduces it; F.pad the extra one after, then pad 0."""
TF_POOL_SAME_3D = ("padding='same' pools over the TF 'same' window (extra cell after); padded cells never win a "
                   "max and are left out of an average")
"""keras/src/layers/pooling/max_pooling3d.py and average_pooling3d.py (TF ``max_pool3d`` / ``avg_pool3d`` with
padding 'SAME'); torch MaxPool3d(padding=p) pads symmetrically and AvgPool3d counts padded cells unless
``count_include_pad=False`` (torch/nn/modules/pooling.py)."""

TF_POOL3D_DTYPES = ("float16", "bfloat16", "float32")
"""The dtypes TensorFlow's MaxPool3D / AvgPool3D kernels accept (their op registrations, tensorflow/core/kernels/
pooling_ops_3d.cc; measured: ``tf.nn.max_pool3d`` on float64 raises "Value for attr 'T' of double is not in the
list of allowed values"). A Keras MaxPooling3D / AveragePooling3D therefore cannot run a float64 reference on the
TensorFlow backend: such a check is refused up front (use float32)."""

CONV_CLASSES = ("Conv3D", "Convolution3D")
POOL_CLASSES = ("MaxPooling3D", "MaxPool3D", "AveragePooling3D", "AvgPool3D")


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF 'same' along one axis (:data:`TF_SAME_3D`)."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _triple(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        v = tuple(int(x) for x in v)
        return v if len(v) == 3 else (v * 3 if len(v) == 1 else None)
    return (int(v),) * 3


def _port_pads(port: dict):
    """The port's padding as (pd, ph, pw), the string 'same' / 'valid', or None when unknown."""
    p = port.get("padding")
    if isinstance(p, str):
        return p
    return _triple(p)


def _want_pads(ref: dict, kernel, stride, dilation=(1, 1, 1)):
    inp = ref.get("input_shape")
    if not (kernel and stride and inp and len(inp) == 4 and all(isinstance(d, int) for d in inp[:3])):
        return None
    return [tf_same_pads(inp[i], kernel[i], stride[i], dilation[i]) for i in range(3)]


def _geometry(ref_k, ref_s, port_k, port_s, noun: str) -> list[RuleHit]:
    out: list[RuleHit] = []
    if ref_k and port_k and ref_k != port_k:
        out.append(("kernel_size", f"{noun} size {list(port_k)} in the port, {list(ref_k)} in the reference",
                    f"kernel_size={tuple(ref_k)}", ""))
    if ref_s and port_s and ref_s != port_s:
        out.append(("stride", f"{noun} stride {list(port_s)} in the port, {list(ref_s)} in the reference",
                    f"stride={tuple(ref_s)}", ""))
    return out


def _conv_rules(ref: dict, port: dict) -> list[RuleHit]:
    k, s = _triple(ref.get("kernel_size")), _triple(ref.get("strides")) or (1, 1, 1)
    d = _triple(ref.get("dilation_rate")) or (1, 1, 1)
    pk, ps = _triple(port.get("kernel_size")), _triple(port.get("stride"))
    pd = _triple(port.get("dilation")) or (1, 1, 1)
    out = _geometry(k, s, pk, ps, "kernel")
    if d != pd:
        out.append(("dilation", f"dilation {list(pd)} in the port, {list(d)} in the reference", f"dilation={d}", ""))
    rb, pb = ref.get("use_bias"), port.get("has_bias")
    if rb is not None and pb is not None and bool(rb) != bool(pb):
        out.append(("conv_bias", f"Conv3d bias {'present in the port only' if pb else 'missing in the port'}",
                    f"construct it with bias={bool(rb)}", ""))
    pad = _port_pads(port)
    if ref.get("padding") == "same" and not port.get("tf_padding") and pad != "same":
        want = _want_pads(ref, k, s, d)
        if want is not None and isinstance(pad, tuple) and any(w != (pad[i], pad[i]) for i, w in enumerate(want)):
            asym = [i for i, w in enumerate(want) if w[0] != w[1]]
            where = (" (asymmetric on " + ", ".join("DHW"[i] for i in asym)
                     + ": the extra cell goes after, back/bottom/right)") if asym else ""
            out.append(("conv_padding", f"Conv3d padding={list(pad)} (symmetric) where Keras Conv3D padding='same' "
                        f"(kernel {list(k)}, stride {list(s)}) pads {want} (before, after) per (D, H, W) on a "
                        f"{tuple(ref['input_shape'][:3])} input{where}: every output window is shifted",
                        "use ported_torch.layers3d.Conv3dSame, or F.pad(x, (w0, w1, h0, h1, d0, d1)) then "
                        "Conv3d(padding=0)", TF_SAME_3D))
    if ref.get("padding") == "valid" and pad not in (None, "valid", (0, 0, 0)):
        out.append(("conv_padding", f"Conv3d padding={pad if isinstance(pad, str) else list(pad)} in the port, "
                    "'valid' in the reference", "use padding=0", ""))
    return out


def _pool_rules(ref: dict, port: dict) -> list[RuleHit]:
    k = _triple(ref.get("pool_size"))
    s = _triple(ref.get("strides")) or k
    pk = _triple(port.get("kernel_size"))
    ps = _triple(port.get("stride")) or pk
    out = _geometry(k, s, pk, ps, "pool")
    pad = _port_pads(port)
    if ref.get("padding") == "same" and not port.get("tf_padding"):
        want = _want_pads(ref, k, s)
        if want is not None and isinstance(pad, tuple) and any(w != (pad[i], pad[i]) for i, w in enumerate(want)):
            out.append(("pool_padding", f"{port.get('class', 'pool')} padding={list(pad)} where Keras "
                        f"{ref.get('class', 'pooling')}(padding='same') (pool {list(k)}, stride {list(s)}) pads "
                        f"{want} (before, after) per (D, H, W) on a {tuple(ref['input_shape'][:3])} input: "
                        + ("'valid' pooling drops the last window" if not any(pad) else
                           "symmetric padding shifts every window"),
                        "use ported_torch.layers3d.MaxPool3dSame / AvgPool3dSame, or F.pad the extra cell after "
                        "(-inf for max) then pool with padding=0", TF_POOL_SAME_3D))
    if ref.get("padding") == "valid" and isinstance(pad, tuple) and any(pad):
        out.append(("pool_padding", f"pool padding={list(pad)} in the port, 'valid' in the reference",
                    "use padding=0", ""))
    if ref.get("class", "").startswith("Av") and ref.get("padding") == "same" and not port.get("tf_padding") \
            and isinstance(pad, tuple) and any(pad) and port.get("count_include_pad", True):
        out.append(("pool_padding", "AvgPool3d counts the padded cells (count_include_pad=True); Keras 'same' "
                    "averages over the real cells only", "AvgPool3d(..., count_include_pad=False) or "
                    "ported_torch.layers3d.AvgPool3dSame", TF_POOL_SAME_3D))
    return out


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    if kind == "conv3d":
        return _conv_rules(ref, port)
    if kind == "pool3d":
        return _pool_rules(ref, port)
    return []


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= 1e-6 * max(float(np.max(np.abs(b))), 1e-300)))


def _layout_probe(kind: str, ev: dict):
    """A Conv3d weight whose spatial axes are permuted (a hand-written ``kernel.transpose`` with d and h swapped)
    or that is the Keras kernel reshaped instead of transposed."""
    w, g = (ev.get("want") or {}).get("weight"), (ev.get("got") or {}).get("weight")
    if kind != "conv3d" or w is None or g is None or _same(g, w):
        return None
    w, g = np.asarray(w), np.asarray(g)
    names = ("kd", "kh", "kw")
    for perm in itertools.permutations(range(3)):
        if perm == (0, 1, 2):
            continue
        cand = w.transpose((0, 1) + tuple(2 + p for p in perm))
        if _same(g, cand):
            got = ", ".join(names[p] for p in perm)
            return ("conv_layout", f"the Conv3d weight's spatial axes are permuted: the port holds (out, in, {got}) "
                    "of the converted (out, in, kd, kh, kw) kernel", "convert the Keras kernel (kd, kh, kw, in, out) "
                    "with kernel.transpose(4, 3, 0, 1, 2)", f"port weight == converted weight with axes (0, 1, "
                    f"{', '.join(str(2 + p) for p in perm)}); {KERAS_CONV3D_KERNEL} -> {TORCH_CONV3D_WEIGHT}")
    keras_kernel = w.transpose(2, 3, 4, 1, 0)
    if g.size == keras_kernel.size and _same(g.reshape(keras_kernel.shape), keras_kernel):
        return ("conv_layout", f"the Conv3d weight is the Keras kernel {tuple(keras_kernel.shape)} reshaped to "
                f"{tuple(g.shape)}, not permuted", "convert with kernel.transpose(4, 3, 0, 1, 2)",
                "port weight reshaped back equals the Keras kernel")
    return None


def _dtype_name(cfg: dict) -> str:
    d = cfg.get("dtype")
    if isinstance(d, dict):
        d = (d.get("config") or {}).get("name", d)
    return str(d or "")


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls in POOL_CLASSES and "float64" in _dtype_name(cfg) and \
            os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        return (f"{cls} in float64 is not yet supported (TensorFlow's 3-D pooling kernels take only "
                f"{', '.join(TF_POOL3D_DTYPES)}): check this model in float32 (--dtype float32)")
    if cls in CONV_CLASSES + POOL_CLASSES + ("GlobalAveragePooling3D", "GlobalAvgPool3D", "GlobalMaxPooling3D",
                                             "GlobalMaxPool3D", "ZeroPadding3D", "Cropping3D", "UpSampling3D") \
            and cfg.get("data_format") == "channels_first":
        return f"{cls}(data_format='channels_first') is not yet supported (channels-last volumes only)"
    if cls in CONV_CLASSES and cfg.get("groups", 1) not in (1, None):
        return "Conv3D(groups>1) is not yet supported"
    if cls in ("GlobalAveragePooling3D", "GlobalAvgPool3D", "GlobalMaxPooling3D", "GlobalMaxPool3D") \
            and cfg.get("keepdims"):
        return f"{cls}(keepdims=True) is not yet supported"
    return None


FAMILY = Family(
    name="conv3d",
    summary="Conv3D, MaxPooling3D, AveragePooling3D, Global{Average,Max}Pooling3D (+ ZeroPadding3D, Cropping3D, "
            "UpSampling3D) on (N, D, H, W, C)",
    keras_classes={"Conv3D": "conv3d", "Convolution3D": "conv3d", "MaxPooling3D": "pool3d", "MaxPool3D": "pool3d",
                   "AveragePooling3D": "pool3d", "AvgPool3D": "pool3d", "GlobalAveragePooling3D": "gap",
                   "GlobalAvgPool3D": "gap", "GlobalMaxPooling3D": "global_maxpool",
                   "GlobalMaxPool3D": "global_maxpool", "ZeroPadding3D": "other", "Cropping3D": "other",
                   "UpSampling3D": "upsample"},
    torch_classes={"Conv3d": "conv3d", "MaxPool3d": "pool3d", "AvgPool3d": "pool3d", "MaxPool3dSame": "pool3d",
                   "AvgPool3dSame": "pool3d", "AdaptiveAvgPool3d": "gap", "AdaptiveMaxPool3d": "global_maxpool"},
    weighted=("conv3d",),
    converter="weight_converters.conv3d",
    conventions=(
        Named("volume layout", KERAS_LAYOUT_NDHWC, TORCH_LAYOUT_NCDHW,
              "keras/src/layers/convolutional/base_conv.py (data_format); torch/nn/modules/conv.py"),
        Named("Conv3D kernel", KERAS_CONV3D_KERNEL, TORCH_CONV3D_WEIGHT,
              "keras/src/layers/convolutional/base_conv.py; torch/nn/modules/conv.py"),
        Named("'same' 3-D conv", TF_SAME_3D, "padding=p is symmetric; padding='same' only for stride 1",
              "tensorflow/python/ops/nn_ops.py; torch/nn/modules/conv.py"),
        Named("'same' 3-D pooling", TF_POOL_SAME_3D, "MaxPool3d / AvgPool3d padding=p symmetric (count_include_pad)",
              "keras/src/layers/pooling/max_pooling3d.py; torch/nn/modules/pooling.py"),
    ),
    keras_keys=("padding", "kernel_size", "dilation_rate", "strides", "pool_size", "use_bias"),
    torch_attrs=("kernel_size", "stride", "dilation", "padding", "tf_padding", "count_include_pad"),
    rules=(_rules,),
    refuse=_refuse,
    probes=(_layout_probe,),
    kinds=("conv3d", "pool3d", "global_maxpool"),
)
