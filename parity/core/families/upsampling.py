"""Transposed convolution and up-sampling: Conv2DTranspose / Conv1DTranspose <-> ConvTranspose2d / ConvTranspose1d
(TF "same" as a crop), UpSampling2D <-> nn.Upsample / F.interpolate (nearest, or bilinear with half-pixel centres),
UpSampling1D <-> nn.Upsample(scale_factor, mode='nearest') on (N, C, L), ZeroPadding2D and Cropping2D (no
weights). Layout: ``weight_converters/transposed.py``."""
from __future__ import annotations

import numpy as np

from parity.core.families.base import Family, Named, RuleHit

CONV_TRANSPOSE_SAME = (
    "Keras Conv2DTranspose padding='same' gives out = in * stride and crops (k - s) // 2 at the start of the "
    "full (in - 1) * s + k output (the adjoint of TF 'same', tensorflow/python/ops/nn_ops.py conv2d_transpose); "
    "torch ConvTranspose2d(padding=p, output_padding=op) crops p at the start: equal only when p = (k - s) // 2 "
    "and op = 2p + s - k >= 0 (odd k - s: no torch padding does it; crop by hand)")
KERAS_BILINEAR_HALF_PIXEL = "half-pixel centres (align_corners=False)"
"""keras UpSampling2D(interpolation='bilinear') resizes with tf.image.resize (half_pixel_centers=True,
keras/src/layers/reshaping/up_sampling2d.py); torch F.interpolate(mode='bilinear', align_corners=False) agrees,
align_corners=True does not."""


KERAS_UPSAMPLING1D_REPEAT = "each step repeated size times (x.repeat(size, axis=1))"
"""keras/src/layers/reshaping/up_sampling1d.py (``ops.repeat(inputs, self.size, axis=1)``: no interpolation);
torch nn.Upsample(scale_factor=size, mode='nearest') on (N, C, L) repeats the same way (torch/nn/modules/
upsampling.py), mode='linear' interpolates between steps."""
CONV_TRANSPOSE_1D_SAME = (
    "Keras Conv1DTranspose padding='same' gives out = in * stride and crops (k - s) // 2 at the start of the full "
    "(in - 1) * s + k output (keras/src/layers/convolutional/conv1d_transpose.py; the adjoint of TF 'same', "
    "tensorflow/python/ops/nn_ops.py conv1d_transpose); torch ConvTranspose1d(padding=p, output_padding=op) crops p "
    "at the start and adds op at the end: equal only when p = (k - s) // 2 and op = 2p + s - k")


def same_transpose_crop(k: int, s: int) -> tuple[int, int | None]:
    """(torch padding, output_padding) equal to Keras 'same' for kernel ``k`` and stride ``s``; output_padding
    None when no torch padding reproduces it (odd k - s)."""
    p = max(k - s, 0) // 2
    op = 2 * p + s - k
    return p, (op if 0 <= op < s else None)


def _one(v):
    return v[0] if isinstance(v, (list, tuple)) and v else v


