"""Bounded, fair inference: a fixed number of slots for model work, a bounded queue of requests, "busy" beyond.

:class:`InferenceSlots` does two things:

* **admission** (:meth:`InferenceSlots.admit`, around each ``/predict``, keyed by the request's
  project): at most ``slots + max_queue`` requests are in the backend at once, and while several
  projects are in, one project holds at most its fair share of those places
  (``ceil(capacity / projects)``, the new one counted), so a project that re-sends at once cannot
  keep the others out. One more is refused at once with :class:`Busy` (HTTP 503 with
  ``Retry-After``), instead of piling up until Label Studio's timeout. ``Retry-After`` is estimated
  from the measured request times (an exponentially weighted moving average) and the queue length;
* **slots** (``with slots:``, around each engine call and each mask encoding): at most ``slots`` of
  them run at once. Waiting calls are served round-robin across projects, first come first served
  within one project; a batch takes its turn per call, so an annotator's one-task request waits
  for at most one call of each project ahead of it, not for a whole batch.

Slots are taken per call (never held while waiting for anything else), so a slot cannot deadlock
with the feature cache's single flight or the warm-up thread. The project of a call is the one its
thread was admitted for (calls outside :meth:`admit`, e.g. warm-up, share the key ``""``).
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

#: Weight of the newest request time in the moving average behind ``Retry-After``.
EWMA_ALPHA = 0.3
MAX_RETRY_AFTER_S = 120


class Busy(Exception):
    """All places are taken (or the project holds its share): try again in ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceSlots:
    """``slots`` concurrent model calls (round-robin over projects, FIFO within one), ``max_queue``
    waiting ``/predict`` requests beyond them."""

    def __init__(self, slots: int = 1, max_queue: int = 8, *, clock: Callable[[], float] = time.monotonic):
        if slots < 1 or max_queue < 0:
            raise ValueError("slots must be >= 1 and max_queue >= 0")
        self.slots = int(slots)
        self.max_queue = int(max_queue)
        self.clock = clock
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiters: "OrderedDict[Hashable, deque[threading.Event]]" = OrderedDict()  # key -> FIFO
        self._waiting = 0
        self._requests = 0
        self._per_key: dict[Hashable, int] = {}
        self._ewma_s: float | None = None  # moving average of admitted requests' time in the backend
        self._local = threading.local()
        self.counters = {"admitted": 0, "rejected": 0, "rejected_share": 0, "peak_requests": 0,
                         "peak_waiting_calls": 0}

    # -- admission ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.slots + self.max_queue

    def fair_share(self, key: Hashable) -> int:
        """Places ``key`` may hold now: ``ceil(capacity / projects in)``, ``key`` counted (call locked)."""
        keys = len(self._per_key) + (key not in self._per_key)
        return max(1, math.ceil(self.capacity / keys))

    @contextmanager
    def admit(self, key: Hashable = "") -> Iterator[None]:
        """One ``/predict`` request of project ``key``; :class:`Busy` when ``slots + max_queue`` are
        already in, or when ``key`` already holds its fair share while other projects are in."""
        with self._lock:
            held = self._per_key.get(key, 0)
            if self._requests >= self.capacity:
                self.counters["rejected"] += 1
                raise Busy(f"busy: {self._requests} prediction requests are being served or waiting "
                           f"({self.slots} inference slot(s) + {self.max_queue} queued, CASS_INFERENCE_SLOTS / "
                           f"CASS_MAX_QUEUE); retry later", self._retry_after())
            share = self.fair_share(key)
            if held >= share:
                self.counters["rejected"] += 1
                self.counters["rejected_share"] += 1
                raise Busy(f"busy: this project already has {held} of {self._requests} prediction requests "
                           f"in (its fair share of the {self.capacity} places while {len(self._per_key)} "
                           f"projects are served); retry later", self._retry_after())
            self._requests += 1
            self._per_key[key] = held + 1
            self.counters["admitted"] += 1
            self.counters["peak_requests"] = max(self.counters["peak_requests"], self._requests)
        previous = getattr(self._local, "key", "")
        self._local.key = key
        t0 = self.clock()
        try:
            yield
        finally:
            self._local.key = previous
            with self._lock:
                self._requests -= 1
                left = self._per_key[key] - 1
                if left:
                    self._per_key[key] = left
                else:
                    del self._per_key[key]
                took = max(0.0, self.clock() - t0)
                self._ewma_s = took if self._ewma_s is None else EWMA_ALPHA * took + (1 - EWMA_ALPHA) * self._ewma_s

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the moving-average request time times the requests in
        per slot (1..120; 5 before any request has finished). Call locked."""
        if self._ewma_s is None:
            return 5
        ahead = max(1, self._requests - self.slots + 1)
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(round(self._ewma_s * ahead / self.slots, 2)))))

    def retry_after(self) -> int:
        with self._lock:
            return self._retry_after()

    # -- slots --------------------------------------------------------------------------------
    def __enter__(self) -> "InferenceSlots":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self, key: Hashable | None = None) -> None:
        """Take a slot for project ``key`` (default: the key this thread was admitted for)."""
        if key is None:
            key = getattr(self._local, "key", "")
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return
            ticket = threading.Event()
            self._waiters.setdefault(key, deque()).append(ticket)
            self._waiting += 1
            self.counters["peak_waiting_calls"] = max(self.counters["peak_waiting_calls"], self._waiting)
        ticket.wait()  # release() hands its slot straight to the chosen waiter (no overtaking)

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                key, queue = next(iter(self._waiters.items()))  # round-robin: oldest turn first
                ticket = queue.popleft()
                del self._waiters[key]
                if queue:
                    self._waiters[key] = queue  # to the back of the round
                self._waiting -= 1
                ticket.set()
            else:
                if self._free >= self.slots:
                    raise RuntimeError("InferenceSlots released more often than acquired")
                self._free += 1

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"slots": self.slots, "max_queue": self.max_queue, "busy_slots": self.slots - self._free,
                    "waiting_calls": self._waiting, "requests": self._requests,
                    "projects": len(self._per_key), "queue_full": self._requests >= self.capacity,
                    "retry_after_s": self._retry_after(),
                    "mean_request_s": round(self._ewma_s, 3) if self._ewma_s is not None else None,
                    **self.counters}
