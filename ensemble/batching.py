"""Run the CNN on the patches of several images at once, whichever threads they come from.

A scan scores whole images on worker threads (see :mod:`ensemble.scan`), so each CNN call carries one image's
patches (at most 24). On a GPU such small calls starve it: the time goes to launching kernels and copying, not to
computing. :class:`PatchBatcher` wraps the CNN callable with the same interface; calls made at the same time from
several threads are joined into one, up to ``max_patches`` patches, and each caller gets back its own rows.

There is no timer and no extra thread. A caller that finds a free slot (fewer than ``concurrency`` calls running)
runs the CNN at once on everything waiting, its own patches included; the others wait, and when the call ends the
next free caller takes whatever has queued up meanwhile. An idle scorer so adds no delay, and the busier the CNN,
the larger its batches grow. A call's output rows do not depend on which other patches share it (up to float
rounding), so the records are the same with and without batching (tests/test_device.py).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import numpy as np

MAX_PATCHES = 512
"""Patches in one batched CNN call at most: 21 photos of 24 patches, about 19 MB of float32 input. A caller's own
patches are never split, so a single larger request still runs (alone)."""


class _Request:
    __slots__ = ("inputs", "output", "error", "done")

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs
        self.output = None
        self.error = None
        self.done = False


class PatchBatcher:
    """``model`` (float32 (N, ...) → (N, ...) rows) shared by threads, with their concurrent calls joined.

    ``max_patches``: the most rows in one joined call; ``concurrency``: the most calls of ``model`` at once (1 on
    a GPU; more lets a CPU run calls side by side). ``calls``, ``rows`` and ``largest`` count what it did.
    """

    def __init__(self, model: Callable[[np.ndarray], np.ndarray], max_patches: int = MAX_PATCHES,
                 concurrency: int = 1):
        if max_patches < 1 or concurrency < 1:
            raise ValueError("max_patches and concurrency must be at least 1")
        self.model, self.max_patches, self.concurrency = model, max_patches, concurrency
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._running = 0
        self.calls = self.rows = self.largest = 0

    def __getattr__(self, name):
        # The wrapped model's own attributes (OnnxModel.device, .path, ...) stay reachable.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        request = _Request(np.asarray(inputs))
        with self._cond:
            self._queue.append(request)
            while not request.done:
                if self._running < self.concurrency and self._queue:
                    self._run(self._take())
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.output

    def _take(self) -> list[_Request]:
        """The waiting requests, oldest first, up to max_patches rows (always at least one)."""
        batch = [self._queue.popleft()]
        rows = len(batch[0].inputs)
        while self._queue and rows + len(self._queue[0].inputs) <= self.max_patches:
            rows += len(self._queue[0].inputs)
            batch.append(self._queue.popleft())
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One call of the model for ``batch``, run with the lock released; called and returns with it held."""
        self._running += 1
        self._cond.release()
        try:
            try:
                inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([r.inputs for r in batch])
                output = self.model(inputs)
                start = 0
                for r in batch:
                    r.output = output[start:start + len(r.inputs)]
                    start += len(r.inputs)
            except BaseException as err:  # noqa: BLE001 - every caller of the batch gets the model's error
                for r in batch:
                    r.error = err
        finally:
            self._cond.acquire()
            self._running -= 1
            self.calls += 1
            self.rows += sum(len(r.inputs) for r in batch)
            self.largest = max(self.largest, sum(len(r.inputs) for r in batch))
            for r in batch:
                r.done = True
            self._cond.notify_all()


__all__ = ["MAX_PATCHES", "PatchBatcher"]
