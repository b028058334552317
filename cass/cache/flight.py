"""The feature caches' shared part: hit/miss accounting, decoding, and the in-process single flight
(concurrent requests of one process for the same uncached image compute it once; the others wait
for that thread). Subclasses (:mod:`cass.cache.in_process`, :mod:`cass.cache.redis_store`) provide the store.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from cass.cache.keys import KEY_PREFIX, feature_key, image_digest, text_cache_key
from cass.cache.validate import Size, check_blob, image_size
from cass.features import FeaturesFormatError, ImageFeatures

log = logging.getLogger("cass.cache")


class _Flight:
    """One in-process computation that other threads wait for."""

    __slots__ = ("done", "waiters", "ok", "blob", "features")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.waiters = 0
        self.ok = False
        self.blob: bytes | None = None
        self.features: ImageFeatures | None = None


_COUNTERS = ("hits", "misses", "errors", "corrupt", "coalesced", "compute_errors", "bytes_stored",
             "bytes_served", "not_stored", "text_hits", "text_misses", "text_errors", "lock_waits",
             "lock_hits", "lock_timeouts", "redis_errors", "outages", "reconnects", "fallback_hits")


class _BaseCache:
    """Hit/miss accounting, decoding, in-process single-flight; subclasses provide the store."""

    backend = "base"

    def __init__(self, ttl_s: float, prefix: str = KEY_PREFIX):
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._counts: dict[str, float] = {name: 0 for name in _COUNTERS}
        self._counts["compute_seconds"] = 0.0
        self._stats_lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()

    # -- store hooks (subclasses) -----------------------------------------------------------
    def _load(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _store(self, key: str, blob: bytes) -> None:
        raise NotImplementedError

    def _discard(self, key: str) -> None:
        raise NotImplementedError

    def _load_text(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _store_text(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    # -- accounting --------------------------------------------------------------------------
    def _count(self, name: str, n: float = 1) -> None:
        with self._stats_lock:
            self._counts[name] += n

    def stats(self) -> dict:
        with self._stats_lock:
            out: dict[str, Any] = dict(self._counts)
        with self._flights_lock:
            out["computing"] = len(self._flights)
            out["waiting"] = sum(f.waiters for f in self._flights.values())
        out["backend"] = self.backend
        out["ttl_s"] = self.ttl_s
        return out

    def close(self) -> None:
        pass

    # -- features ----------------------------------------------------------------------------
    def key_for(self, image_bytes: bytes, fingerprint: str) -> str:
        return feature_key(image_digest(image_bytes), fingerprint, self.prefix)

    def peek(self, image_bytes: bytes, fingerprint: str) -> ImageFeatures | None:
        """Cached features of ``image_bytes`` for an engine with ``fingerprint``, computing nothing
        (None on a miss or an unreadable entry)."""
        found = self._lookup(self.key_for(image_bytes, fingerprint), fingerprint, image_size(image_bytes))
        return found[0] if found is not None else None

    def get_or_compute(self, image_bytes: bytes, fingerprint: str,
                       compute: Callable[[], ImageFeatures]) -> tuple[ImageFeatures, bool]:
        """Cached features of ``image_bytes`` for an engine with ``fingerprint``, else ``compute()``.

        Returns ``(features, was_hit)``. ``was_hit`` is False only when this call ran ``compute``
        (a call that waited for another thread's or process's computation is a hit). Exceptions
        from ``compute`` propagate and nothing is stored; threads that were waiting retry.
        """
        key = self.key_for(image_bytes, fingerprint)
        size = image_size(image_bytes)  # the header's (H, W): what a cached entry may declare (validate)
        found = self._lookup(key, fingerprint, size)
        if found is not None:
            self._count("hits")
            return found[0], True
        while True:
            with self._flights_lock:
                flight = self._flights.get(key)
                leader = flight is None
                if leader:
                    flight = self._flights[key] = _Flight()
                else:
                    flight.waiters += 1
            if leader:
                return self._lead(key, fingerprint, compute, flight, size)
            flight.done.wait()
            if flight.ok:
                self._count("hits")
                self._count("coalesced")
                if flight.blob is not None:
                    return ImageFeatures.from_bytes(flight.blob), True  # a private copy
                return flight.features, True
            # the computing thread failed: try again (become the leader or wait for a new one)

    def _lead(self, key: str, fingerprint: str, compute, flight: _Flight,
              size: Size | None = None) -> tuple[ImageFeatures, bool]:
        try:
            found = self._lookup(key, fingerprint, size)  # stored between our miss and registering?
            if found is not None:
                features, blob = found
                was_hit = True
                self._count("hits")
            else:
                features, blob, was_hit = self._fill(key, fingerprint, compute, size)
            flight.features, flight.blob, flight.ok = features, blob, True
            return features, was_hit
        finally:
            with self._flights_lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _fill(self, key: str, fingerprint: str, compute,
              size: Size | None = None) -> tuple[ImageFeatures, bytes | None, bool]:
        """Compute and store (the Redis cache adds the cross-process lock around this)."""
        features, blob = self._compute(fingerprint, compute)
        if blob is not None:
            self._put(key, blob)
        return features, blob, False

    def _compute(self, fingerprint: str, compute) -> tuple[ImageFeatures, bytes | None]:
        self._count("misses")
        t0 = time.perf_counter()
        try:
            features = compute()
        except BaseException:
            self._count("compute_errors")
            raise
        finally:
            self._count("compute_seconds", time.perf_counter() - t0)
        if not isinstance(features, ImageFeatures):
            raise TypeError(f"compute() returned {type(features).__name__}, expected ImageFeatures")
        if features.fingerprint != fingerprint:
            log.warning("features fingerprint %r != cache fingerprint %r: not caching them",
                        features.fingerprint, fingerprint)
            self._count("errors")
            self._count("not_stored")
            return features, None
        blob = features.to_bytes()
        # what a later hit will read (float16 features by default): a miss segments like a hit
        return ImageFeatures.from_bytes(blob), blob

    def _put(self, key: str, blob: bytes) -> None:
        self._store(key, blob)

    def _lookup(self, key: str, fingerprint: str,
                size: Size | None = None) -> tuple[ImageFeatures, bytes] | None:
        """The entry under ``key``, decoded, or None. An entry that fails :func:`check_blob` against
        the image's declared ``size`` (or does not decode) is a miss: logged, counted ``corrupt``
        and deleted, so the computed entry overwrites it."""
        blob = self._load(key)
        if blob is None:
            return None
        try:
            check_blob(blob, size)  # before anything is decompressed or allocated from it
            features = ImageFeatures.from_bytes(blob, expected_fingerprint=fingerprint)
        except FeaturesFormatError as exc:
            log.warning("ignoring unreadable cache entry %s (%s); recomputing", key, exc)
            self._count("corrupt")
            self._count("errors")
            self._discard(key)
            return None
        self._count("bytes_served", len(blob))
        return features, blob

    # -- text --------------------------------------------------------------------------------
    def get_text(self, key: str) -> bytes | None:
        value = self._load_text(text_cache_key(key, self.prefix))
        self._count("text_hits" if value is not None else "text_misses")
        return value

    def set_text(self, key: str, value: bytes) -> None:
        self._store_text(text_cache_key(key, self.prefix), bytes(value))
