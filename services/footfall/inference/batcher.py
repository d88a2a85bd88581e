"""Dynamic micro-batching: concurrent requests share one model run.

Each request submits its crops and waits on a future; one worker thread takes the first
waiting request, keeps collecting others until ``max_batch`` crops or ``max_wait_s`` has
passed, runs the backend once per ``max_batch`` chunk, and hands every request its rows.

Example:
    >>> import numpy as np
    >>> from footfall.predictions import Predictions
    >>> class Echo:  # a stand-in backend: age = mean pixel value
    ...     def predict(self, b):
    ...         n = len(b)
    ...         return Predictions(b.mean(axis=(1, 2, 3)), np.zeros(n), np.zeros((n, 5)), np.zeros((n, 7)))
    >>> batcher = MicroBatcher(Echo(), max_batch=8, max_wait_s=0.001)
    >>> preds, ran_in = batcher.submit(np.full((2, 4, 4, 3), 7, np.uint8)).result()
    >>> preds.age.tolist(), ran_in
    ([7.0, 7.0], 2)
    >>> batcher.close()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from footfall.observability import BATCH_SIZE, INFERENCE_LATENCY
from footfall.predictions import Predictions

log = logging.getLogger(__name__)


@dataclass
class _Job:
    crops: np.ndarray
    future: Future


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no more work."""


class MicroBatcher:
    def __init__(self, backend, max_batch: int = 32, max_wait_s: float = 0.004) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, crops: np.ndarray) -> Future:
        """Future of (Predictions for ``crops``, size of the largest model batch they ran in)."""
        if self._closed.is_set():
            raise BatcherClosed("inference worker is shutting down")
        future: Future = Future()
        self._jobs.put(_Job(crops, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop."""
        self._closed.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, total = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while total < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=max(remaining, 0)) if remaining > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            total += len(job.crops)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            self._run_jobs(jobs)
        # Fail whatever arrived after the stop marker instead of leaving callers waiting.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.set_exception(BatcherClosed("inference worker is shutting down"))

    def _run_jobs(self, jobs: list[_Job]) -> None:
        try:
            crops = np.concatenate([j.crops for j in jobs]) if len(jobs) > 1 else jobs[0].crops
            parts, largest = [], 0
            for start in range(0, len(crops), self.max_batch):
                chunk = crops[start:start + self.max_batch]
                t0 = time.perf_counter()
                parts.append(self.backend.predict(chunk))
                INFERENCE_LATENCY.observe(time.perf_counter() - t0)
                BATCH_SIZE.observe(len(chunk))
                largest = max(largest, len(chunk))
            preds = Predictions.concat(parts) if len(parts) > 1 else parts[0]
        except Exception as exc:  # the backend failed: every caller of this batch learns why
            log.exception("model run failed")
            for job in jobs:
                job.future.set_exception(exc)
            return
        offset = 0
        for job in jobs:
            n = len(job.crops)
            job.future.set_result((preds[offset:offset + n], largest))
            offset += n
