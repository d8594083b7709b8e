"""The comparison's fast paths give the numbers of its plain definition, bit for bit (issue 15: the debugging
loop's speed may not change a verdict or a number).

- ``tensor_diff``: max/min of the reference instead of isfinite passes, the port's finiteness read off |r - p|,
  no mismatch count when the largest difference is allowed, ||r|| computed once: every field of the
  :class:`TensorDiff` equals the one the plain formulas below give, on finite, NaN, Inf, overflowing, tied,
  float32, skipped and layer-floored tensors;
- ``nhwc_to_nchw``: the tiled copy equals ``np.ascontiguousarray(a.transpose(...))`` (values, dtype, strides, and
  whether it shares memory with its input);
- ``describe_sample``: one mean, one temporary, max|w| as max(max, -min), and remembered results in a
  ``--watch`` session: the same dict as the plain formulas.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from parity.core import tensors
from parity.core.results import TensorDiff
from parity.core.spec import StageTolerance
from parity.diagnosis import initialisation


def plain_diff(path, ref, port, tol, scale_floor=0.0, skip=None) -> TensorDiff:
    """The comparison as first written (the definition the fast path must reproduce)."""
    r = np.asarray(ref).astype(np.float64, copy=False)
    p = np.asarray(port).astype(np.float64, copy=False)
    scale = max(tensors._scale(r), float(scale_floor))
    allowed = tol.allowed(scale)
    if r.size == 0:
        return TensorDiff(path, tuple(r.shape), 0.0, 0.0, allowed, tol.rtol, 0, 0)
    if not (np.isfinite(r).all() and np.isfinite(p).all()):
        return tensors._non_finite_diff(path, r, p, tol, scale, allowed, "")
    d = np.abs(r - p)
    extra, skipped_sq, note = {}, 0.0, ""
    if skip is not None and len(skip):
        d.reshape(-1)[skip] = 0.0
        skipped_sq = float(np.sum(np.square(r.reshape(-1)[skip])))
        extra[tensors.NOT_JUDGED_KEY] = int(len(skip))
        note = f"{len(skip)} of {r.size} elements not judged"
    flat = int(np.argmax(d))
    idx = np.unravel_index(flat, r.shape)
    na = max(math.sqrt(max(float(np.linalg.norm(r.reshape(-1))) ** 2 - skipped_sq, 0.0)) if skipped_sq
             else float(np.linalg.norm(r.reshape(-1))), float(scale_floor))
    nd = float(np.linalg.norm(d.reshape(-1)))
    norm_rel = (0.0 if nd == 0.0 else math.inf) if na == 0.0 else nd / na
    n_r, n_p = float(np.linalg.norm(r.reshape(-1))), float(np.linalg.norm(p.reshape(-1)))
    cosine = (1.0 if n_r == n_p else 0.0) if n_r == 0.0 or n_p == 0.0 else float(
        np.vdot(r.ravel(), p.ravel()) / (n_r * n_p))
    return TensorDiff(path=path, shape=tuple(r.shape), max_abs=float(d.reshape(-1)[flat]), scale=scale,
                      allowed=allowed, rtol=tol.rtol, mismatched=int(np.count_nonzero(d > allowed)),
                      numel=int(r.size), index=tuple(int(i) for i in idx), ref_value=float(r[idx]),
                      port_value=float(p[idx]), cosine=cosine, note=note, extra=extra, norm_rel=norm_rel,
                      norm_rtol=tol.norm_rtol)


def _pairs(rng, shape):
    r = rng.standard_normal(shape)
    yield "equal", r, r.copy()
    yield "noise", r, r + rng.standard_normal(shape) * 1e-12
    yield "off", r, r * 1.01
    yield "ties", r, r + 1e-3 * np.sign(r)
    yield "zeros", np.zeros(shape), np.zeros(shape)
    yield "negzero", -np.zeros(shape), np.zeros(shape)
    yield "float32", r.astype(np.float32), (r + 1e-7).astype(np.float32)
    for what, value, side, at in (("nan port", np.nan, 1, r.size // 2), ("-inf port", -np.inf, 1, r.size - 1),
                                  ("nan ref", np.nan, 0, 0), ("inf ref", np.inf, 0, r.size - 1)):
        pair = [r.copy(), r.copy()]
        pair[side].reshape(-1)[at] = value
        yield what, pair[0], pair[1]
    a, b = r.copy(), r.copy()
    a.reshape(-1)[0], b.reshape(-1)[0] = 1.7e308, -1.7e308  # finite on both sides, |r - p| overflows
    yield "overflow", a, b


SHAPES = [(3,), (2, 5), (2, 4, 4, 3), (1, 1, 1, 8), (2, 3, 3, 1), (2, 2, 3, 3, 4), (2, 16, 24, 96)]
TOLS = [StageTolerance(1e-10), StageTolerance(1e-5, norm_rtol=1e-4), StageTolerance(0.0),
        StageTolerance(1e-10, atol=1e-12)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_diff_equals_its_definition(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    n = 0
    with np.errstate(all="ignore"):
        for kind, r, p in _pairs(rng, shape):
            for tol in TOLS:
                for floor in (0.0, 5.0):
                    for skip in (None, np.array([0, 1])):
                        want = plain_diff("x", r, p, tol, scale_floor=floor, skip=skip)
                        got = tensors.tensor_diff("x", r, p, tol, scale_floor=floor, skip=skip)
                        assert repr(dataclasses.asdict(got)) == repr(dataclasses.asdict(want)), (kind, tol, floor)
                        n += 1
    assert n == 12 * len(TOLS) * 2 * 2


def test_tensor_diff_still_fails_what_it_must():
    """The fast paths keep the verdicts: a NaN in the port (even in a skipped element), an element over the
    allowance, an overflow."""
    r = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    tol = StageTolerance(1e-10)
    p = r.copy()
    p[1, 2, 3] = np.nan
    assert not tensors.tensor_diff("x", r, p, tol).passed
    assert not tensors.tensor_diff("x", r, p, tol, skip=np.array([23])).passed  # the NaN's own index
    p = r.copy()
    p[0, 1, 2] += 1e-6
    d = tensors.tensor_diff("x", r, p, tol)
    assert not d.passed and d.mismatched == 1 and d.index == (0, 1, 2)
    assert tensors.tensor_diff("x", r, r.copy(), tol).mismatched == 0


@pytest.mark.parametrize("shape", [(2, 16, 24, 96), (1, 40, 40, 64), (2, 4, 8, 8, 300), (2, 64, 64, 3),
                                   (2, 3, 3, 1), (1, 1, 1, 2048), (2, 5)], ids=str)
def test_nhwc_to_nchw_equals_numpy_transpose(shape):
    a = np.random.default_rng(0).standard_normal(shape)
    axes = {4: (0, 3, 1, 2), 5: (0, 4, 1, 2, 3)}.get(a.ndim)
    want = np.ascontiguousarray(a.transpose(axes)) if axes else a
    got = tensors.nhwc_to_nchw(a)
    assert got.dtype == want.dtype and got.shape == want.shape and got.strides == want.strides
    assert np.array_equal(got, want)
    assert np.shares_memory(got, a) == np.shares_memory(want, a)
    if a.size >= tensors.TILED_MIN_ELEMENTS and a.shape[-1] >= tensors.TILED_MIN_CHANNELS:
        assert not np.shares_memory(got, a)  # the tiled path ran and wrote a new array
    strided = np.random.default_rng(1).standard_normal((2, 16, 24, 192))[..., ::2]  # not contiguous
    assert np.array_equal(tensors.nhwc_to_nchw(strided), np.ascontiguousarray(strided.transpose(0, 3, 1, 2)))


def plain_sample(w) -> dict:
    """``describe_sample`` as first written."""
    w = np.asarray(w, dtype=np.float64).ravel()
    std = float(w.std())
    if std == 0:
        return {"n": w.size, "std": 0.0, "value": float(w[0]) if np.all(w == w[0]) else None, "dist": "constant"}
    z = (w - w.mean()) / std
    kurt = float(np.mean(z ** 4) - 3.0)
    ratio = float(np.abs(w).max() / std)
    dist = "uniform" if ratio <= 1.8 and kurt < -0.9 else ("truncated" if ratio <= 2.4 and kurt < -0.3 else "normal")
    return {"n": int(w.size), "std": std, "mean": float(w.mean()), "max_over_std": ratio, "kurtosis": kurt,
            "dist": dist, "max": float(np.abs(w).max())}


@pytest.mark.parametrize("remember", [False, True])
def test_describe_sample_equals_its_definition(remember):
    rng = np.random.default_rng(3)
    gens = [rng.standard_normal, lambda s: rng.uniform(-0.1, 0.1, s), np.zeros, lambda s: np.full(s, 0.5),
            lambda s: rng.standard_normal(s).astype(np.float32), lambda s: -np.abs(rng.standard_normal(s)),
            lambda s: np.abs(rng.standard_normal(s))]
    initialisation.remember_samples(remember)
    try:
        for shape in [(3,), (7, 5), (3, 3, 32, 64), (3, 3, 1, 72)]:
            for gen in gens:
                w = gen(shape)
                for _ in range(2):  # the second time from memory when remembering
                    got = initialisation.describe_sample(w)
                    assert repr(got) == repr(plain_sample(w)), shape
                    got["std"] = -1.0  # a caller's change does not reach what is remembered
        if remember:
            assert len(initialisation._SAMPLES) == 4 * len(gens)
    finally:
        initialisation.remember_samples(False)
    assert initialisation._SAMPLES is None


def test_describe_sample_of_a_large_tensor_reads_a_sample_and_tells_the_same():
    """Above SAMPLE_MAX elements the statistics come from a fixed pseudo-random sample: the same distribution
    family and an std within 1 % of the full tensor's, the full element count, the same result every time; a
    tensor that is constant except for a few elements is not called constant."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    for init in (lambda w: nn.init.kaiming_uniform_(w, a=5 ** 0.5), nn.init.kaiming_normal_,
                 lambda w: nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04)):
        w = init(torch.empty(512, 256, 3, 3)).numpy()
        assert w.size > initialisation.SAMPLE_MAX
        got, full = initialisation.describe_sample(w), plain_sample(w)
        assert got["dist"] == full["dist"] and got["n"] == w.size and got["sampled"] == initialisation.SAMPLE_MAX
        assert abs(got["std"] / full["std"] - 1) < 0.01, (got["std"], full["std"])
        assert got == initialisation.describe_sample(w.copy())
    nearly = np.zeros(10 * initialisation.SAMPLE_MAX)
    nearly[12345] = 1.0
    assert initialisation.describe_sample(nearly)["dist"] != "constant"
    assert initialisation.describe_sample(np.full(10 * initialisation.SAMPLE_MAX, 0.5)) == {
        "n": 10 * initialisation.SAMPLE_MAX, "std": 0.0, "value": 0.5, "dist": "constant"}
