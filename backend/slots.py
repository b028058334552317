"""Bounded inference: a fixed number of slots for model work, a bounded queue of requests, "busy" beyond.

:class:`InferenceSlots` does two things:

* **admission** (:meth:`InferenceSlots.admit`, around each ``/predict``): at most ``slots + max_queue``
  requests are in the backend at once; one more is refused at once with :class:`Busy` (HTTP 503 with
  ``Retry-After``), instead of piling up until Label Studio's timeout;
* **slots** (``with slots:``, around each engine call and each mask encoding): at most ``slots`` of
  them run at once, first come first served. A batch takes its turn per call, so an annotator's
  one-task request waits for at most one call of each request ahead of it, not for a whole batch.

Slots are taken per call (never held while waiting for anything else), so a slot cannot deadlock
with the feature cache's single flight or the warm-up thread.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator


class Busy(Exception):
    """All slots are taken and the queue is full: try again in ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceSlots:
    """``slots`` concurrent model calls (FIFO), ``max_queue`` waiting ``/predict`` requests beyond them."""

    def __init__(self, slots: int = 1, max_queue: int = 8, *, clock: Callable[[], float] = time.monotonic):
        if slots < 1 or max_queue < 0:
            raise ValueError("slots must be >= 1 and max_queue >= 0")
        self.slots = int(slots)
        self.max_queue = int(max_queue)
        self.clock = clock
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiters: deque[threading.Event] = deque()
        self._requests = 0
        self._request_seconds = 0.0   # time admitted requests spent in the backend (for Retry-After)
        self._requests_done = 0
        self.counters = {"admitted": 0, "rejected": 0, "peak_requests": 0, "peak_waiting_calls": 0}

    # -- admission ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.slots + self.max_queue

    @contextmanager
    def admit(self) -> Iterator[None]:
        """One ``/predict`` request; :class:`Busy` when ``slots + max_queue`` are already in."""
        with self._lock:
            if self._requests >= self.capacity:
                self.counters["rejected"] += 1
                raise Busy(f"busy: {self._requests} prediction requests are being served or waiting "
                           f"({self.slots} inference slot(s) + {self.max_queue} queued, CASS_INFERENCE_SLOTS / "
                           f"CASS_MAX_QUEUE); retry later", self._retry_after())
            self._requests += 1
            self.counters["admitted"] += 1
            self.counters["peak_requests"] = max(self.counters["peak_requests"], self._requests)
        t0 = self.clock()
        try:
            yield
        finally:
            with self._lock:
                self._requests -= 1
                self._requests_done += 1
                self._request_seconds += self.clock() - t0

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the mean request time times the requests ahead of a
        new one per slot (1..60; 5 before any request has finished)."""
        if not self._requests_done:
            return 5
        mean = self._request_seconds / self._requests_done
        ahead = max(1, self._requests - self.slots + 1)
        return int(min(60, max(1, math.ceil(mean * ahead / self.slots))))

    # -- slots --------------------------------------------------------------------------------
    def __enter__(self) -> "InferenceSlots":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            ticket = threading.Event()
            self._waiters.append(ticket)
            self.counters["peak_waiting_calls"] = max(self.counters["peak_waiting_calls"], len(self._waiters))
        ticket.wait()  # release() hands its slot straight to the longest waiter (no overtaking)

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                if self._free >= self.slots:
                    raise RuntimeError("InferenceSlots released more often than acquired")
                self._free += 1

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"slots": self.slots, "max_queue": self.max_queue, "busy_slots": self.slots - self._free,
                    "waiting_calls": len(self._waiters), "requests": self._requests,
                    "queue_full": self._requests >= self.capacity, **self.counters}
