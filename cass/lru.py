"""A thread-safe LRU of ``bytes`` values bounded in bytes, with a sliding TTL (the feature cache's
in-process store and the Redis cache's fallback)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable


class ByteLRU:
    """Thread-safe LRU of ``bytes`` values bounded in total bytes (and optionally entries), with a
    sliding TTL (a read renews it). A value larger than ``max_bytes`` is not stored."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes = int(max_bytes)
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def _deadline(self) -> float:
        return float("inf") if self.ttl_s is None else self.clock() + self.ttl_s

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            value, expires = item
            if self.clock() >= expires:
                self._remove(key)
                self.expirations += 1
                return None
            self._data[key] = (value, self._deadline())
            self._data.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> bool:
        """Store (most recently used); evicts least recently used entries. False if too large."""
        value = bytes(value)
        with self._lock:
            self._remove(key)
            if len(value) > self.max_bytes:
                return False
            self._data[key] = (value, self._deadline())
            self.nbytes += len(value)
            while self._data and (self.nbytes > self.max_bytes or
                                  (self.max_entries is not None and len(self._data) > self.max_entries)):
                old, (old_value, _) = self._data.popitem(last=False)
                self.nbytes -= len(old_value)
                self.evictions += 1
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)

    def _remove(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.nbytes -= len(item[0])