def _pair(v):
    if v is None:
        return None
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind == "conv2d_transpose" and ref.get("padding") == "same" and port.get("class") == "ConvTranspose2d":
        k, s = _pair(ref.get("kernel_size")), _pair(ref.get("strides"))
        p, op = _pair(port.get("padding")), _pair(port.get("output_padding")) or (0, 0)
        if k and s and p is not None:
            want = [same_transpose_crop(k[i], s[i]) for i in (0, 1)]
            if any(w[1] is None or (p[i], op[i]) != w for i, w in enumerate(want)):
                fix = ("ConvTranspose2d(padding=%d, output_padding=%d)" % want[0] if want[0][1] is not None else
                       f"ConvTranspose2d(padding=0) then crop out[..., :{s[0]}*H, :{s[1]}*W] (k - s odd)")
                out.append(("conv_transpose_same", f"ConvTranspose2d padding={list(p)}, output_padding={list(op)} "
                            f"for Keras 'same' (kernel {k}, stride {s}): the output window is shifted", fix,
                            CONV_TRANSPOSE_SAME))
    if kind == "conv1d_transpose" and ref.get("padding") == "same" and port.get("class") == "ConvTranspose1d":
        k, st = _one(ref.get("kernel_size")), _one(ref.get("strides")) or 1
        p, op = _one(port.get("padding")), _one(port.get("output_padding")) or 0
        if k and p is not None and not isinstance(p, str):
            want = same_transpose_crop(int(k), int(st))
            if want[1] is None or (int(p), int(op)) != want:
                fix = ("ConvTranspose1d(padding=%d, output_padding=%d)" % want if want[1] is not None else
                       f"ConvTranspose1d(padding=0) then crop out[..., {(int(k) - int(st)) // 2}:"
                       f"{(int(k) - int(st)) // 2} + {st} * L] (k - s odd)")
                out.append(("conv_transpose_same", f"ConvTranspose1d padding={p}, output_padding={op} for Keras "
                            f"Conv1DTranspose padding='same' (kernel {k}, stride {st}): the output window is "
                            f"{'longer' if int(op) - 2 * int(p) > int(st) - int(k) else 'shifted or shorter'}",
                            fix, CONV_TRANSPOSE_1D_SAME))
    if kind == "upsample" and ref.get("class") == "UpSampling1D":
        size, sf, pm = _one(ref.get("size")), _one(port.get("scale_factor")), port.get("mode")
        if pm and pm != "nearest":
            out.append(("upsample_mode", f"nn.Upsample mode={pm!r} in the port; Keras UpSampling1D repeats each "
                        "step (no interpolation)", f"nn.Upsample(scale_factor={size}, mode='nearest')",
                        KERAS_UPSAMPLING1D_REPEAT))
        if size and sf and abs(float(sf) - float(size)) > 1e-12:
            out.append(("upsample_scale", f"scale_factor={sf} in the port, size={size} in the reference",
                        f"nn.Upsample(scale_factor={size})", ""))
        return out
    if kind == "upsample":
        ri, pm = ref.get("interpolation"), port.get("mode")
        if ri and pm and {"nearest": "nearest", "bilinear": "bilinear"}.get(ri) != pm:
            out.append(("upsample_mode", f"nn.Upsample mode={pm!r} in the port, interpolation={ri!r} in the "
                        "reference", f"nn.Upsample(scale_factor=..., mode={ri!r})", ""))
        elif ri == "bilinear" and port.get("align_corners"):
            out.append(("upsample_align_corners", "align_corners=True in the port; Keras bilinear resizing uses "
                        "half-pixel centres", "align_corners=False", KERAS_BILINEAR_HALF_PIXEL))
    return out


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= 1e-6 * max(float(np.max(np.abs(b))), 1e-300)))


