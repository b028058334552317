"""Bounded, fair inference: a fixed number of slots for model work, a bounded queue of requests, "busy" beyond.

:class:`InferenceSlots` does two things:

* **admission** (:meth:`InferenceSlots.admit`, around each ``/predict``, keyed by the request's
  project): at most ``slots + max_queue`` requests are in the backend at once, and while several
  projects are in, one project holds at most its fair share of those places
  (``ceil(capacity / projects)``, the new one counted). One more is refused at once with
  :class:`Busy` (HTTP 503 with ``Retry-After``), instead of piling up until Label Studio's timeout.
  A refusal is also a **reservation** (:class:`Ticket`): the caller is put in one FIFO line of
  refused callers and told when its turn is likely (``Retry-After``, estimated from the measured
  interval between request completions times its position in the line). A place that frees while
  tickets wait is *held* for the oldest ticket whose project is under its share; a caller without
  a (held) ticket cannot take a held place, so a client that re-sends the moment it is answered no
  longer retakes the place it freed from the one that was told to come back. A waiting ticket
  expires ``grace_s`` after it falls due, a held place ``grace_s`` after it was held (Label Studio
  itself never retries a 503, so its reservations must not keep places for long); one client address
  has at most ``max_tickets_per_client`` tickets (2 x the places; its oldest waiting one makes room),
  and a request without a ticket takes a due held place of its own address and project;
* **slots** (``with slots:``, around each engine call and each mask encoding): at most ``slots`` of
  them run at once, and a freed slot goes to the waiting call that is **due first**. A request of
  ``n`` tasks admitted at ``t`` is due at ``t + DUE_FACTOR * n * task_s`` (``task_s``: the measured
  slot time per task; ``DUE_FACTOR`` 1/2: when half of it would be done had it been alone), so an
  annotator's one-task request admitted while a batch runs goes before
  the batch's remaining calls, and a batch that has waited past its due time goes before what came
  after it (nobody starves, and each client is served in proportion to what it asked for). A request
  takes its turn per call (a due one keeps the slot between its calls); calls outside an admitted
  request (warm-up, smart crops) are due like a one-task request made when they queued. The
  granting itself is :class:`backend.predict.due_first.DueFirstSlots`.

With ``queue_wait_s`` (``CASS_QUEUE_WAIT_S``), admission is also bounded by time: a request is refused
when the tasks already in plus its own would take longer than that at ``task_s`` per task and slot
(a request alone is always admitted), so on a fast machine more requests wait and on a slow one
fewer, and an admitted request is answered before Label Studio gives up on it (100 s).

Slots are taken per call (never held while waiting for anything else), so a slot cannot deadlock
with the feature cache's single flight or the warm-up thread. A call is due when the request its
thread was admitted for is due (calls outside :meth:`admit`, e.g. warm-up, as above).
"""
from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

from backend.predict.due_first import Admission, DueFirstSlots

#: Weight of the newest measurement in the moving averages behind ``Retry-After``.
EWMA_ALPHA = 0.3
MAX_RETRY_AFTER_S = 120
#: Seconds a reservation stays valid after it falls due (or after its place was held, if later).
DEFAULT_GRACE_S = 5.0
#: A request of n tasks is due DUE_FACTOR * n * (slot seconds per task) after it was admitted: when
#: half of it would be done had it been served alone (1 made the 16-client load test's batch client
#: wait up to 69 s between answers, 0.5 at most 52 s; 0 would be first come first served).
DUE_FACTOR = 0.5
#: Slot seconds per task assumed before any request has been measured.
DEFAULT_TASK_S = 1.0
#: The slot time per task is measured over this many of the latest requests that used a slot (a
#: ratio of sums: one slow encode among cache hits moves it little).
TASK_WINDOW = 64
#: What a ticket id looks like (``secrets.token_urlsafe``); anything else is refused by the HTTP edge.
TICKET_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")


