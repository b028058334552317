"""Bounded, fair inference: a fixed number of slots for model work, a bounded queue of requests, "busy" beyond.

:class:`InferenceSlots` does two things:

* **admission** (:meth:`InferenceSlots.admit`, around each ``/predict``, keyed by the request's
  project): at most ``slots + max_queue`` requests are in the backend at once, and while several
  projects are in, one project holds at most its fair share of those places
  (``ceil(capacity / projects)``, the new one counted). One more is refused at once with
  :class:`~backend.predict.tickets.Busy` (HTTP 503 with ``Retry-After``), instead of piling up until
  Label Studio's timeout.
  A refusal is also a **reservation** in one FIFO line of refused callers (the rules:
  :mod:`backend.predict.tickets`; ``Retry-After`` from the measured pace, :mod:`backend.predict.pace`):
  a place that frees while tickets wait is *held* for the oldest ticket whose project is under its
  share, and only that ticket's caller may take it;
* **slots** (``with slots:``, around each engine call and each mask encoding): at most ``slots`` of
  them run at once, and a freed slot goes to the waiting call that is **due first** (granted by
  :class:`backend.predict.due_first.DueFirstSlots`). A request of ``n`` tasks admitted at ``t`` is due
  at ``t + DUE_FACTOR * n * task_s`` (``task_s``: the measured slot time per task; ``DUE_FACTOR`` 1/2:
  when half of it would be done had it been alone), so an annotator's one-task request admitted while
  a batch runs goes before the batch's remaining calls, and a batch that has waited past its due time
  goes before what came after it (nobody starves, and each client is served in proportion to what it
  asked for). A request takes its turn per call (a due one keeps the slot between its calls); calls
  outside an admitted request (warm-up, smart crops) are due like a one-task request made when they queued.

With ``queue_wait_s`` (``CASS_QUEUE_WAIT_S``), admission is also bounded by time: a request is refused
when the tasks already in plus its own would take longer than that at ``task_s`` per task and slot
(a request alone is always admitted), so on a fast machine more requests wait and on a slow one
fewer, and an admitted request is answered before Label Studio gives up on it (100 s).

Slots are taken per call (never held while waiting for anything else), so a slot cannot deadlock
with the feature cache's single flight or the warm-up thread.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

from backend.predict.due_first import Admission, DueFirstSlots
from backend.predict.pace import Pace
from backend.predict.tickets import DEFAULT_GRACE_S, Ticket, TicketLine

#: A request of n tasks is due DUE_FACTOR * n * (slot seconds per task) after it was admitted: when
#: half of it would be done had it been served alone (1 made the 16-client load test's batch client
#: wait up to 69 s between answers, 0.5 at most 52 s; 0 would be first come first served).
DUE_FACTOR = 0.5


class InferenceSlots:
    """``slots`` concurrent model calls (earliest due first), ``max_queue`` waiting ``/predict``
    requests beyond them (and, with ``queue_wait_s``, no more than that many seconds of queued work),
    reservations for refused callers."""

    def __init__(self, slots: int = 1, max_queue: int = 8, *, clock: Callable[[], float] = time.monotonic,
                 grace_s: float = DEFAULT_GRACE_S, max_tickets: int | None = None,
                 queue_wait_s: float | None = None, max_tickets_per_client: int | None = None):
        if slots < 1 or max_queue < 0:
            raise ValueError("slots must be >= 1 and max_queue >= 0")
        if not grace_s > 0:
            raise ValueError("grace_s must be > 0")
        if queue_wait_s is not None and not queue_wait_s > 0:
            raise ValueError("queue_wait_s must be > 0")
        self.slots = int(slots)
        self.max_queue = int(max_queue)
        self.clock = clock
        self.grace_s = float(grace_s)
        self.queue_wait_s = float(queue_wait_s) if queue_wait_s is not None else None
        self.max_tickets = int(max_tickets) if max_tickets is not None else 8 * (self.slots + self.max_queue) + 64
        #: tickets one client address may have in the line (whatever projects it names): twice the places
        #: (several Label Studio users may share an address), so it holds every place at most twice
        self.max_tickets_per_client = max(1, int(max_tickets_per_client)) if max_tickets_per_client \
            else 2 * self.capacity
        self._lock = threading.Lock()
        self._calls = DueFirstSlots(self.slots, clock)
        self._requests = 0
        self._tasks_in = 0  # tasks of the admitted requests
        self._per_key: dict[Hashable, int] = {}   # admitted requests + held places per key
        self._line = TicketLine(self.max_tickets, self.max_tickets_per_client)  # refused callers, oldest first
        self._held = 0
        self._held_tasks = 0
        self._pace = Pace()  # Retry-After and the slot time per task, measured
        self._local = threading.local()
        self.counters = {"admitted": 0, "rejected": 0, "rejected_share": 0, "rejected_wait": 0,
                         "peak_requests": 0, "admitted_with_ticket": 0,
                         "tickets_expired": 0, "tickets_refused": 0, "tickets_per_client_refused": 0,
                         "tickets_per_client_evicted": 0}

    # -- admission ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.slots + self.max_queue

    @property
    def task_s(self) -> float:
        """Measured slot seconds per task (:attr:`backend.predict.pace.Pace.task_s`)."""
        return self._pace.task_s

    def fair_share(self, key: Hashable) -> int:
        """Places ``key`` may hold now: ``ceil(capacity / projects in)``, ``key`` counted (call locked)."""
        keys = len(self._per_key) + (key not in self._per_key)
        return max(1, math.ceil(self.capacity / keys))

    def _wait_s(self, tasks: int) -> float:
        """Seconds the tasks in (and held for tickets) plus ``tasks`` more take at ``task_s`` (locked)."""
        return (self._tasks_in + self._held_tasks + tasks) * self.task_s / self.slots

    def _fits_in_time(self, tasks: int) -> bool:
        """Within ``queue_wait_s``, or nothing else is in or held (call locked)."""
        return (self.queue_wait_s is None or self._requests + self._held == 0
                or self._wait_s(tasks) <= self.queue_wait_s)

    def _take(self, key: Hashable) -> None:
        self._per_key[key] = self._per_key.get(key, 0) + 1

    def _give(self, key: Hashable) -> None:
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]

    def _unhold(self, ticket: Ticket) -> None:
        self._held -= 1
        self._held_tasks -= ticket.tasks

    def _expire(self, now: float) -> None:
        """Drop tickets past their grace, giving back held places (call locked)."""
        for ticket in self._line.expire(now, self.grace_s):
            self.counters["tickets_expired"] += 1
            if ticket.held:
                self._unhold(ticket)
                self._give(ticket.key)

    def _assign(self, now: float) -> None:
        """Hold each free place for the oldest waiting ticket whose project is under its share; the
        first ticket whose tasks do not fit in time stops the line (FIFO). Call locked."""
        for ticket in self._line:
            if self._requests + self._held >= self.capacity:
                return
            if ticket.held or self._per_key.get(ticket.key, 0) >= self.fair_share(ticket.key):
                continue
            if not self._fits_in_time(ticket.tasks):
                return
            ticket.held, ticket.held_at = True, now
            self._held += 1
            self._held_tasks += ticket.tasks
            self._take(ticket.key)

    @contextmanager
    def admit(self, key: Hashable = "", ticket: str | None = None, tasks: int = 1,
              client: Hashable | None = None) -> Iterator[Admission]:
        """One ``/predict`` request of project ``key`` with ``tasks`` tasks from ``client`` (its address;
        None: not bounded per client), presenting the reservation ``ticket`` of an earlier refusal
        (unknown or expired tickets count as none; without one, a due held ticket of the same client
        and project is used). :class:`~backend.predict.tickets.Busy`
        (with a ticket) when every place is taken or held for others, when ``key`` holds its fair
        share, or when the queued work would exceed ``queue_wait_s``."""
        tasks = max(1, int(tasks))
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._assign(now)
            mine = self._line.get(ticket)
            if mine is not None and mine.key != key:
                mine = None  # a ticket is for the project it was issued to
            if mine is None and not ticket:
                ticket = self._line.own_due(key, client, now)
                mine = self._line.get(ticket)
            if mine is not None and mine.held:
                self._line.drop(ticket)
                self._unhold(mine)  # the held place (already counted for key) becomes this request's
                self.counters["admitted_with_ticket"] += 1
            else:
                self._refuse_unless_room(key, ticket if mine is not None else None, now, tasks, client)
                self._take(key)
                if mine is not None:
                    self._line.drop(ticket)
                    self.counters["admitted_with_ticket"] += 1
            self._requests += 1
            self._tasks_in += tasks
            self.counters["admitted"] += 1
            self.counters["peak_requests"] = max(self.counters["peak_requests"], self._requests)
            admission = Admission(key, tasks, now + DUE_FACTOR * tasks * self.task_s)
        previous = getattr(self._local, "admission", None)
        self._local.admission = admission
        t0 = self.clock()
        try:
            yield admission
        finally:
            self._local.admission = previous
            with self._lock:
                self._done(admission, t0)

    def _done(self, admission: Admission, t0: float) -> None:
        """Book a finished request: its place, the moving averages, the line (call locked)."""
        now = self.clock()
        admission.open = False
        self._calls.forget(admission)
        self._requests -= 1
        self._tasks_in -= admission.tasks
        self._give(admission.key)
        self._pace.record(t0, now, admission.slot_s, admission.tasks)
        self._expire(now)
        self._assign(now)

    def _refuse_unless_room(self, key: Hashable, ticket: str | None, now: float, tasks: int,
                            client: Hashable | None = None) -> None:
        """Raise :class:`~backend.predict.tickets.Busy` unless a free, unheld place is there for ``key``
        within its share and in time; a refused caller keeps (or gets) its place in the line of
        tickets (:meth:`~backend.predict.tickets.TicketLine.refusal`; call locked)."""
        held = self._per_key.get(key, 0)
        free = self.capacity - self._requests - self._held
        over_share = held >= self.fair_share(key)
        if free > 0 and not over_share and self._fits_in_time(tasks):
            return
        self.counters["rejected"] += 1
        if free > 0 and over_share:
            self.counters["rejected_share"] += 1
            message = (f"busy: this project already has {held} of {self._requests + self._held} places "
                       f"(prediction requests in, or held for its callers told to retry; its fair share "
                       f"of the {self.capacity} places while {len(self._per_key)} projects are served); "
                       f"retry later")
        elif free > 0:
            self.counters["rejected_wait"] += 1
            message = (f"busy: the {self._tasks_in + self._held_tasks} task(s) in and these {tasks} would take "
                       f"about {self._wait_s(tasks):.0f} s ({self.task_s:.3g} s per task, {self.slots} "
                       f"inference slot(s)), more than CASS_QUEUE_WAIT_S={self.queue_wait_s:g}; retry later")
        elif self._requests >= self.capacity:
            message = (f"busy: {self._requests} prediction requests are being served or waiting "
                       f"({self.slots} inference slot(s) + {self.max_queue} queued, CASS_INFERENCE_SLOTS / "
                       f"CASS_MAX_QUEUE); retry later")
        else:
            message = (f"busy: {self._requests} prediction requests are in and {self._held} place(s) are "
                       f"held for callers told to retry earlier ({self.slots} inference slot(s) + "
                       f"{self.max_queue} queued, CASS_INFERENCE_SLOTS / CASS_MAX_QUEUE); retry later")
        raise self._line.refusal(message, key, ticket, now, tasks, client, self._pace.retry_after, self.counters)

    def retry_after(self) -> int:
        """``Retry-After`` a caller refused now would get (behind the tickets waiting)."""
        with self._lock:
            return self._pace.retry_after(self._line.waiting() + 1)

    # -- slots --------------------------------------------------------------------------------
    def __enter__(self) -> "InferenceSlots":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take a slot for this thread's admitted request (or as a background call, due like a
        one-task request made now); :class:`~backend.predict.due_first.DueFirstSlots` grants them."""
        admission = getattr(self._local, "admission", None)
        if admission is not None:
            due = admission.due
        else:
            with self._lock:
                due = self.clock() + DUE_FACTOR * self.task_s
        self._calls.acquire(due, admission)

    def release(self) -> None:
        self._calls.release(getattr(self._local, "admission", None))

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"slots": self.slots, "max_queue": self.max_queue, "queue_wait_s": self.queue_wait_s,
                    **self._calls.stats(), "requests": self._requests, "tasks_in": self._tasks_in,
                    "projects": len(self._per_key), "queue_full": self._requests + self._held >= self.capacity,
                    "tickets": len(self._line), "held_places": self._held,
                    "retry_after_s": self._pace.retry_after(self._line.waiting() + 1),
                    "task_s": round(self.task_s, 3),
                    "queued_work_s": round(self._wait_s(0), 1),
                    **self._pace.stats(),
                    **self.counters}
