"""Issue 21 "Admission can be gamed": reservation tickets are bounded per client address, and a
place held for a ticket lapses ``grace_s`` after it was held, whatever the ticket's due time.

Fake clock, no threads: requests are entered and left by hand."""
from __future__ import annotations

from contextlib import ExitStack

import pytest

from backend.predict.slots import InferenceSlots
from backend.predict.tickets import Busy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _try(slots: InferenceSlots, key: str, client: str, ticket: str | None = None):
    """Admit and leave at once; the Busy when refused, else None."""
    try:
        with slots.admit(key, ticket=ticket, client=client):
            return None
    except Busy as exc:
        return exc


def test_many_refused_projects_from_one_address_cannot_hoard_places():
    clock = Clock()
    slots = InferenceSlots(1, 2, clock=clock)
    with ExitStack() as stack:
        for n in range(3):  # every place taken by real work
            stack.enter_context(slots.admit(f"work{n}", client="10.0.0.2"))
        refusals = [_try(slots, f"p{n}", "10.0.0.66") for n in range(200)]
        assert all(isinstance(r, Busy) for r in refusals)
        assert slots.stats()["tickets"] == 2 * slots.capacity  # bounded per client address
        assert slots.stats()["tickets_per_client_evicted"] == 200 - 2 * slots.capacity
    # the work is done, nobody is in: the hoarder's tickets hold each place twice for grace_s at most
    clock.t += 2 * slots.grace_s + 0.2
    assert _try(slots, "project:ls", "10.0.0.1") is None
    assert slots.stats()["held_places"] == 0


def test_a_held_place_lapses_grace_s_after_it_was_held_even_if_the_ticket_is_due_later():
    clock = Clock()
    slots = InferenceSlots(1, 0, clock=clock)
    with slots.admit("a", client="c1"):
        clock.t += 100.0  # the measured interval between completions: 100 s
    with slots.admit("a", client="c1"):
        refused = _try(slots, "b", "c2")
        assert refused is not None and refused.retry_after_s >= 90  # due in ~100 s
        clock.t += 1.0
    assert slots.stats()["held_places"] == 1  # the place is held for b's ticket from now on...
    clock.t += slots.grace_s + 0.1
    # ...but not for 100 s: after grace_s an idle backend serves whoever comes
    assert _try(slots, "project:ls", "c4") is None


def test_a_ticket_holder_still_gets_its_held_place():
    clock = Clock()
    slots = InferenceSlots(1, 0, clock=clock)
    with slots.admit("a", client="c1"):
        refused = _try(slots, "b", "c2")
    clock.t += 1.0
    assert isinstance(_try(slots, "c", "c3"), Busy)  # held for b
    assert _try(slots, "b", "c2", ticket=refused.ticket) is None


def test_a_caller_that_never_presents_its_ticket_takes_its_own_held_place_once_due():
    """Label Studio never sends the ticket back: its next request must not be refused by its own
    reservation (before, its refusals kept places held for itself, and it for ever)."""
    clock = Clock()
    slots = InferenceSlots(1, 0, clock=clock)
    with slots.admit("a", client="c1"):
        refused = _try(slots, "project:ls", "ls")
    assert isinstance(refused, Busy)
    clock.t += refused.retry_after_s
    assert _try(slots, "project:ls", "ls") is None
    assert slots.stats()["tickets"] == 0


@pytest.mark.parametrize("per_client", [1, 4])
def test_the_per_client_bound_is_configurable(per_client):
    clock = Clock()
    slots = InferenceSlots(1, 0, clock=clock, max_tickets_per_client=per_client)
    with slots.admit("a", client="c1"):
        refusals = [_try(slots, f"p{n}", "c9") for n in range(10)]
        assert all(r.ticket for r in refusals)  # the newest callers hold the address's tickets
        assert slots.stats()["tickets"] == per_client
