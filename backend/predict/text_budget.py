"""Text encoding of a ``/predict`` under a time budget, the rest continued in the background.

A label set's prompts are encoded through the CLIP text tower (80 templates each) in chunks of
:data:`TEXT_CHUNK`, one inference slot turn per chunk, each embedding cached as it is computed (by
the engine's text encoder: in-process, and in Redis with ``REDIS_URL``). One request spends at most
``budget_s`` seconds *encoding* new prompts (time inside the slot), and stops too once the request
as a whole has run for the predictor's ``predict_budget_s`` before a chunk with new prompts. A chunk
the text encoder already holds (``is_cached``) takes no slot turn and no budget, so a long batch over
a known label set never trips it. It then raises :class:`TextNotReady` (each task gets an error
entry saying to retry) and hands the remaining chunks to a background thread, at most
``max_background`` label sets at once (beyond that nothing is started, and the next request continues
where this one stopped, since what was encoded is cached). A request for a label set that is being
encoded in the background waits for it within its own budget (holding no slot) instead of encoding
the same prompts twice.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Callable, Sequence

from backend.config import Settings

log = logging.getLogger("backend.predict.text_budget")

#: Prompts encoded per inference slot turn (80 templates each through the CLIP text tower).
TEXT_CHUNK = 16


class TextNotReady(Exception):
    """The label set's new prompts did not all fit in this request's text budget (a task error)."""


class _Job:
    """One label set being encoded in the background: ``done`` prompts of ``total``."""

    def __init__(self, total: int, done: int):
        self.total, self.done = total, done
        self.finished = threading.Event()


class TextPreparer:
    """Budgeted, chunked text encoding shared by all requests of one predictor.

    ``slots``: the predictor's :class:`~backend.predict.slots.InferenceSlots` (used as ``with slots:``);
    ``clock``: seconds (the predictor's; a fake one in unit tests)."""

    def __init__(self, slots, *, budget_s: float = Settings.default("text_budget_s"),
                 request_budget_s: float = Settings.default("predict_budget_s"),
                 clock: Callable[[], float] = time.monotonic, max_background: int = 1,
                 chunk: int = TEXT_CHUNK):
        if budget_s <= 0 or max_background < 0 or chunk < 1:
            raise ValueError("budget_s must be > 0, max_background >= 0 and chunk >= 1")
        self.slots = slots
        self.budget_s = float(budget_s)
        self.request_budget_s = float(request_budget_s)
        self.clock = clock
        self.max_background = int(max_background)
        self.chunk = int(chunk)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._chunk_s: float | None = None  # moving average of one new chunk's encoding time
        self.counters = {"background_started": 0, "background_done": 0, "background_refused": 0,
                         "background_failed": 0, "requests_over_budget": 0}

    # -- per request ------------------------------------------------------------------------
    def start_request(self) -> None:
        """Call at the start of each ``/predict`` (on its thread): resets this request's budget."""
        self._local.start = self.clock()
        self._local.used = 0.0

    def end_request(self) -> None:
        """Call when the ``/predict`` ends (so other calls on this thread have no request budget)."""
        self._local.start = None
        self._local.used = 0.0

    def _used(self) -> float:
        return getattr(self._local, "used", 0.0)

    def _over(self) -> bool:
        start = getattr(self._local, "start", None)
        over_request = start is not None and self.clock() - start >= self.request_budget_s
        return self._used() >= self.budget_s or over_request

    # -- encoding ---------------------------------------------------------------------------
    def prepare(self, text: Callable[[Sequence[str]], object], queries: Sequence[str]) -> None:
        """Make sure every query of ``queries`` is encoded (cached by ``text``), within this request's
        budget; :class:`TextNotReady` when it is not, the rest continuing in the background."""
        queries = list(queries)
        key = hashlib.sha256("\n".join(queries).encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            job = self._jobs.get(key)
        if job is not None:  # being encoded in the background: wait for it within the budget
            self._wait(job, len(queries))
        is_cached = getattr(text, "is_cached", None)
        for i in range(0, len(queries), self.chunk):
            chunk = queries[i:i + self.chunk]
            if is_cached is not None and all(is_cached(q) for q in chunk):
                continue  # nothing to encode: no slot turn, no budget
            if self._over():
                self._stop(text, queries, key, i)
            with self.slots:
                t0 = self.clock()
                text(chunk)
                took = max(0.0, self.clock() - t0)
            self._local.used = self._used() + took
            if took > 0:
                with self._lock:
                    self._chunk_s = took if self._chunk_s is None else 0.3 * took + 0.7 * self._chunk_s

    def _wait(self, job: _Job, total: int) -> None:
        start = getattr(self._local, "start", None)
        start = self.clock() if start is None else start
        left = min(self.budget_s - self._used(), self.request_budget_s - (self.clock() - start))
        if left > 0 and job.finished.wait(left):
            return
        if job.finished.is_set():
            return
        with self._lock:
            self.counters["requests_over_budget"] += 1
        raise TextNotReady(self._message(total, job.done, background=True))

    def _stop(self, text, queries: list[str], key: str, done: int) -> None:
        """Budget used up at chunk offset ``done``: continue in the background (if there is room)."""
        started = False
        with self._lock:
            self.counters["requests_over_budget"] += 1
            if key in self._jobs:
                started = True
            elif sum(not j.finished.is_set() for j in self._jobs.values()) < self.max_background:
                job = _Job(len(queries), done)
                self._jobs[key] = job
                self.counters["background_started"] += 1
                threading.Thread(target=self._background, args=(text, queries, key, job), daemon=True,
                                 name=f"cass-text-{key[:8]}").start()
                started = True
            else:
                self.counters["background_refused"] += 1
        is_cached = getattr(text, "is_cached", None)
        left = sum(1 for q in queries[done:] if is_cached is None or not is_cached(q))
        raise TextNotReady(self._message(len(queries), len(queries) - left, background=started))

    def _background(self, text, queries: list[str], key: str, job: _Job) -> None:
        try:
            for i in range(job.done, len(queries), self.chunk):
                with self.slots:  # one turn per chunk: other requests' image work interleaves
                    text(queries[i:i + self.chunk])
                job.done = min(len(queries), i + self.chunk)
            with self._lock:
                self.counters["background_done"] += 1
            log.info("background text encoding of %d prompts done", len(queries))
        except Exception:
            with self._lock:
                self.counters["background_failed"] += 1
            log.exception("background text encoding of %d prompts failed", len(queries))
        finally:
            with self._lock:
                self._jobs.pop(key, None)
            job.finished.set()

    def _message(self, total: int, done: int, *, background: bool) -> str:
        with self._lock:
            chunk_s = self._chunk_s
        left = max(0, total - done)
        eta = f" in about {max(1, math.ceil(chunk_s * math.ceil(left / self.chunk)))}s" if chunk_s else " later"
        where = ("they are being encoded in the background; retrieve predictions again" + eta
                 if background else
                 "no background encoding is free (CASS_TEXT_BUDGET_S work of other label sets is running); "
                 "the next request continues where this one stopped: retrieve predictions again")
        return (f"not predicted: the label set has {total} prompts and {left} of them are not encoded yet "
                f"(this request's text budget is {self.budget_s:g}s, CASS_TEXT_BUDGET_S); {where}")

    def stats(self) -> dict:
        with self._lock:
            return {"budget_s": self.budget_s, "background_running":
                    sum(not j.finished.is_set() for j in self._jobs.values()),
                    "chunk_s": round(self._chunk_s, 3) if self._chunk_s is not None else None, **self.counters}
