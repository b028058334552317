"""Model-call slots granted earliest due first: the scheduling half of :mod:`backend.predict.slots`.

:class:`DueFirstSlots` runs at most ``slots`` calls at once. A call that finds no free slot waits in a
heap ordered by its request's due time (then by arrival), and a freed slot is handed straight to the
call due first (no overtaking). A request due before every waiting call keeps the slot it frees for
its next call for up to :data:`HOLD_S`: its next call can only queue after the release, and without
the hold a batch that is due would get every other call at best. The slot time each call takes is
booked on its request (:class:`Admission`), which is how ``InferenceSlots`` measures the slot time per task.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

#: Seconds a request due before every waiting call keeps the slot between two of its calls.
HOLD_S = 0.05


@dataclass
class Admission:
    """One admitted request: ``tasks``, when it is ``due`` (clock seconds), slot seconds used so far,
    ``open`` until the request is done."""

    key: Hashable
    tasks: int
    due: float
    slot_s: float = 0.0
    open: bool = True


class DueFirstSlots:
    """``slots`` model calls at once, earliest due first; ``clock`` times the slot use."""

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic):
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = int(slots)
        self.clock = clock
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiters: list[tuple[float, int, threading.Event]] = []  # heap of (due, arrival, turn)
        self._arrivals = itertools.count()
        self._hold: Admission | None = None  # a freed slot kept for this request's next call
        self._hold_token = 0
        self._local = threading.local()
        self._held_at = 0.0
        self.peak_waiting = 0
        self.holds = {"kept": 0, "lapsed": 0, "kept_gap_s": 0.0}  # slots kept: taken back in time, or not

    def acquire(self, due: float, admission: Admission | None = None) -> None:
        """Take a slot for a call due at ``due`` (of ``admission``, None for a background call)."""
        turn = None
        with self._lock:
            if self._hold is not None and self._hold is admission:
                self._hold = None  # the slot kept for this request's next call
                self._free -= 1
                self.holds["kept"] += 1
                self.holds["kept_gap_s"] += self.clock() - self._held_at
            elif self._free > (self._hold is not None) and not self._waiters:
                self._free -= 1
            else:
                turn = threading.Event()
                heapq.heappush(self._waiters, (due, next(self._arrivals), turn))
                self.peak_waiting = max(self.peak_waiting, len(self._waiters))
        if turn is not None:
            turn.wait()  # the slot is handed straight to the call due first
        self._local.acquired_at = self.clock()

    def release(self, admission: Admission | None = None) -> None:
        """Give the slot back (booking its time on ``admission``): to the waiting call due first,
        or kept for ``admission``'s next call when it is due before all of them."""
        acquired_at = getattr(self._local, "acquired_at", None)
        self._local.acquired_at = None
        with self._lock:
            if self._free >= self.slots:
                raise RuntimeError("InferenceSlots released more often than acquired")
            if admission is not None and acquired_at is not None:
                admission.slot_s += max(0.0, self.clock() - acquired_at)
            self._free += 1
            if (self._waiters and self._hold is None and admission is not None and admission.open
                    and admission.due < self._waiters[0][0]):
                self._hold, self._hold_token, self._held_at = admission, self._hold_token + 1, self.clock()
                timer = threading.Timer(HOLD_S, self._hold_expired, args=(self._hold_token,))
                timer.daemon = True
                timer.start()
            else:
                self._hand_off()

    def forget(self, admission: Admission) -> None:
        """``admission`` is done: a slot kept for it goes to the waiting calls now."""
        with self._lock:
            if self._hold is admission:
                self._end_hold()

    def stats(self) -> dict:
        with self._lock:
            kept = self.holds["kept"]
            return {"busy_slots": self.slots - self._free, "waiting_calls": len(self._waiters),
                    "peak_waiting_calls": self.peak_waiting, "holds_kept": kept, "holds_lapsed": self.holds["lapsed"],
                    "hold_gap_ms": round(1000 * self.holds["kept_gap_s"] / kept, 1) if kept else None}

    def _hand_off(self) -> None:
        """Free slots (but a kept one) to the waiting calls due first (call locked)."""
        while self._waiters and self._free > (self._hold is not None):
            self._free -= 1
            heapq.heappop(self._waiters)[2].set()

    def _end_hold(self) -> None:
        self._hold = None
        self._hand_off()

    def _hold_expired(self, token: int) -> None:
        with self._lock:
            if self._hold is not None and self._hold_token == token:
                self.holds["lapsed"] += 1
                self._end_hold()
