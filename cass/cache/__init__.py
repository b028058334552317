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

The names below are imported on first use (PEP 562, like ``cass``): ``cass.cache.settings`` (the
``CASS_CACHE_*`` settings) is read by the backend's settings without loading torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cass.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time see __getattr__
    from cass.cache.in_process import MemoryCache
    from cass.cache.keys import (DEFAULT_TEXT_MAX_ENTRIES, KEY_PREFIX, FeatureCache, feature_key, image_digest,
                                 redact_url, text_cache_key)
    from cass.cache.redis_store import RedisCache
    from cass.cache.settings import (DEFAULT_FALLBACK_MAX_BYTES, DEFAULT_MAX_BYTES, DEFAULT_TTL_S, MiB,
                                     CacheSettings, make_cache, make_cache_from_env)

_HOMES: dict[str, str] = {  # public name -> the module that defines it
    **dict.fromkeys(("FeatureCache", "feature_key", "image_digest", "text_cache_key", "redact_url", "KEY_PREFIX",
                     "DEFAULT_TEXT_MAX_ENTRIES"), "cass.cache.keys"),
    "MemoryCache": "cass.cache.in_process",
    "RedisCache": "cass.cache.redis_store",
    **dict.fromkeys(("CacheSettings", "make_cache", "make_cache_from_env", "MiB", "DEFAULT_MAX_BYTES",
                     "DEFAULT_TTL_S", "DEFAULT_FALLBACK_MAX_BYTES"), "cass.cache.settings"),
}

__all__ = ["FeatureCache", "MemoryCache", "RedisCache", "CacheSettings", "make_cache", "make_cache_from_env",
           "feature_key", "image_digest", "text_cache_key", "redact_url", "MiB", "DEFAULT_MAX_BYTES",
           "DEFAULT_TTL_S", "DEFAULT_FALLBACK_MAX_BYTES", "DEFAULT_TEXT_MAX_ENTRIES", "KEY_PREFIX"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES, __all__)
