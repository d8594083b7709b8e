"""``parity.core.buffers``: large temporaries in memory used before — only what the pool lent comes back to it,
and the numbers computed in recycled memory are the numbers computed in fresh memory."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from parity.core import tensors
from parity.core.background import Background
from parity.core.buffers import BufferPool
from parity.core.spec import StageTolerance, Tap
from parity.stages import forward
from parity.stages.forward import diff_sink

MB = 1 << 20


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_a_buffer_given_back_is_lent_again_in_any_shape_and_dtype():
    pool = BufferPool()
    a = pool.empty((2, 3, 64, 1024), np.float64)  # 3 MB
    assert a.shape == (2, 3, 64, 1024) and a.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable
    where = _address(a)
    assert pool.give(a[:, 1])  # a view of it brings the whole buffer back
    b = pool.empty((512, 1024), np.float32)  # 2 MB of its 3: fits
    assert _address(b) == where and b.shape == (512, 1024) and b.dtype == np.float32
    assert pool.hits == 1 and pool.misses == 1


def test_arrays_the_pool_did_not_lend_are_never_taken():
    pool = BufferPool()
    foreign = np.ones(2 * MB)
    assert not pool.give(foreign) and not pool.give(foreign[10:]) and not pool.give([1.0]) and not pool.give(None)
    a = pool.empty(2 * MB // 8)
    assert not pool.give(np.array(a))  # a copy is not the lent buffer
    assert pool.free_bytes == 0
    assert not np.shares_memory(pool.empty(2 * MB // 8), foreign)
    np.testing.assert_array_equal(foreign, 1.0)


def test_a_buffer_comes_back_once():
    pool = BufferPool()
    a = pool.empty(MB)
    assert pool.give(a)
    assert not pool.give(a)  # no longer lent: a second give would hand the same memory out twice
    assert pool.free_bytes == a.nbytes


def test_small_requests_and_poor_fits_take_fresh_memory():
    pool = BufferPool()
    small = pool.empty(100)
    assert not pool.give(small)  # under POOL_MIN_BYTES: never lent by the pool
    big = pool.empty(8 * MB)  # 64 MB
    assert pool.give(big)
    two_mb = pool.empty(2 * MB // 8)
    assert not np.shares_memory(two_mb, big)  # a 64 MB buffer is not spent on 2 MB (FIT_FRACTION)
    assert _address(pool.empty(8 * MB)) == _address(big)


def test_free_buffers_over_the_bound_are_dropped():
    pool = BufferPool(max_bytes=3 * MB)
    a, b = pool.empty(2 * MB // 8), pool.empty(2 * MB // 8)
    assert pool.give(a)
    assert not pool.give(b)  # 4 MB > 3 MB: b is garbage like any array
    assert pool.free_bytes == 2 * MB
    pool.clear()
    assert pool.free_bytes == 0


def test_threads_never_get_the_same_buffer_at_once():
    pool = BufferPool()
    errors = []

    def work(k):
        for _ in range(200):
            a = pool.empty(MB // 8)
            a.fill(k)
            if not (a == k).all():
                errors.append(k)
            pool.give(a)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tensor_diff_in_recycled_memory_gives_the_numbers_of_its_definition(monkeypatch):
    """|r - p| goes into a pool buffer holding an earlier comparison's values: every field of the diff is still
    the plain definition's (tests/parity/test_compare_identity.py), and the buffer is given back."""
    from tests.parity.test_compare_identity import plain_diff

    rng = np.random.default_rng(3)
    shape = (2, 40, 40, 64)  # 1.6 MB: pooled
    r = rng.standard_normal(shape)
    tol = StageTolerance(1e-10)
    pool = BufferPool()
    monkeypatch.setattr(tensors, "POOL", pool)
    for p in (r + 1e-3, r + rng.standard_normal(shape) * 1e-12, r.copy(), r * 1.01):
        want = plain_diff("x", r, p, tol)
        got = tensors.tensor_diff("x", r, p, tol)
        assert repr(dataclasses.asdict(got)) == repr(dataclasses.asdict(want))
    assert pool.free_bytes == r.nbytes and (pool.misses, pool.hits) == (1, 3)