def _flip_probe(kind: str, ev: dict):
    """A transposed-conv kernel rotated by 180 degrees (the belief that a transposed conv is a conv with the
    flipped kernel): both frameworks apply the adjoint of a correlation, no flip."""
    w, g = (ev.get("want") or {}).get("weight"), (ev.get("got") or {}).get("weight")
    if kind not in ("conv2d_transpose", "conv1d_transpose") or w is None or g is None or _same(g, w):
        return None
    if kind == "conv1d_transpose":
        if _same(g, np.asarray(w)[..., ::-1]):
            return ("conv_transpose_flipped", "the transposed-conv kernel is reversed along k in the port",
                    "copy kernel.transpose(2, 1, 0) without flipping", "port weight == converted weight flipped")
        if np.shape(w)[0] == np.shape(w)[1] and _same(g, np.asarray(w).transpose(1, 0, 2)):
            return ("conv_transpose_layout", "the ConvTranspose1d weight holds (out, in, k), not (in, out, k): the "
                    "Keras (k, out, in) kernel converted like a Conv1D's", "convert with kernel.transpose(2, 1, 0) "
                    "(ConvTranspose1d.weight is (in_channels, out_channels, k))",
                    "port weight == converted weight with in and out swapped; Keras (k, out, in) -> torch (in, out, k)")
        return None
    if _same(g, np.asarray(w)[..., ::-1, ::-1]):
        return ("conv_transpose_flipped", "the transposed-conv kernel is rotated 180 degrees in the port",
                "copy kernel.transpose(3, 2, 0, 1) without flipping", "port weight == converted weight flipped")
    return None


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls == "Conv2DTranspose" and cfg.get("output_padding") is not None:
        return "Conv2DTranspose(output_padding=...) is not yet supported"
    if cls == "Conv2DTranspose" and _pair(cfg.get("dilation_rate")) not in (None, (1, 1)):
        return "Conv2DTranspose with dilation is not yet supported"
    if cls == "Conv1DTranspose" and cfg.get("output_padding") is not None:
        return "Conv1DTranspose(output_padding=...) is not yet supported"
    if cls == "Conv1DTranspose" and _one(cfg.get("dilation_rate")) not in (None, 1):
        return "Conv1DTranspose with dilation is not yet supported"
    if cls in ("Conv1DTranspose", "UpSampling1D") and cfg.get("data_format") == "channels_first":
        return f"{cls}(data_format='channels_first') is not yet supported (channels-last sequences only)"
    return None


FAMILY = Family(
    name="upsampling",
    summary="Conv2DTranspose, Conv1DTranspose, UpSampling2D (nearest, bilinear), UpSampling1D, ZeroPadding2D, "
            "Cropping2D",
    keras_classes={"Conv2DTranspose": "conv2d_transpose", "UpSampling2D": "upsample", "Cropping2D": "other",
                   "Conv1DTranspose": "conv1d_transpose", "Convolution1DTranspose": "conv1d_transpose",
                   "UpSampling1D": "upsample"},
    torch_classes={"ConvTranspose2d": "conv2d_transpose", "Upsample": "upsample", "UpsamplingNearest2d": "upsample",
                   "UpsamplingBilinear2d": "upsample", "ConvTranspose1d": "conv1d_transpose"},
    weighted=("conv2d_transpose", "conv1d_transpose"),
    converter="weight_converters.transposed",
    conventions=(
        Named("transposed kernel", "(kh, kw, out, in)", "(in, out, kh, kw)",
              "keras/src/layers/convolutional/base_conv_transpose.py; torch/nn/modules/conv.py"),
        Named("1-D transposed kernel", "(k, out, in)", "(in, out, k)",
              "keras/src/layers/convolutional/base_conv_transpose.py; torch/nn/modules/conv.py"),
        Named("'same' 1-D transposed conv", CONV_TRANSPOSE_1D_SAME, "padding p, output_padding op",
              "keras/src/layers/convolutional/conv1d_transpose.py; torch/nn/modules/conv.py"),
        Named("UpSampling1D", KERAS_UPSAMPLING1D_REPEAT, "nn.Upsample(scale_factor=size, mode='nearest')",
              "keras/src/layers/reshaping/up_sampling1d.py; torch/nn/modules/upsampling.py"),
        Named("'same' transposed conv", "out = in * s, crop (k - s) // 2 first", "padding p, output_padding op",
              "tensorflow/python/ops/nn_ops.py"),
        Named("bilinear up-sampling", KERAS_BILINEAR_HALF_PIXEL, "F.interpolate(align_corners=False)",
              "keras/src/layers/reshaping/up_sampling2d.py; torch/nn/functional.py"),
    ),
    keras_keys=("interpolation", "output_padding", "cropping", "size"),
    torch_attrs=("mode", "align_corners", "scale_factor", "output_padding"),
    rules=(_rules,),
    refuse=_refuse,
    probes=(_flip_probe,),
    kinds=("conv2d_transpose", "upsample", "conv1d_transpose"),
)
