"""Per-image feature cache: ``encode`` once per image, reuse the features for any vocabulary.

Two implementations of one interface (:class:`FeatureCache`):

* :class:`MemoryCache` - an in-process LRU bounded in bytes (the default when no ``REDIS_URL``);
* :class:`RedisCache` - Redis shared by every worker and replica, with an in-process fallback LRU
  that serves while Redis is unreachable.

Keys are ``cass:feat:v<format>:<engine fingerprint>:<sha256 of the image bytes>``: the same
picture under another URL hits, other weights / image-side parameters miss (the fingerprint covers
them), text-side parameters are not in the key (changing them still hits). Values are
:meth:`ImageFeatures.to_bytes` (format v2: float16 features, compressed); a miss returns the
features decoded from the blob it stores, so a hit segments bit-for-bit like a miss. Text embeddings go through :meth:`FeatureCache.get_text` / :meth:`FeatureCache.set_text`
(the ``external`` store of :class:`cass.text.TextEncoder`).

Concurrent requests for the same uncached image compute it once: threads of one process wait for
the thread that computes it; processes sharing Redis take a short-lived lock (redis-py's
``Lock``: ``SET NX PX``, token-checked release) and the others poll for the value, for a bounded time, and compute themselves when
the holder went away. Any Redis failure is logged once per outage and the request is served
without Redis (computing, or from the fallback LRU); Redis is retried after ``retry_interval_s``.
An unreadable or incompatible entry is ignored, recomputed and overwritten. See docs/cache.md.
"""
from __future__ import annotations

from typing import Any

from cass.cache.flight import _BaseCache, _Flight  # noqa: F401  (re-exported)
from cass.cache.keys import (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_FALLBACK_MAX_BYTES, DEFAULT_LOCK_TTL_S,  # noqa: F401
                         DEFAULT_LOCK_WAIT_S, DEFAULT_MAX_BYTES, DEFAULT_RETRY_INTERVAL_S,
                         DEFAULT_SOCKET_TIMEOUT_S, DEFAULT_TEXT_MAX_ENTRIES, DEFAULT_TTL_S, KEY_PREFIX,
                         MiB, FeatureCache, feature_key, image_digest, redact_url, text_cache_key)
from cass.cache.in_process import MemoryCache
from cass.cache.redis_store import RedisCache

__all__ = ["FeatureCache", "MemoryCache", "RedisCache", "make_cache", "feature_key", "image_digest",
           "text_cache_key", "redact_url", "MiB", "DEFAULT_MAX_BYTES", "DEFAULT_TTL_S",
           "DEFAULT_FALLBACK_MAX_BYTES", "DEFAULT_TEXT_MAX_ENTRIES", "KEY_PREFIX"]


def make_cache(redis_url: str | None, max_bytes: int = DEFAULT_MAX_BYTES, ttl_s: int = DEFAULT_TTL_S,
               **redis_options: Any) -> FeatureCache:
    """:class:`RedisCache` when ``redis_url`` is set, else :class:`MemoryCache` of ``max_bytes``.

    ``redis_options`` go to :class:`RedisCache` (``fallback_max_bytes``, ``socket_timeout_s``,
    ``retry_interval_s``, ``lock_ttl_s``, ``lock_wait_s`` ...). With Redis, ``max_bytes`` is not
    used: Redis's own ``maxmemory`` bounds the cache.
    """
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s, **redis_options)
    return MemoryCache(max_bytes=max_bytes, ttl_s=ttl_s)
