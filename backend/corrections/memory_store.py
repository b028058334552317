"""Where project memories live: Redis (shared by workers and replicas) or in-process without it.

Per project and image-feature fingerprint (other weights never mix):

* ``cass:mem:v<format>:<fingerprint>:<project>`` - a hash, field = source id (the annotation id),
  value = :meth:`cass.memory_entry.MemoryEntry.to_bytes` (float16 prototypes and a small JSON header);
* ``...:seq`` - the entry sequence counter (newer entries win the per-label bound);
* ``...:rev`` - bumped on every change, so a process re-reads the hash only when it changed.
"""
from __future__ import annotations

import threading

from cass.memory_entry import MEMORY_FORMAT_VERSION, MemoryEntry


class MemoryStore:
    """Memory entries per (project, fingerprint). ``client``: a ``redis.Redis``, or None: in-process."""

    def __init__(self, client=None, prefix: str = "cass:mem"):
        self.client = client
        self.prefix = f"{prefix}:v{MEMORY_FORMAT_VERSION}"
        self._lock = threading.Lock()
        self._local: dict[str, dict[str, bytes]] = {}
        self._counters: dict[str, int] = {}

    @classmethod
    def from_url(cls, redis_url: str | None) -> "MemoryStore":
        """``redis_url``: the **state** Redis (``Settings.state_redis_url``: ``CASS_STATE_REDIS_URL``,
        else ``REDIS_URL``), never the evictable feature cache; None: in-process."""
        if not redis_url:
            return cls()
        import redis

        return cls(redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5))

    @property
    def backend(self) -> str:
        return "redis" if self.client is not None else "memory"

    def key(self, project, fingerprint: str) -> str:
        return f"{self.prefix}:{fingerprint}:{project}"

    def _incr(self, key: str) -> int:
        if self.client is not None:
            return int(self.client.incr(key))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            return self._counters[key]

    def next_seq(self, project, fingerprint: str) -> int:
        return self._incr(self.key(project, fingerprint) + ":seq")

    def revision(self, project, fingerprint: str) -> int:
        key = self.key(project, fingerprint) + ":rev"
        if self.client is not None:
            return int(self.client.get(key) or 0)
        with self._lock:
            return self._counters.get(key, 0)

    def put(self, project, fingerprint: str, entry: MemoryEntry) -> int:
        """Store (or replace) ``entry``; returns its size in bytes."""
        blob = entry.to_bytes()
        key = self.key(project, fingerprint)
        if self.client is not None:
            pipe = self.client.pipeline()
            pipe.hset(key, entry.source, blob)
            pipe.incr(key + ":rev")
            pipe.execute()
        else:
            with self._lock:
                self._local.setdefault(key, {})[entry.source] = blob
            self._incr(key + ":rev")
        return len(blob)

    def remove(self, project, fingerprint: str, source: str) -> bool:
        key = self.key(project, fingerprint)
        if self.client is not None:
            removed = bool(self.client.hdel(key, source))
        else:
            with self._lock:
                removed = self._local.get(key, {}).pop(source, None) is not None
        if removed:
            self._incr(key + ":rev")
        return removed

    def entries(self, project, fingerprint: str) -> list[MemoryEntry]:
        key = self.key(project, fingerprint)
        if self.client is not None:
            blobs = list(self.client.hgetall(key).values())
        else:
            with self._lock:
                blobs = list(self._local.get(key, {}).values())
        return [MemoryEntry.from_bytes(b) for b in blobs]

    def nbytes(self, project, fingerprint: str) -> int:
        """Bytes of the stored entries (values only; Redis adds its per-field overhead)."""
        key = self.key(project, fingerprint)
        if self.client is not None:
            return sum(len(v) for v in self.client.hgetall(key).values())
        with self._lock:
            return sum(len(v) for v in self._local.get(key, {}).values())
