"""The project's one LRU: a thread-safe wrapper of :class:`cachetools.LRUCache` bounded in total size
(``sizeof`` of the values: bytes for the feature cache, an estimate for parsed label configs) and
optionally in entries, with an optional sliding TTL (a read renews it).

Users: the feature cache's in-process store and Redis fallback (:class:`ByteLRU`), the backend's
parsed-config and project caches (``backend.controls.limits.ByteBoundedLRU``).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, TypeVar

import cachetools

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LRUCache(cachetools.LRUCache):
    """``cachetools.LRUCache`` that also caps the number of entries and counts evictions."""

    def __init__(self, maxsize: int, getsizeof: Callable[[object], int], max_entries: int | None):
        super().__init__(maxsize, getsizeof)
        self.max_entries = max_entries
        self.evictions = 0

    def popitem(self):
        item = super().popitem()
        self.evictions += 1
        return item

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while self.max_entries is not None and len(self) > self.max_entries:
            self.popitem()


class BoundedLRU(Generic[K, V]):
    """Thread-safe LRU whose values' ``sizeof`` sum stays at most ``max_bytes`` (and at most
    ``max_entries`` entries), each entry living ``ttl_s`` since its last use (None: no expiry).
    A value whose size alone exceeds ``max_bytes`` is not stored (``put`` returns False)."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None, ttl_s: float | None = None,
                 sizeof: Callable[[V], int] = len, clock: Callable[[], float] = time.monotonic):
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        if max_entries is not None and int(max_entries) < 1:
            raise ValueError(f"max_entries must be >= 1 (or None), got {max_entries!r}")
        self.max_bytes = int(max_bytes)
        self.max_entries = None if max_entries is None else int(max_entries)
        self.ttl_s = ttl_s
        self.sizeof = sizeof
        self.clock = clock
        # items are (value, size, deadline); the size is computed once, at put
        self._data = _LRUCache(self.max_bytes, lambda item: item[1], self.max_entries)
        self._lock = threading.Lock()
        self.expirations = 0

    def _deadline(self) -> float:
        return float("inf") if self.ttl_s is None else self.clock() + self.ttl_s

    def get(self, key: K, default=None):
        """The value (now the most recently used, its TTL renewed), or ``default``."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            value, size, expires = item
            del self._data[key]
            if self.clock() >= expires:
                self.expirations += 1
                return default
            self._data[key] = (value, size, self._deadline())  # re-inserted: iteration is LRU order
            return value

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` (most recently used), evicting least recently used entries; False when it
        alone is over ``max_bytes`` (then nothing is kept for ``key``)."""
        size = int(self.sizeof(value))
        with self._lock:
            self._data.pop(key, None)
            if size > self.max_bytes:
                return False
            self._data[key] = (value, size, self._deadline())
            return True

    def delete(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._data)

    @property
    def nbytes(self) -> int:
        """Total ``sizeof`` of the stored values."""
        with self._lock:
            return int(self._data.currsize)

    bytes = nbytes

    @property
    def evictions(self) -> int:
        return self._data.evictions

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data


class ByteLRU(BoundedLRU[str, bytes]):
    """:class:`BoundedLRU` of ``bytes`` values sized by their length (the feature cache's in-process
    store and the Redis cache's fallback)."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(max_bytes, max_entries=max_entries, ttl_s=ttl_s, sizeof=len, clock=clock)

    def put(self, key: str, value: bytes) -> bool:
        return super().put(key, bytes(value))
