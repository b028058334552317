"""Redis feature cache shared by every worker and replica, with an in-process fallback LRU that
serves while Redis is unreachable, an outage state machine (log once per outage, back off for
``retry_interval_s``) and a cross-process single-flight lock. See docs/cache.md.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from cass.cache.flight import _BaseCache
from cass.cache.keys import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_TEXT_MAX_ENTRIES, KEY_PREFIX, redact_url
from cass.cache.settings import (DEFAULT_FALLBACK_MAX_BYTES, DEFAULT_LOCK_TTL_S, DEFAULT_LOCK_WAIT_S,
                                 DEFAULT_RETRY_INTERVAL_S, DEFAULT_SOCKET_TIMEOUT_S, DEFAULT_TTL_S)
from cass.features import ImageFeatures
from cass.lru import ByteLRU

log = logging.getLogger("cass.cache")

_DOWN = object()   # Redis unreachable (or in back-off): the call was not made or failed to connect
_FAILED = object()  # Redis answered with an error



class RedisCache(_BaseCache):
    """Features and text embeddings in Redis (``SET ... EX ttl``; hits renew the TTL with GETEX,
    so Redis >= 6.2), with a cross-process single-flight lock and an in-process fallback LRU.

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        ttl_s: entry lifetime since last use.
        fallback_max_bytes: in-process LRU used while Redis is unreachable (0 disables it).
        socket_timeout_s / connect_timeout_s: per operation; a hung Redis costs at most about
            twice this per request (one retry on a fresh connection), then the back-off applies.
        retry_interval_s: after a connection failure, Redis is not tried again for this long.
        lock_ttl_s: lifetime of the compute lock (should exceed one ``encode``); if the holder
            dies, others take over after at most this long.
        lock_wait_s: how long a process waits for another one's computation before computing
            itself.
        poll_interval_s: first polling interval while waiting (grows to 0.5 s).
        client: a ready ``redis.Redis`` (tests); ``url`` is then only used for display.
        holds_state: this Redis is also the state Redis (one ``REDIS_URL`` for both roles): the start
            warning then never advises an evicting policy (that would drop jobs and memories).
    """

    backend = "redis"

    def __init__(self, url: str, *, ttl_s: float = DEFAULT_TTL_S,
                 fallback_max_bytes: int = DEFAULT_FALLBACK_MAX_BYTES,
                 text_max_entries: int = DEFAULT_TEXT_MAX_ENTRIES,
                 socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
                 lock_ttl_s: float = DEFAULT_LOCK_TTL_S, lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
                 poll_interval_s: float = 0.05, prefix: str = KEY_PREFIX, client=None,
                 clock: Callable[[], float] = time.monotonic, holds_state: bool = False):
        super().__init__(ttl_s, prefix)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors_down = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._errors_other = (redis.exceptions.RedisError,)
        self.url = redact_url(url)
        self.retry_interval_s = float(retry_interval_s)
        if not float(lock_ttl_s) > 0:
            raise ValueError(f"lock_ttl_s must be > 0 seconds (the compute lock's lifetime), got {lock_ttl_s!r}")
        self.lock_ttl_s = float(lock_ttl_s)
        self.lock_wait_s = float(lock_wait_s)
        self.poll_interval_s = float(poll_interval_s)
        self.clock = clock
        self.fallback_max_bytes = int(fallback_max_bytes)
        self._ex = max(1, int(round(ttl_s)))  # Redis expiries are whole seconds here
        if client is None:
            client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 1), retry_on_timeout=False)
        self._redis = client
        self._fallback = ByteLRU(max(self.fallback_max_bytes, 0), ttl_s=ttl_s, clock=clock)
        self._text_fallback = ByteLRU(max(self.fallback_max_bytes, 0), max_entries=text_max_entries,
                                      ttl_s=ttl_s, clock=clock)
        self._state_lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._warned_other = False
        self._checked_config = False
        self.holds_state = bool(holds_state)
        self.health()  # connect now: an unreachable Redis is reported at start-up (never raises)

    # -- connection state ----------------------------------------------------------------------
    def _available(self) -> bool:
        with self._state_lock:
            return self._down_since is None or self.clock() >= self._retry_at

    def _mark_down(self, exc: BaseException) -> None:
        self._count("errors")
        self._count("redis_errors")
        with self._state_lock:
            now = self.clock()
            self._retry_at = now + self.retry_interval_s
            self._last_error = f"{type(exc).__name__}: {exc}"
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:
            self._count("outages")
            log.warning("Redis feature cache at %s unreachable (%s); serving without the shared "
                        "cache (in-process fallback) and retrying every %gs", self.url,
                        self._last_error, self.retry_interval_s)

    def _mark_up(self) -> None:
        with self._state_lock:
            was_down = self._down_since
            self._down_since = None
        if was_down is not None:
            self._count("reconnects")
            log.warning("Redis feature cache at %s reachable again after %.1fs", self.url,
                        self.clock() - was_down)

    @property
    def reachable(self) -> bool:
        """Last known state (no I/O)."""
        with self._state_lock:
            return self._down_since is None

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)``, or ``_DOWN`` (unreachable / backing off) or ``_FAILED`` (error reply)."""
        if not self._available():
            return _DOWN
        try:
            result = fn(self._redis)
        except self._errors_down as exc:
            self._mark_down(exc)
            return _DOWN
        except self._errors_other as exc:
            self._count("errors")
            self._count("redis_errors")
            with self._state_lock:
                self._last_error = f"{type(exc).__name__}: {exc}"
                warn, self._warned_other = not self._warned_other, True
            (log.warning if warn else log.debug)("Redis feature cache error: %s", exc)
            return _FAILED
        self._mark_up()
        return result

    # -- store hooks ---------------------------------------------------------------------------
    def _load(self, key: str) -> bytes | None:
        res = self._call(lambda r: r.getex(key, ex=self._ex))
        if res is not None and res is not _DOWN and res is not _FAILED:
            return bytes(res)
        blob = self._fallback.get(key)
        if blob is not None:
            self._count("fallback_hits")
            if res is None:  # Redis is back and lacks it (computed during an outage): share it
                self._store(key, blob)
        return blob

    def _store(self, key: str, blob: bytes) -> None:
        res = self._call(lambda r: r.set(key, blob, ex=self._ex))
        if res is _DOWN or res is _FAILED:
            if self._fallback.put(key, blob):
                self._count("bytes_stored", len(blob))
            else:
                self._count("not_stored")
        else:
            self._count("bytes_stored", len(blob))
            self._fallback.delete(key)

    def _discard(self, key: str) -> None:
        self._fallback.delete(key)
        self._call(lambda r: r.delete(key))

    def _load_text(self, key: str) -> bytes | None:
        res = self._call(lambda r: r.getex(key, ex=self._ex))
        if res is _DOWN or res is _FAILED:
            return self._text_fallback.get(key)
        return bytes(res) if res is not None else self._text_fallback.get(key)

    def _store_text(self, key: str, value: bytes) -> None:
        res = self._call(lambda r: r.set(key, value, ex=self._ex))
        if res is _DOWN or res is _FAILED:
            self._text_fallback.put(key, value)

    # -- cross-process single flight ---------------------------------------------------------
    def _lock(self, lock_key: str):
        """A redis-py :class:`~redis.lock.Lock` on ``lock_key`` living ``lock_ttl_s`` (a fresh token
        per acquisition; released only by the holder of that token)."""
        return self._redis.lock(lock_key, timeout=self.lock_ttl_s, thread_local=False)

    def _try_lock(self, lock) -> Any:
        """True (ours), False (another process holds it), or ``_DOWN`` / ``_FAILED``."""
        return self._call(lambda r: lock.acquire(blocking=False))

    @staticmethod
    def _release(lock) -> bool:
        """Release ``lock`` if still ours; one that expired while computing (and perhaps is held by
        another process now) is left alone."""
        from redis.exceptions import LockNotOwnedError

        try:
            lock.release()
            return True
        except LockNotOwnedError:
            log.debug("compute lock %s expired before it was released", lock.name)
            return False

    def _fill(self, key: str, fingerprint: str, compute,
              size: tuple[int, int] | None = None) -> tuple[ImageFeatures, bytes | None, bool]:
        lock = self._lock(key + ":lock")
        got = self._try_lock(lock)
        if got is False:  # another process computes it: poll for its result, for a bounded time
            self._count("lock_waits")
            deadline = self.clock() + self.lock_wait_s
            delay = self.poll_interval_s
            got = _DOWN
            while self.clock() < deadline:
                time.sleep(max(0.0, min(delay, deadline - self.clock())))
                delay = min(delay * 1.5, 0.5)
                found = self._lookup(key, fingerprint, size)
                if found is not None:
                    self._count("lock_hits")
                    self._count("hits")
                    return found[0], found[1], True
                got = self._try_lock(lock)  # succeeds once the holder is gone
                if got is not False:
                    break
            else:
                self._count("lock_timeouts")
                log.info("waited %.1fs for another process to compute %s; computing it here",
                         self.lock_wait_s, key)
        try:
            features, blob = self._compute(fingerprint, compute)
            if blob is not None:
                self._store(key, blob)
            return features, blob, False
        finally:
            if got is True:
                self._call(lambda r: self._release(lock))

    # -- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        out = super().stats()
        out.update(entries=len(self._fallback), bytes=self._fallback.nbytes,
                   max_bytes=self.fallback_max_bytes, evictions=self._fallback.evictions,
                   expirations=self._fallback.expirations, text_entries=len(self._text_fallback),
                   reachable=self.reachable)
        return out

    def health(self) -> dict:
        """Pings Redis (unless backing off after a failure; then reports the last state)."""
        out: dict[str, Any] = {"backend": "redis", "url": self.url}
        info = self._call(lambda r: r.info("memory"))
        reachable = isinstance(info, dict)
        out["reachable"] = reachable
        if reachable:
            out["used_memory"] = info.get("used_memory")
            out["maxmemory"] = info.get("maxmemory")
            out["maxmemory_policy"] = info.get("maxmemory_policy")
            if not self._checked_config:
                self._checked_config = True
                self._warn_config(info)
        with self._state_lock:
            if self._down_since is not None:
                out["down_for_s"] = round(self.clock() - self._down_since, 3)
                out["retry_in_s"] = round(max(0.0, self._retry_at - self.clock()), 3)
            out["last_error"] = self._last_error
        out["fallback_entries"] = len(self._fallback)
        out["fallback_bytes"] = self._fallback.nbytes
        return out

    def _warn_config(self, info: dict) -> None:
        """One start-up warning about the Redis's memory settings (docs/cache.md)."""
        maxmemory, policy = info.get("maxmemory"), info.get("maxmemory_policy")
        if self.holds_state:  # evicting here would drop jobs and project memories: never advise it
            log.warning("the feature cache shares Redis %s with the state (jobs, project memories; "
                        "maxmemory=%s, maxmemory-policy=%s): keep it noeviction, and give the cache its "
                        "own Redis with allkeys-lru (CASS_CACHE_REDIS_URL) so it cannot fill the state "
                        "Redis (docs/cache.md)", self.url, maxmemory, policy)
        elif not maxmemory or policy == "noeviction":
            log.warning("Redis at %s has maxmemory=%s, maxmemory-policy=%s: set maxmemory and "
                        "allkeys-lru so the feature cache cannot fill it (a Redis of its own: "
                        "CASS_CACHE_REDIS_URL; docs/cache.md)", self.url, maxmemory, policy)

    def close(self) -> None:
        try:
            self._redis.close()
        except Exception:  # pragma: no cover - best effort
            pass
