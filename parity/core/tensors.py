"""Tensor comparison (numpy only), in torch.testing's spirit: max |Δ|, where, how many elements exceed
the allowance, cosine similarity, and the smallest relative tolerance that would have passed. A NaN or Inf on
either side always fails, and the comparison says on which side and how many."""
from __future__ import annotations

import math

import numpy as np

from parity.core.buffers import POOL
from parity.core.results import TensorDiff
from parity.core.spec import StageTolerance


def nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    """Reference activations are NHWC (Keras' channels_last); the port's are NCHW. A volume (N, D, H, W, C) becomes
    (N, C, D, H, W) the same way (``parity.core.families.conv3d``). The same array as
    ``np.ascontiguousarray(a.transpose(...))``, copied in tiles (:func:`_channels_first`)."""
    a = np.asarray(a)
    if a.ndim == 4:
        return _channels_first(a, (0, 3, 1, 2))
    if a.ndim == 5:
        return _channels_first(a, (0, 4, 1, 2, 3))
    return a


#: below this many elements a channels-last -> channels-first copy is numpy's own (the tiles' loop costs more)
TILED_MIN_ELEMENTS = 1 << 16
#: fewer channels than this: numpy's own copy (its reads are short strides already: an RGB image)
TILED_MIN_CHANNELS = 8
#: elements per tile of a tiled transpose (64 KiB of float64: a tile and its transpose stay in the L2 cache)
TILE_ELEMENTS = 1 << 13


