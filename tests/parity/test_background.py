"""``parity.core.background``: comparisons on a worker thread while the port computes — in order, bounded in
memory, errors raised in the caller, and a tensor the port modifies in place after its hook compared as it
was when the hook saw it."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from parity.core import background
from parity.core.background import Background
from parity.core.spec import StageTolerance, Tap
from parity.stages.forward import diff_sink

TOL = StageTolerance(rtol=1e-10, atol=0.0)


def test_jobs_run_in_order_on_another_thread_and_wait_returns_when_all_ran():
    seen = []
    with Background() as bg:
        for i in range(20):
            bg.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"parity-compare"}


def test_the_first_error_is_raised_in_the_caller_and_later_jobs_do_not_run():
    ran = []

    def boom():
        raise ValueError("job failed")

    with pytest.raises(ValueError, match="job failed"):
        with Background() as bg:
            bg.submit(boom)
            time.sleep(0.05)
            bg.submit(lambda: ran.append(1))
    assert ran == []


def test_submit_waits_while_the_queued_inputs_exceed_the_bound():
    release = threading.Event()
    held = []
    bg = Background(pending_bytes=100)
    bg.submit(release.wait, 80)
    t = threading.Thread(target=lambda: (bg.submit(lambda: held.append(1), 50), held.append("queued")))
    t.start()
    time.sleep(0.2)
    assert held == []  # 80 + 50 > 100: the second submit waits for the first job
    release.set()
    t.join(5)
    bg.wait()
    assert held == ["queued", 1] or held == [1, "queued"]


def test_a_failing_block_drops_the_queued_jobs():
    ran = []
    gate = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        with Background() as bg:
            bg.submit(gate.wait)
            bg.submit(lambda: ran.append(1))
            gate.set()
            raise KeyboardInterrupt
    assert ran == []


def test_parity_background_0_runs_each_job_in_the_caller(monkeypatch):
    monkeypatch.setenv(background.BACKGROUND_ENV, "0")
    names = []
    with Background() as bg:
        bg.submit(lambda: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name]


def test_a_value_modified_in_place_after_the_hook_is_compared_as_the_hook_saw_it():
    """nn.ReLU(inplace=True) after a tapped layer rewrites its output once the hook returned."""
    tap = Tap(path="bn", kind="batchnorm", ref="bn", port="bn")
    ref = np.linspace(-1.0, 1.0, 4 * 3 * 5 * 5).reshape(4, 5, 5, 3)  # NHWC
    with Background() as bg:
        sink, diffs = diff_sink({"bn": ref}, TOL, background=bg)
        value = np.ascontiguousarray(ref.transpose(0, 3, 1, 2))  # the port's NCHW output, equal
        gate = threading.Event()
        bg.submit(gate.wait)  # the worker is busy: the comparison below waits in the queue
        sink(tap, value)
        np.maximum(value, 0.0, out=value)  # the in-place ReLU
        gate.set()
    assert diffs["bn"].max_abs == 0.0 and diffs["bn"].mismatched == 0
