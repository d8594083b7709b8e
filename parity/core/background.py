"""One worker thread that runs comparisons while the main thread goes on computing the port.

A check compares every tap's output and gradient with the reference's (``parity.core.tensors.tensor_diff``:
read the reference's array, move it to the port's layout, about eight passes over memory). Done inside the
port's forward hook, that work waits for torch and torch waits for it; numpy and torch both release the GIL
in their array operations, so a second core can do one while the first does the other. :class:`Background`
is that second lane: :meth:`submit` queues a job and returns at once, :meth:`wait` (or leaving the ``with``
block) returns when every job has run and raises the first error a job raised.

What a job reads must not change after it is queued: the caller hands over its own copy of a tensor the
port may still modify in place (an ``nn.ReLU(inplace=True)`` after the tapped layer, autograd accumulating
into a gradient buffer). The jobs waiting hold at most :data:`PENDING_BYTES` of such copies; :meth:`submit`
blocks until there is room, so memory stays bounded whatever the port's speed.

``PARITY_BACKGROUND=0`` runs every job at once in the caller's thread (the order and the results are the
same: each job computes from its own inputs and writes only its own result).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable

#: bytes of queued inputs the worker may hold before :meth:`Background.submit` waits (a few large
#: activations: Xception's largest at 299x299, batch 2, float64 is 44 MB)
PENDING_BYTES = 256 << 20
#: environment variable: ``0`` runs the jobs in the caller's thread
BACKGROUND_ENV = "PARITY_BACKGROUND"


def enabled() -> bool:
    return os.environ.get(BACKGROUND_ENV, "1") != "0"


class Background:
    """A worker thread running queued jobs in order (see the module docstring)."""

    def __init__(self, pending_bytes: int = PENDING_BYTES, name: str = "parity-compare"):
        self.threaded = enabled()  # False: each job runs in submit()
        self.name = name
        self.pending_bytes = pending_bytes
        self._held = 0
        self._room = threading.Condition()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, nbytes, skipped = item
            try:
                if self._error is None and not self._cancelled:
                    job()
                elif skipped is not None:
                    skipped()
            except BaseException as exc:  # handed to the main thread by wait()
                if self._error is None:
                    self._error = exc
            finally:
                with self._room:
                    self._held -= nbytes
                    self._room.notify_all()

    def submit(self, job: Callable[[], None], nbytes: int = 0, skipped: Callable[[], None] | None = None) -> None:
        """Queue ``job`` (a function of no arguments); ``nbytes``: the size of the inputs it holds; ``skipped``:
        called instead when the job is dropped (after an error, or :meth:`cancel`)."""
        if self._error is not None:
            self._raise()
        if not self.threaded:
            job()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        with self._room:
            while self._held > 0 and self._held + nbytes > self.pending_bytes and self._error is None:
                self._room.wait()
            self._held += nbytes
        self._jobs.put((job, nbytes, skipped))

    def wait(self) -> None:
        """Return once every queued job has run; raise the first error one raised."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            self._raise()

    def _raise(self) -> None:
        exc, self._error = self._error, None
        raise exc

    def __enter__(self) -> "Background":
        return self

    def cancel(self) -> None:
        """Drop the queued jobs (the one running finishes) and stop the worker; errors are not raised."""
        self._cancelled = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self._error = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the block failed (or Ctrl-C): the queued jobs are dropped, not run
            self.cancel()
            return
        self.wait()
