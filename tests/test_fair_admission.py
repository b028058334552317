"""Fair admission (issue 9 item 8), unit level: a discrete-event simulation on a fake clock.

The simulated load is the load test's: 16 clients in 4 projects, 1 slot + 8 queued places, every
request served for 1 s (FIFO, one at a time), a client whose answer arrives re-sends at the same
instant, a refused client waits its ``Retry-After`` and re-sends with the reservation ticket the 503
handed it (if any). Before reservations, the client that had just been served re-took the place it
freed, and the fourth client of each project was never admitted.

No wall-clock timing: the clock is fake, and so is the service time (named ``FAKE_SERVICE_S``).
"""
from __future__ import annotations

import heapq
import itertools

import pytest

from backend.slots import Busy, InferenceSlots

FAKE_SERVICE_S = 1.0


def simulate(clients: int = 16, projects: int = 4, slots_n: int = 1, queue: int = 8, duration: float = 240.0,
             returns: bool = True):
    """Run the simulation; per client the (fake) times its requests were answered 200, and the slots."""
    now = [0.0]
    slots = InferenceSlots(slots_n, max_queue=queue, clock=lambda: now[0])
    served: dict[int, list[float]] = {c: [] for c in range(clients)}
    tickets: dict[int, str | None] = {c: None for c in range(clients)}
    events: list = []  # (time, order, kind, client)
    order = itertools.count()
    fifo: list[tuple[int, object]] = []  # admitted, waiting for the server: (client, context)
    in_service: list = [None]

    def send(c: int):
        key = f"project:{c % projects}"
        extra = {"ticket": tickets[c]} if tickets[c] else {}
        ctx = slots.admit(key, **extra)
        try:
            ctx.__enter__()
        except Busy as exc:
            tickets[c] = getattr(exc, "ticket", None)
            if returns:
                heapq.heappush(events, (now[0] + exc.retry_after_s, next(order), "send", c))
            return
        tickets[c] = None
        fifo.append((c, ctx))
        start_next()

    def start_next():
        if in_service[0] is None and fifo:
            in_service[0] = fifo.pop(0)
            heapq.heappush(events, (now[0] + FAKE_SERVICE_S, next(order), "done", in_service[0][0]))

    for c in range(clients):
        heapq.heappush(events, (0.0, next(order), "send", c))
    while events:
        t, _, kind, c = heapq.heappop(events)
        if t > duration:
            break
        now[0] = t
        if kind == "done":
            _, ctx = in_service[0]
            in_service[0] = None
            ctx.__exit__(None, None, None)
            served[c].append(t)
            start_next()
            send(c)  # re-sends at once
        else:
            send(c)
    return served, slots


def max_gap(times: list[float], duration: float) -> float:
    edges = [0.0, *times, duration]
    return max(b - a for a, b in zip(edges, edges[1:]))


def test_simulated_load_test_serves_every_client_at_least_once_a_minute():
    served, slots = simulate()
    starved = [c for c, times in served.items() if not times]
    assert not starved, f"clients never admitted: {starved}"
    gaps = {c: round(max_gap(times, 240.0), 1) for c, times in served.items()}
    assert max(gaps.values()) <= 60.0, gaps
    # throughput is not given up for it: the one server is busy almost all the time
    assert sum(len(t) for t in served.values()) >= 0.9 * 240 / FAKE_SERVICE_S


@pytest.mark.parametrize("clients,projects", [(16, 1), (12, 12), (20, 4), (9, 3)])
def test_no_client_starves_in_other_mixes(clients, projects):
    served, _ = simulate(clients=clients, projects=projects, duration=180.0)
    gaps = {c: round(max_gap(times, 180.0), 1) for c, times in served.items()}
    assert max(gaps.values()) <= 60.0, gaps


def test_callers_that_never_come_back_do_not_keep_places_for_long():
    """Label Studio itself does not retry a 503: the places its refused calls reserved are given back
    after a short grace, and the backend serves again at full capacity."""
    served, slots = simulate(clients=16, projects=4, duration=120.0, returns=False)
    stats = slots.stats()
    assert stats["requests"] <= 9
    # after the callers stopped coming back, every place is usable by a fresh caller
    clock = slots.clock
    later = clock() + 3600
    slots.clock = lambda: later
    held = []
    for i in range(9):
        ctx = slots.admit(f"new:{i}")
        ctx.__enter__()
        held.append(ctx)
    for ctx in held:
        ctx.__exit__(None, None, None)
    slots.clock = clock