def _channels_first(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``np.ascontiguousarray(a.transpose(axes))`` for a channels-last ``a``, bit for bit (a copy moves values,
    it computes nothing). numpy copies a transposed array element by element with a stride of C elements on
    one side, which misses the cache on every read for a large activation (29 ms for 2x147x147x128 float64);
    done as (positions, C) -> (C, positions) matrix transposes of a few hundred positions at a time it is
    2-2.5x faster. A small array, a non-contiguous one, or one whose transposed view numpy already calls
    contiguous (C = 1 or a single position: that view is returned, not copied) takes numpy's own path, and so does
    one with fewer than :data:`TILED_MIN_CHANNELS` channels."""
    n, c = a.shape[0], a.shape[-1]
    positions = a.size // max(n * c, 1)
    if a.size < TILED_MIN_ELEMENTS or c < TILED_MIN_CHANNELS or positions == 1 or not a.flags.c_contiguous:
        return np.ascontiguousarray(a.transpose(axes))
    out = np.empty(tuple(a.shape[i] for i in axes), dtype=a.dtype)
    src = a.reshape(n, positions, c)
    dst = out.reshape(n, c, positions)
    step = max(16, min(512, TILE_ELEMENTS // c))
    for i in range(n):
        s, d = src[i], dst[i]
        for j in range(0, positions, step):
            d[:, j:j + step] = s[j:j + step].T
    return out


def hwc_flat_to_chw_flat(a: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Reorder a Keras Flatten output (HWC order) to torch's nn.Flatten order (CHW); a volume's ``chw`` is
    (C, D, H, W): DHWC order -> CDHW."""
    c, spatial = chw[0], tuple(chw[1:])
    n = a.shape[0]
    k = len(spatial)
    return np.ascontiguousarray(a.reshape((n, *spatial, c)).transpose(0, k + 1, *range(1, k + 1)).reshape(n, -1))


#: ``TensorDiff.extra`` keys: how many elements are NaN or +-Inf on each side (set only when some are)
NON_FINITE_KEYS = ("non_finite_reference", "non_finite_port")


#: ``TensorDiff.extra`` key: how many elements were not judged (``tensor_diff(skip=...)``)
NOT_JUDGED_KEY = "not_judged"


def tensor_diff(path: str, ref, port, tol: StageTolerance, note: str = "", scale_floor: float = 0.0,
                skip=None, skip_why: str = "") -> TensorDiff:
    """Compare two arrays: max |ref - port| against ``tol.allowed(scale)``, scale = max |ref| (or
    ``scale_floor`` when larger: see :func:`layer_scale_floor`).

    ``skip``: flat indices of elements not judged (the float32 sign-noise policy of
    :class:`parity.core.spec.StageTolerance`): their difference counts as 0 and the norm-wise ratio is taken over
    the judged elements; the note says how many and ``skip_why`` (``extra[NOT_JUDGED_KEY]`` holds the count).

    A NaN or +-Inf on either side fails the tensor, even where both sides agree on it (a NaN equal to a NaN
    proves nothing): ``max_abs`` is NaN, every non-finite element counts as mismatched, ``index`` is the first
    of them, the note says which side holds how many, and ``extra`` carries the counts
    (:data:`NON_FINITE_KEYS`, read back by :func:`non_finite_counts`)."""
    ref = np.asarray(ref)
    port = np.asarray(port)
    if ref.shape != port.shape:
        return TensorDiff(path=path, shape=tuple(ref.shape), max_abs=math.inf, scale=_scale(ref), allowed=0.0,
                          rtol=tol.rtol, mismatched=int(max(ref.size, 1)), numel=int(ref.size),
                          note=f"shape mismatch: reference {tuple(ref.shape)}, port {tuple(port.shape)}"
                          + (f"; {note}" if note else ""))
    r = ref.astype(np.float64, copy=False)
    p = port.astype(np.float64, copy=False)
    # max and min of the reference first: both finite means every element is (a NaN propagates through both),
    # which spares the isfinite passes over the reference
    top = (float(r.max()), float(r.min())) if r.size else (0.0, 0.0)
    r_finite = math.isfinite(top[0]) and math.isfinite(top[1])
    scale = max(max(top[0], -top[1]) if r.size and r_finite else _scale(r), float(scale_floor))
    allowed = tol.allowed(scale)
    if r.size == 0:
        return TensorDiff(path, tuple(r.shape), 0.0, 0.0, allowed, tol.rtol, 0, 0, note=note)
    skipping = skip is not None and len(skip)
    # the port's finiteness is read off |r - p| below (r finite: it is NaN or Inf exactly where p is), unless
    # elements are skipped (a non-finite skipped element still fails the tensor)
    if not r_finite or (skipping and not np.isfinite(p).all()):
        return _non_finite_diff(path, r, p, tol, scale, allowed, note)
    # one temporary the size of the tensor (|r - p|, in place): GOTURN's fc6 is 75 M elements (0.6 GB); in memory
    # used before (parity.core.buffers), given back below
    d = np.subtract(r, p, out=POOL.empty(r.shape, np.float64))
    np.abs(d, out=d)
    extra, skipped_sq = {}, 0.0
    if skipping:
        skip = np.asarray(skip, dtype=np.int64)
        d.reshape(-1)[skip] = 0.0
        skipped_sq = float(np.sum(np.square(r.reshape(-1)[skip])))
        extra[NOT_JUDGED_KEY] = int(skip.size)
        why = f"{skip.size} of {r.size} elements not judged" + (f": {skip_why}" if skip_why else "")
        note = f"{note}; {why}" if note else why
    flat = int(np.argmax(d))  # the first NaN, if any: argmax propagates it
    max_abs = float(d.reshape(-1)[flat])
    if not math.isfinite(max_abs) and not np.isfinite(p).all():  # the port holds NaN or Inf (not an overflow)
        POOL.give(d)
        del d
        return _non_finite_diff(path, r, p, tol, scale, allowed, note)
    idx = np.unravel_index(flat, r.shape)
    # nothing exceeds the allowance when the largest difference does not: no comparison pass
    mismatched = int(np.count_nonzero(d > allowed)) if max_abs > allowed else 0
    norm_r = float(np.linalg.norm(r.reshape(-1)))  # once, for the norm-wise ratio and the cosine
    norm_rel = _norm_rel(r, d, scale_floor, skipped_sq, norm_a=norm_r)
    POOL.give(d)
    del d
    return TensorDiff(path=path, shape=tuple(r.shape), max_abs=max_abs, scale=scale, allowed=allowed,
                      rtol=tol.rtol, mismatched=mismatched, numel=int(r.size),
                      index=tuple(int(i) for i in idx), ref_value=float(r[idx]), port_value=float(p[idx]),
                      cosine=_cosine(r, p, norm_a=norm_r), note=note, extra=extra, norm_rel=norm_rel,
                      norm_rtol=tol.norm_rtol)


def _non_finite_diff(path, r, p, tol, scale, allowed, note) -> TensorDiff:
    """A failed :class:`TensorDiff` for arrays holding NaN or +-Inf on either side (see :func:`tensor_diff`)."""
    bad_r, bad_p = ~np.isfinite(r), ~np.isfinite(p)
    bad = bad_r | bad_p
    idx = np.unravel_index(int(np.argmax(bad)), r.shape)
    with np.errstate(invalid="ignore"):  # Inf - Inf
        d = np.abs(np.where(bad, 0.0, r - p))
    mismatched = int(np.count_nonzero(bad)) + int(np.count_nonzero(d > allowed))
    counts = (int(np.count_nonzero(bad_r)), int(np.count_nonzero(bad_p)))
    text = non_finite_note(counts, (int(np.count_nonzero(np.isnan(r))), int(np.count_nonzero(np.isnan(p)))),
                           int(r.size))
    return TensorDiff(path=path, shape=tuple(r.shape), max_abs=math.nan, scale=scale, allowed=allowed,
                      rtol=tol.rtol, mismatched=mismatched, numel=int(r.size),
                      index=tuple(int(i) for i in idx), ref_value=float(r[idx]), port_value=float(p[idx]),
                      cosine=None, note=f"{text}; {note}" if note else text,
                      extra=dict(zip(NON_FINITE_KEYS, counts)), norm_rel=None, norm_rtol=tol.norm_rtol)


def non_finite_note(counts: tuple[int, int], nans: tuple[int, int], numel: int) -> str:
    """``non-finite values on both sides: reference 512 NaN, port 512 NaN (of 4096 elements)``."""
    parts = []
    for name, n, n_nan in zip(("reference", "port"), counts, nans):
        if n:
            kinds = [f"{c} {k}" for c, k in ((n_nan, "NaN"), (n - n_nan, "Inf")) if c]
            parts.append(f"{name} {' + '.join(kinds)}")
    where = "on both sides" if all(counts) else ("in the reference only" if counts[0] else "in the port only")
    return f"non-finite values {where}: {', '.join(parts)} (of {numel} elements)"


def non_finite_counts(diff: TensorDiff) -> tuple[int, int] | None:
    """(reference, port) counts of NaN/Inf elements of a compared tensor, or None when both sides are finite.
    Read from ``diff.extra`` (set by :func:`tensor_diff`), else from the two values at ``diff.index`` (a diff
    whose ``extra`` a later stage replaced)."""
    extra = diff.extra or {}
    if any(k in extra for k in NON_FINITE_KEYS):
        counts = tuple(int(extra.get(k) or 0) for k in NON_FINITE_KEYS)
        return counts if any(counts) else None
    vals = (diff.ref_value, diff.port_value)
    counts = tuple(int(v is not None and not math.isfinite(v)) for v in vals)
    return counts if any(counts) else None


def non_finite_side(counts: tuple[int, int]) -> str:
    """``"reference"``, ``"port"`` or ``"both"``: where the non-finite values of a tensor are."""
    return "both" if all(counts) else ("reference" if counts[0] else "port")


def _norm_rel(a: np.ndarray, absdiff: np.ndarray, floor: float = 0.0, skipped_sq: float = 0.0,
              norm_a: float | None = None) -> float:
    """||a - b|| / ||a||, given |a - b| (finite inputs). ``floor``: the layer-scale floor of
    :func:`layer_scale_floor`; a norm is at least its largest element, so ||a|| is taken as at least ``floor``
    (an analytically-zero gradient, such as attention's key bias under the softmax, is rounding noise alone).
    ``skipped_sq``: the squared norm of ``a`` over elements not judged (their ``absdiff`` already 0), left out.
    ``norm_a``: ||a||, already computed."""
    na = float(np.linalg.norm(a.reshape(-1))) if norm_a is None else norm_a
    if skipped_sq:
        na = math.sqrt(max(na * na - skipped_sq, 0.0))
    na = max(na, float(floor))
    nd = float(np.linalg.norm(absdiff.reshape(-1)))
    if na == 0.0:
        return 0.0 if nd == 0.0 else math.inf
    return nd / na


def _scale(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    finite = a[np.isfinite(a)] if not np.isfinite(a).all() else a
    # max |a| without an |a| temporary
    return float(max(finite.max(), -finite.min())) if finite.size else 0.0


def _cosine(a: np.ndarray, b: np.ndarray, norm_a: float | None = None) -> float:
    """Cosine similarity of two finite arrays (``norm_a``: ||a||, already computed)."""
    na = float(np.linalg.norm(a.reshape(-1))) if norm_a is None else norm_a
    nb = float(np.linalg.norm(b.reshape(-1)))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.vdot(a.ravel(), b.ravel()) / (na * nb))


#: what a layer-scale floor is, in a TensorDiff's note
LAYER_SCALE_NOTE = ("tolerance relative to the largest {what} of the layer ({scale:.3g}): this tensor's own scale "
                    "({own:.3g}) is rounding noise around an analytically zero value (e.g. a conv bias feeding a "
                    "BatchNorm, whose gradient the mean subtraction cancels)")


def layer_scale_floor(diffs: list[TensorDiff], layer_of, recompute, what: str = "gradient") -> list[TensorDiff]:
    """Re-judge near-zero tensors of a layer against the layer's largest scale.

    A conv bias feeding a BatchNorm (Keras' ``Conv2D`` default ``use_bias=True``) has an analytically zero
    gradient: both frameworks return ~1e-16 noise, and a purely relative tolerance on that tensor alone flags
    two equally correct results. Such a tensor is judged relative to the largest scale among its layer's
    tensors (``layer_of(diff)`` groups them): a real bug in it is still caught whenever it is larger than
    ``rtol`` x that scale (a bias gradient of 1e-3 next to kernel gradients of 0.1 fails at 1e-10).
    ``recompute(diff, floor)`` returns the diff recomputed with that ``scale_floor``; only failing tensors whose
    own scale is below their layer's are recomputed."""
    top: dict[str, float] = {}
    for d in diffs:
        key = layer_of(d)
        if key is not None and math.isfinite(d.scale):
            top[key] = max(top.get(key, 0.0), d.scale)
    out = []
    for d in diffs:
        key = layer_of(d)
        floor = top.get(key, 0.0) if key is not None else 0.0
        if not d.passed and floor > d.scale and math.isfinite(d.max_abs):
            nd = recompute(d, floor)
            note = LAYER_SCALE_NOTE.format(what=what, scale=floor, own=d.scale)
            nd.note = f"{nd.note}; {note}" if nd.note else note
            d = nd
        out.append(d)
    return out
