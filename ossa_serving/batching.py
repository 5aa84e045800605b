"""Dynamic batching: requests queue per model; one inference thread per model takes them.

A batch goes when it is full (by count or by cost, e.g. tokens) or when its oldest request has
waited `max_delay_ms` (Triton's rule). The queue is bounded: a full queue refuses at once
(QueueFull -> 429 + Retry-After) instead of turning overload into timeouts. A request whose
deadline passed while it queued is dropped before it costs model time.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("ossa.serving.batching")


class QueueFull(Exception):
    def __init__(self, name: str, depth: int, retry_after_s: int = 1):
        super().__init__(f"{name} is at capacity ({depth} requests queued); retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


@dataclass
class Job:
    payload: Any
    cost: int
    deadline: float  # time.monotonic()
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class JobQueue:
    """A bounded FIFO with a condition variable, shared by the batchers below."""

    def __init__(self, name: str, max_queue: int):
        self.name = name
        self.max_queue = max_queue
        self._q: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    def oldest_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 when empty)."""
        try:
            return time.monotonic() - self._q[0].enqueued
        except IndexError:  # empty (or emptied by the taker meanwhile)
            return 0.0

    def put(self, job: Job) -> Future:
        with self._cv:
            if self.closed:
                raise QueueFull(self.name, len(self._q))
            if len(self._q) >= self.max_queue:
                raise QueueFull(self.name, len(self._q))
            self._q.append(job)
            self._cv.notify()
        return job.future

    def take(self, max_n: int, max_cost: int, max_delay_s: float, block: bool) -> list[Job]:
        """Up to max_n jobs (and max_cost, one job always fits): waits for the first when
        `block`, then until the batch is full or the oldest has waited max_delay_s."""
        out: list[Job] = []
        cost = 0
        with self._cv:
            if block:
                while not self._q and not self.closed:
                    self._cv.wait(0.5)
            if not self._q:
                return out
            oldest = self._q[0].enqueued
            while len(out) < max_n:
                if self._q:
                    job = self._q[0]
                    if out and cost + job.cost > max_cost:
                        break
                    self._q.popleft()
                    if job.future.set_running_or_notify_cancel() is False:
                        continue  # the caller gave up (deadline): never run it
                    if time.monotonic() > job.deadline:
                        job.future.set_exception(DeadlineExceeded(f"{self.name}: deadline passed in the queue"))
                        continue
                    out.append(job)
                    cost += job.cost
                    continue
                wait = oldest + max_delay_s - time.monotonic()
                if wait <= 0 or not block:
                    break
                self._cv.wait(wait)
        return out

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


class Batcher:
    """A stateless model (an embedder) behind a queue: `run_batch(payloads) -> results`."""

    def __init__(self, name: str, run_batch: Callable[[list[Any]], list[Any]], *, max_batch: int,
                 max_cost: int, max_delay_ms: float, max_queue: int, metrics: Any = None,
                 after_batch: Callable[[], None] | None = None):
        self.name = name
        self.after_batch = after_batch  # a worker process sends the batch's results at once
        self.run_batch = run_batch
        self.max_batch, self.max_cost, self.max_delay_s = max_batch, max_cost, max_delay_ms / 1000
        self.queue = JobQueue(name, max_queue)
        self.metrics = metrics
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, payload: Any, cost: int = 1, timeout_s: float = 10.0) -> Future:
        return self.queue.put(Job(payload, cost, time.monotonic() + timeout_s))

    def _loop(self) -> None:
        while not self.queue.closed:
            jobs = self.queue.take(self.max_batch, self.max_cost, self.max_delay_s, block=True)
            if not jobs:
                continue
            now = time.monotonic()
            if self.metrics:
                self.metrics.batch(self.name, len(jobs), [now - j.enqueued for j in jobs], len(self.queue))
            try:
                results = self.run_batch([j.payload for j in jobs])
            except Exception as e:  # one bad batch fails its requests, not the thread
                log.exception("%s: batch of %d failed", self.name, len(jobs))
                for j in jobs:
                    j.future.set_exception(e)
            else:
                for j, r in zip(jobs, results):
                    j.future.set_result(r)
            if self.after_batch is not None:
                self.after_batch()

    def busy(self) -> bool:
        return bool(len(self.queue))

    def close(self) -> None:
        self.queue.close()
        self._thread.join(timeout=5)