def test_a_sink_copy_is_given_back_after_its_comparison_and_reused(monkeypatch):
    """The copy a comparison job holds (diff_sink) comes from the pool and returns to it: the next tap's copy
    reuses that memory, and each tap is compared with its own values."""
    tol = StageTolerance(rtol=1e-10, atol=0.0)
    taps = [Tap(path=f"t{k}", kind="conv2d", ref=f"t{k}", port=f"t{k}") for k in range(3)]
    rng = np.random.default_rng(0)
    refs = {t.path: rng.standard_normal((2, 32, 32, 128)) for t in taps}  # 2 MB each, NHWC
    pool = BufferPool()
    monkeypatch.setattr(forward, "POOL", pool)
    monkeypatch.setattr(tensors, "POOL", BufferPool(max_bytes=0))  # |r - p| elsewhere: only the copies here
    with Background() as bg:
        sink, diffs = diff_sink(refs, tol, background=bg)
        for k, t in enumerate(taps):
            value = np.ascontiguousarray(refs[t.path].transpose(0, 3, 1, 2))
            if k == 1:
                value = value + 1.0  # this one differs
            sink(t, value)
            bg.wait()  # the copy is back in the pool before the next tap's
    assert [diffs[t.path].mismatched for t in taps] == [0, diffs["t1"].numel, 0]
    assert abs(diffs["t1"].max_abs - 1.0) < 1e-12 and diffs["t0"].max_abs == diffs["t2"].max_abs == 0.0
    assert (pool.misses, pool.hits, pool.free_bytes) == (1, 2, refs["t0"].nbytes)


def test_a_spilled_array_read_pooled_is_recycled_memory_with_the_same_bytes(tmp_path):
    """``SpillDict.pooled`` (the --watch memo's reads) lends the array from the pool; a plain read (a trace, a
    reference run: arrays callers may keep) never does, so no comparison can give back memory someone holds."""
    from parity.core.buffers import POOL
    from parity.core.spill import SpillDict, SpillStore

    store = SpillStore(root=str(tmp_path))
    try:
        d = SpillDict(store)
        a = np.random.default_rng(0).normal(size=(2, 8, 128, 130))  # 2 MB: on disk
        d["x"] = a
        d["small"] = np.arange(3.0)
        store.flush()
        plain, pooled = d["x"], d.pooled("x")
        assert np.array_equal(plain, a) and np.array_equal(pooled, a) and pooled.dtype == a.dtype
        assert not POOL.lent(plain) and POOL.lent(pooled)
        assert not POOL.lent(d.pooled("small"))  # small arrays are copies of what stays in memory
        where = _address(pooled)
        assert POOL.give(pooled)
        again = d.pooled("x")
        assert _address(again) == where and np.array_equal(again, a)  # the same memory, read again
        POOL.give(again)
    finally:
        store.close()
        POOL.clear()


def test_the_port_takes_a_lent_array_without_a_copy_but_not_a_view_with_other_strides():
    torch = pytest.importorskip("torch")
    from parity.backends.torch_side import TorchSide
    from parity.core.buffers import POOL

    ts = TorchSide(torch.nn.Identity(), [], dtype="float64")
    a = POOL.empty((2, 3, 256, 256))
    a[...] = 1.0
    t = ts.as_tensor(a, fresh=True)
    assert t.data_ptr() == _address(a)  # used as is
    one_channel = POOL.empty((2, 256, 256, 1)).transpose(0, 3, 1, 2)  # NHWC -> NCHW of C=1: a view
    one_channel[...] = 2.0
    u = ts.as_tensor(one_channel, fresh=True)
    assert u.data_ptr() != _address(one_channel) and u.is_contiguous() and float(u.sum()) == 2.0 * u.numel()
    POOL.clear()
