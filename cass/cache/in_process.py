"""In-process feature cache: an LRU bounded in bytes (features) and entries (text), with a TTL."""
from __future__ import annotations

import logging
import time
from typing import Callable

from cass.cache.flight import _BaseCache
from cass.cache.keys import DEFAULT_TEXT_MAX_ENTRIES, KEY_PREFIX
from cass.cache.settings import DEFAULT_MAX_BYTES, DEFAULT_TTL_S
from cass.lru import ByteLRU

log = logging.getLogger("cass.cache")


class MemoryCache(_BaseCache):
    """In-process LRU bounded in bytes (features) and entries (text embeddings), with a TTL."""

    backend = "memory"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, ttl_s: float = DEFAULT_TTL_S, *,
                 text_max_entries: int = DEFAULT_TEXT_MAX_ENTRIES, prefix: str = KEY_PREFIX,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(ttl_s, prefix)
        self.max_bytes = int(max_bytes)
        self._lru = ByteLRU(max_bytes, ttl_s=ttl_s, clock=clock)
        self._text = ByteLRU(max_bytes, max_entries=text_max_entries, ttl_s=ttl_s, clock=clock)

    def _load(self, key: str) -> bytes | None:
        return self._lru.get(key)

    def _store(self, key: str, blob: bytes) -> None:
        if self._lru.put(key, blob):
            self._count("bytes_stored", len(blob))
        else:
            self._count("not_stored")
            log.debug("features of %d bytes exceed the cache size %d: not cached", len(blob), self.max_bytes)

    def _discard(self, key: str) -> None:
        self._lru.delete(key)

    def _load_text(self, key: str) -> bytes | None:
        return self._text.get(key)

    def _store_text(self, key: str, value: bytes) -> None:
        self._text.put(key, value)

    def stats(self) -> dict:
        out = super().stats()
        out.update(entries=len(self._lru), bytes=self._lru.nbytes, max_bytes=self.max_bytes,
                   evictions=self._lru.evictions, expirations=self._lru.expirations,
                   text_entries=len(self._text), reachable=True)
        return out

    def health(self) -> dict:
        return {"backend": "memory", "reachable": True, "entries": len(self._lru),
                "bytes": self._lru.nbytes, "max_bytes": self.max_bytes}
