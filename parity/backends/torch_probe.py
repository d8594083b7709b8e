"""Behaviour probes of a port module, for structure rules that would otherwise judge it by its constructor
arguments alone. A TF 'same' pool or conv can be written many ways in torch: ``nn.MaxPool2d(3, 2,
ceil_mode=True)`` on an even size (the window that sticks out on the right is TF's (0, 1) pad), a subclass of
``nn.MaxPool2d``/``nn.Conv2d`` that pads in its own ``forward`` (timm's ``MaxPool2dSame``/``Conv2dSame`` style),
``padding='same'``. Their ``padding`` attribute says 0 (or a symmetric p) while the module computes exactly
Keras' layer. :func:`computes_tf_same` runs the module once on the reference layer's input shape and compares
it with TF 'same' written out (pad (before, after) per axis as TensorFlow does, then a 'valid' op); a module that
does not compute it is still judged by its arguments (the padding rules name the fix).
"""
from __future__ import annotations

from typing import Any

#: TensorFlow's 'same' padding per axis (tensorflow/python/ops/nn_ops.py, ``_get_sequence`` / the conv and pool
#: kernels' GetWindowedOutputSize): out = ceil(n / s); total = max((out - 1) * s + (k - 1) * d + 1 - n, 0);
#: before = total // 2, the extra cell after.
TF_SAME_RULE = "out = ceil(n / s); total = max((out - 1) s + (k - 1) d + 1 - n, 0); before = total // 2"

_POOL_CLASSES = ("MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d")
_CONV_CLASSES = ("Conv1d", "Conv2d", "Conv3d")


def _tf_same(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _seq(v, n: int) -> tuple[int, ...] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v if len(v) == n else (v * n if len(v) == 1 else None)


def _base(mod, names) -> str | None:
    import torch

    for name in names:
        cls = getattr(torch.nn, name)
        if isinstance(mod, cls):
            return name
    return None


def computes_tf_same(mod, ref: dict[str, Any], seed: int = 0, prepad=None) -> bool:
    """True when ``mod`` (a torch pool or conv module, or a subclass of one) computes the reference layer's TF
    'same' result on the reference's input shape (``ref``: the layer's structure info: ``input_shape`` channels
    last, ``pool_size`` or ``kernel_size``, ``strides``, ``dilation_rate``). False when it does not, or when the
    probe cannot run (an unknown input size, another kind of module, a forward that raises). ``prepad``: the
    (before, after) pads per spatial axis, in order, the port applies before the module (its parent's F.pad)."""
    import torch
    import torch.nn.functional as F

    if ref.get("padding") != "same":
        return False
    inp = ref.get("input_shape")
    if not inp or not all(isinstance(v, int) and v > 0 for v in inp) or len(inp) not in (2, 3, 4):
        return False
    nd = len(inp) - 1
    spatial, channels = tuple(inp[:-1]), int(inp[-1])
    pool = _base(mod, _POOL_CLASSES)
    conv = None if pool else _base(mod, _CONV_CLASSES)
    if (pool or conv) is None or not (pool or conv).endswith(f"{nd}d"):
        return False
    k = _seq(ref.get("pool_size") if pool else ref.get("kernel_size"), nd)
    s = _seq(ref.get("strides") or 1, nd)
    d = _seq(ref.get("dilation_rate") or 1, nd) if conv else (1,) * nd
    if k is None or s is None or d is None:
        return False
    w = getattr(mod, "weight", None)
    dtype = w.dtype if w is not None else torch.float64
    device = w.device if w is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand((1, channels) + spatial, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype=dtype,
                                                                                           device=device)
    pads = [p for i in reversed(range(nd)) for p in _tf_same(spatial[i], k[i], s[i], d[i])]
    try:
        with torch.no_grad():
            got = mod(F.pad(x, [v for i in reversed(range(0, len(prepad), 2)) for v in prepad[i:i + 2]])
                      if prepad else x)
            if pool and pool.startswith("Max"):
                want = getattr(F, f"max_pool{nd}d")(F.pad(x, pads, value=float("-inf")), k, s)
            elif pool:  # TF averages over the cells inside the input only
                avg = getattr(F, f"avg_pool{nd}d")
                want = avg(F.pad(x, pads), k, s) / avg(F.pad(torch.ones_like(x), pads), k, s)
            else:
                want = getattr(F, f"conv{nd}d")(F.pad(x, pads), mod.weight, mod.bias, s, 0, d, mod.groups)
    except Exception:  # noqa: BLE001  (a module this probe cannot drive: judged by its arguments)
        return False
    if not torch.is_tensor(got) or got.shape != want.shape:
        return False
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    scale = float(want.abs().max()) or 1.0
    return bool(((got - want).abs() <= tol * scale).all())
