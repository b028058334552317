"""The measured pace of ``/predict`` requests: what :class:`backend.predict.slots.InferenceSlots` bases
``Retry-After``, due times and the ``queue_wait_s`` bound on.

:class:`Pace` keeps moving averages of an admitted request's time in the backend and of the interval
between request completions (``Retry-After``: that interval times the caller's place in the line), and
the slot time per task over the latest requests that used a slot. Not thread-safe: the slots call it
under their lock.
"""
from __future__ import annotations

import math
from collections import deque

#: Weight of the newest measurement in the moving averages behind ``Retry-After``.
EWMA_ALPHA = 0.3
MAX_RETRY_AFTER_S = 120
#: Slot seconds per task assumed before any request has been measured.
DEFAULT_TASK_S = 1.0
#: The slot time per task is measured over this many of the latest requests that used a slot (a
#: ratio of sums: one slow encode among cache hits moves it little).
TASK_WINDOW = 64


class Pace:
    """Moving averages of request time and completion interval, and the slot time per task."""

    def __init__(self) -> None:
        self.mean_request_s: float | None = None  # moving average of admitted requests' time in the backend
        self.mean_interval_s: float | None = None  # moving average of the time between completions
        self._slot_use: deque[tuple[float, int]] = deque(maxlen=TASK_WINDOW)  # (slot s, tasks) per request
        self._last_done: float | None = None

    @property
    def task_s(self) -> float:
        """Measured slot seconds per task over the latest ``TASK_WINDOW`` requests that used a slot
        (``DEFAULT_TASK_S`` before any)."""
        if not self._slot_use:
            return DEFAULT_TASK_S
        return sum(s for s, _ in self._slot_use) / sum(n for _, n in self._slot_use)

    def record(self, t0: float, now: float, slot_s: float, tasks: int) -> None:
        """A request admitted at ``t0`` finished at ``now``, having used ``slot_s`` slot seconds for
        ``tasks`` tasks."""
        took = max(0.0, now - t0)
        self.mean_request_s = took if self.mean_request_s is None else \
            EWMA_ALPHA * took + (1 - EWMA_ALPHA) * self.mean_request_s
        interval = max(0.0, now - max(t0, self._last_done if self._last_done is not None else t0))
        self.mean_interval_s = interval if self.mean_interval_s is None else \
            EWMA_ALPHA * interval + (1 - EWMA_ALPHA) * self.mean_interval_s
        if slot_s > 0:  # a request that used no slot (all its tasks refused) teaches nothing
            self._slot_use.append((slot_s, tasks))
        self._last_done = now

    def retry_after(self, position: int = 1) -> int:
        """Seconds until ``position`` more places are likely free: the moving average of the time
        between request completions times ``position`` (1..120; 5 before any request finished)."""
        if self.mean_interval_s is None:
            return 5
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(round(self.mean_interval_s * position, 2)))))

    def stats(self) -> dict[str, float | None]:
        """The moving averages, rounded to ms (None before any request finished)."""
        return {name: round(value, 3) if value is not None else None for name, value in
                (("mean_request_s", self.mean_request_s), ("mean_interval_s", self.mean_interval_s))}
