"""Reservations of refused ``/predict`` callers: :class:`Busy`, :class:`Ticket` and the line of them.

A caller that :class:`backend.predict.slots.InferenceSlots` refuses is answered :class:`Busy`
(HTTP 503 with ``Retry-After``) and, while there is room, given a **ticket**: its place in one FIFO
:class:`TicketLine` of refused callers, told when its turn is likely (``Retry-After``: the measured
interval between request completions times its position in the line, :mod:`backend.predict.pace`).

The rules, applied by the slots under their lock (the line itself is not thread-safe): a place that
frees while tickets wait is *held* for the oldest ticket whose project is under its share; a caller
without a (held) ticket cannot take a held place, so a client that re-sends the moment it is answered
no longer retakes the place it freed from the one that was told to come back. A waiting ticket
expires ``grace_s`` after it falls due, a held place ``grace_s`` after it was held (Label Studio itself
never retries a 503, so its reservations must not keep places for long); one client address has at
most ``max_tickets_per_client`` tickets (2 x the places; its oldest waiting one makes room), and a
request without a ticket takes a due held place of its own address and project.
"""
from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

from backend.config import Settings

#: What a ticket id looks like (``secrets.token_urlsafe``); anything else is refused by the HTTP edge.
TICKET_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: Seconds a reservation stays valid after it falls due (or after its place was held, if later).
DEFAULT_GRACE_S = Settings.default("reservation_grace_s")


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


class TicketLine:
    """The tickets by id, oldest first, and the number each client address holds (call locked):
    at most ``max_tickets`` in all and ``max_per_client`` per client address."""

    def __init__(self, max_tickets: int, max_per_client: int) -> None:
        self.max_tickets, self.max_per_client = max_tickets, max_per_client
        self._tickets: "OrderedDict[str, Ticket]" = OrderedDict()
        self._per_client: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def __iter__(self) -> Iterator[Ticket]:
        """The tickets, oldest first."""
        return iter(self._tickets.values())

    def get(self, tid: str | None) -> Ticket | None:
        return self._tickets.get(tid) if tid else None

    def position(self, tid: str) -> int:
        """1-based place of ticket ``tid`` in the line (held ones counted)."""
        return list(self._tickets).index(tid) + 1

    def waiting(self) -> int:
        """Tickets no place is held for yet."""
        return sum(1 for t in self._tickets.values() if not t.held)

    def held_by(self, client: Hashable | None) -> int:
        """Tickets of client address ``client``."""
        return self._per_client.get(client, 0)

    def issue(self, key: Hashable, due: float, tasks: int, client: Hashable | None) -> str:
        """A new ticket at the end of the line; its id."""
        tid = secrets.token_urlsafe(12)
        self._tickets[tid] = Ticket(key, due, tasks, client=client)
        if client is not None:
            self._per_client[client] = self._per_client.get(client, 0) + 1
        return tid

    def drop(self, tid: str) -> Ticket:
        """Take ticket ``tid`` out of the line (its client's count too)."""
        ticket = self._tickets.pop(tid)
        if ticket.client is not None:
            left = self._per_client.get(ticket.client, 1) - 1
            if left > 0:
                self._per_client[ticket.client] = left
            else:
                self._per_client.pop(ticket.client, None)
        return ticket

    def expire(self, now: float, grace_s: float) -> list[Ticket]:
        """Drop the tickets past their grace at ``now``; they are returned, oldest first."""
        return [self.drop(tid) for tid in [t for t, ticket in self._tickets.items() if now > ticket.expires(grace_s)]]

    def own_due(self, key: Hashable, client: Hashable | None, now: float) -> str | None:
        """A held ticket of this client address and project that is due: a caller that never presents
        its tickets (Label Studio) takes the place held for it instead of being refused by it."""
        if client is None:
            return None
        for tid, ticket in self._tickets.items():
            if ticket.held and ticket.client == client and ticket.key == key and now >= ticket.due:
                return tid
        return None

    def oldest_waiting(self, client: Hashable) -> str | None:
        """The oldest ticket of ``client`` no place is held for (None: all of them hold one)."""
        return next((tid for tid, t in self._tickets.items() if t.client == client and not t.held), None)

    def refusal(self, message: str, key: Hashable, ticket: str | None, now: float, tasks: int,
                client: Hashable | None, retry_after: Callable[[int], int], counters: dict[str, int]) -> Busy:
        """The :class:`Busy` (``message``) for a caller of project ``key`` refused at ``now``: a caller
        presenting ``ticket`` keeps its place in the line and is told again when; a new caller gets a
        ticket at the end of the line, unless the line is full or its address holds its limit (its
        oldest waiting ticket makes room, unless every one holds a place). ``retry_after(position)``:
        seconds to tell; ``counters``: the slots' counters of refused and evicted tickets."""
        if ticket is not None:  # keeps its place in the line; told again when
            mine = self._tickets[ticket]
            wait = retry_after(self.position(ticket))
            mine.due, mine.tasks = now + wait, tasks
            return Busy(message + " (your reservation keeps its place in the line)", wait, ticket)
        if len(self._tickets) >= self.max_tickets:
            counters["tickets_refused"] += 1
            return Busy(message, retry_after(len(self._tickets) + 1))
        if client is not None and self.held_by(client) >= self.max_per_client:
            oldest = self.oldest_waiting(client)
            if oldest is None:  # every one of them holds a place: no more for this address
                counters["tickets_per_client_refused"] += 1
                return Busy(message + f" (no reservation: this address already has {self.max_per_client} "
                                      f"holding places, twice the places)", retry_after(len(self._tickets) + 1))
            self.drop(oldest)  # the address's oldest waiting ticket makes room (its caller queues afresh)
            counters["tickets_per_client_evicted"] += 1
        wait = retry_after(self.waiting() + 1)
        return Busy(message, wait, self.issue(key, now + wait, tasks, client))
