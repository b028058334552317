"""The last download outcome per Label Studio origin, for ``/health``."""
from __future__ import annotations

import threading
import time
from typing import Callable

import cachetools

from backend.fetch.urls import show_url


class DownloadHealth:
    """The last download outcome per Label Studio origin (for ``/health``): reachable or not, the
    failures in a row and the last error (connection failures and timeouts; an HTTP answer, even an
    error status, means the host is reachable)."""

    MAX_ORIGINS = 16

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        # the MAX_ORIGINS most recently recorded origins (LRU by record; iteration is that order)
        self._origins: cachetools.LRUCache = cachetools.LRUCache(maxsize=self.MAX_ORIGINS)

    def record(self, base_url: str, error: str | None) -> None:
        key = show_url(base_url).split("?")[0].rstrip("/")
        with self._lock:
            state = self._origins.pop(key, None) or {"failures_in_a_row": 0}
            state["reachable"] = error is None
            state["at"] = self.clock()
            if error is None:
                state["failures_in_a_row"] = 0
                state.pop("last_error", None)
            else:
                state["failures_in_a_row"] += 1
                state["last_error"] = error
            self._origins[key] = state

    def report(self) -> dict:
        now = self.clock()
        with self._lock:
            return {key: {**{k: v for k, v in state.items() if k != "at"},
                          "seconds_ago": round(now - state["at"], 1)}
                    for key, state in self._origins.items()}

    def clear(self) -> None:
        with self._lock:
            self._origins.clear()


#: Label Studio download outcomes of this process (``/health``).
DOWNLOADS = DownloadHealth()