class Busy(Exception):
    """All places are taken (or the project holds its share): try again in ``retry_after_s`` seconds,
    presenting ``ticket`` (None when the line of reservations is full)."""

    def __init__(self, message: str, retry_after_s: int, ticket: str | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.ticket = ticket


@dataclass
class Ticket:
    """One refused caller's place in the line: ``due`` (when it was told to come back), ``held``
    (a place is kept for it since ``held_at``), all on the slots' clock."""

    key: Hashable
    due: float
    tasks: int = 1
    held: bool = False
    held_at: float = 0.0
    client: Hashable | None = None

    def expires(self, grace_s: float) -> float:
        """A held place lapses ``grace_s`` after it was held (whatever ``due`` says: a due time up to
        ``MAX_RETRY_AFTER_S`` ahead kept a freed place for minutes); a waiting ticket ``grace_s`` after due."""
        return (self.held_at if self.held else self.due) + grace_s


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
        self._client_tickets: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._calls = DueFirstSlots(self.slots, clock)
        self._requests = 0
        self._tasks_in = 0  # tasks of the admitted requests
        self._per_key: dict[Hashable, int] = {}   # admitted requests + held places per key
        self._tickets: "OrderedDict[str, Ticket]" = OrderedDict()  # the line, oldest first
        self._held = 0
        self._held_tasks = 0
        self._ewma_s: float | None = None  # moving average of admitted requests' time in the backend
        self._interval_s: float | None = None  # moving average of the time between completions
        self._slot_use: deque[tuple[float, int]] = deque(maxlen=TASK_WINDOW)  # (slot s, tasks) per request
        self._last_done: float | None = None
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
        """Measured slot seconds per task over the latest ``TASK_WINDOW`` requests that used a slot
        (``DEFAULT_TASK_S`` before any)."""
        if not self._slot_use:
            return DEFAULT_TASK_S
        return sum(s for s, _ in self._slot_use) / sum(n for _, n in self._slot_use)

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
        for tid in [t for t, ticket in self._tickets.items() if now > ticket.expires(self.grace_s)]:
            ticket = self._drop(tid)
            self.counters["tickets_expired"] += 1
            if ticket.held:
                self._unhold(ticket)
                self._give(ticket.key)

    def _drop(self, tid: str) -> Ticket:
        """Take ticket ``tid`` out of the line (its client's count too; call locked)."""
        ticket = self._tickets.pop(tid)
        if ticket.client is not None:
            left = self._client_tickets.get(ticket.client, 1) - 1
            if left > 0:
                self._client_tickets[ticket.client] = left
            else:
                self._client_tickets.pop(ticket.client, None)
        return ticket

    def _own_due_ticket(self, key: Hashable, client: Hashable | None, now: float) -> str | None:
        """A held ticket of this client address and project that is due: a caller that never presents
        its tickets (Label Studio) takes the place held for it instead of being refused by it (locked)."""
        if client is None:
            return None
        for tid, ticket in self._tickets.items():
            if ticket.held and ticket.client == client and ticket.key == key and now >= ticket.due:
                return tid
        return None

    def _assign(self, now: float) -> None:
        """Hold each free place for the oldest waiting ticket whose project is under its share; the
        first ticket whose tasks do not fit in time stops the line (FIFO). Call locked."""
        for ticket in self._tickets.values():
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
        and project is used). :class:`Busy`
        (with a ticket) when every place is taken or held for others, when ``key`` holds its fair
        share, or when the queued work would exceed ``queue_wait_s``."""
        tasks = max(1, int(tasks))
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._assign(now)
            mine = self._tickets.get(ticket) if ticket else None
            if mine is not None and mine.key != key:
                mine = None  # a ticket is for the project it was issued to
            if mine is None and not ticket:
                ticket = self._own_due_ticket(key, client, now)
                mine = self._tickets.get(ticket) if ticket else None
            if mine is not None and mine.held:
                self._drop(ticket)
                self._unhold(mine)  # the held place (already counted for key) becomes this request's
                self.counters["admitted_with_ticket"] += 1
            else:
                self._refuse_unless_room(key, ticket if mine is not None else None, now, tasks, client)
                self._take(key)
                if mine is not None:
                    self._drop(ticket)
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
        took = max(0.0, now - t0)
        self._ewma_s = took if self._ewma_s is None else EWMA_ALPHA * took + (1 - EWMA_ALPHA) * self._ewma_s
        interval = max(0.0, now - max(t0, self._last_done if self._last_done is not None else t0))
        self._interval_s = interval if self._interval_s is None else \
            EWMA_ALPHA * interval + (1 - EWMA_ALPHA) * self._interval_s
        if admission.slot_s > 0:  # a request that used no slot (all its tasks refused) teaches nothing
            self._slot_use.append((admission.slot_s, admission.tasks))
        self._last_done = now
        self._expire(now)
        self._assign(now)

    def _refuse_unless_room(self, key: Hashable, ticket: str | None, now: float, tasks: int,
                            client: Hashable | None = None) -> None:
        """Raise :class:`Busy` unless a free, unheld place is there for ``key`` within its share and
        in time; a refused caller keeps (or gets) its place in the line of tickets (call locked)."""
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
        if ticket is not None:  # keeps its place in the line; told again when
            position = list(self._tickets).index(ticket) + 1
            wait = self._retry_after(position)
            self._tickets[ticket].due = now + wait
            self._tickets[ticket].tasks = tasks
            raise Busy(message + " (your reservation keeps its place in the line)", wait, ticket)
        if len(self._tickets) >= self.max_tickets:
            self.counters["tickets_refused"] += 1
            raise Busy(message, self._retry_after(len(self._tickets) + 1))
        if client is not None and self._client_tickets.get(client, 0) >= self.max_tickets_per_client:
            oldest = next((tid for tid, t in self._tickets.items() if t.client == client and not t.held), None)
            if oldest is None:  # every one of them holds a place: no more for this address
                self.counters["tickets_per_client_refused"] += 1
                raise Busy(message + f" (no reservation: this address already has {self.max_tickets_per_client} "
                                     f"holding places, twice the places)", self._retry_after(len(self._tickets) + 1))
            self._drop(oldest)  # the address's oldest waiting ticket makes room (its caller queues afresh)
            self.counters["tickets_per_client_evicted"] += 1
        position = sum(1 for t in self._tickets.values() if not t.held) + 1
        wait = self._retry_after(position)
        tid = secrets.token_urlsafe(12)
        self._tickets[tid] = Ticket(key, now + wait, tasks, client=client)
        if client is not None:
            self._client_tickets[client] = self._client_tickets.get(client, 0) + 1
        raise Busy(message, wait, tid)

    def _retry_after(self, position: int = 1) -> int:
        """Seconds until ``position`` more places are likely free: the moving average of the time
        between request completions times ``position`` (1..120; 5 before any request finished).
        Call locked."""
        if self._interval_s is None:
            return 5
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(round(self._interval_s * position, 2)))))

    def retry_after(self) -> int:
        """``Retry-After`` a caller refused now would get (behind the tickets waiting)."""
        with self._lock:
            return self._retry_after(sum(1 for t in self._tickets.values() if not t.held) + 1)

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
            waiting = sum(1 for t in self._tickets.values() if not t.held)
            return {"slots": self.slots, "max_queue": self.max_queue, "queue_wait_s": self.queue_wait_s,
                    **self._calls.stats(), "requests": self._requests, "tasks_in": self._tasks_in,
                    "projects": len(self._per_key), "queue_full": self._requests + self._held >= self.capacity,
                    "tickets": len(self._tickets), "held_places": self._held,
                    "retry_after_s": self._retry_after(waiting + 1),
                    "task_s": round(self.task_s, 3),
                    "queued_work_s": round(self._wait_s(0), 1),
                    "mean_request_s": round(self._ewma_s, 3) if self._ewma_s is not None else None,
                    "mean_interval_s": round(self._interval_s, 3) if self._interval_s is not None else None,
                    **self.counters}
