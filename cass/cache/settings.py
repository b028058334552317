"""The feature cache's settings (:class:`CacheSettings`, the ``CASS_CACHE_*`` variables of docs/cache.md)
and the cache they make: :meth:`CacheSettings.make_cache`, :func:`make_cache_from_env`, :func:`make_cache`.

Every default is written here once; :class:`~cass.cache.MemoryCache` and :class:`~cass.cache.RedisCache`
take the same constants as their parameters' defaults, and the backend's settings hold a
``CacheSettings`` (``Settings.cache``) instead of reading these variables again.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Mapping

from pydantic import BeforeValidator, Field

from cass.env_settings import Env, EnvSettings, RedisUrl, scaled

if TYPE_CHECKING:
    from cass.cache.keys import FeatureCache

MiB = 1 << 20
DEFAULT_MAX_BYTES = 512 * MiB
DEFAULT_TTL_S = 7 * 24 * 3600
DEFAULT_FALLBACK_MAX_BYTES = 64 * MiB
DEFAULT_SOCKET_TIMEOUT_S = 1.0
DEFAULT_RETRY_INTERVAL_S = 5.0
DEFAULT_LOCK_TTL_S = 60.0
DEFAULT_LOCK_WAIT_S = 60.0

_SIZE_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MiB, "mb": MiB,
                "mib": MiB, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_SIZE_EXAMPLES = "examples: 536870912, 512MiB, 2G"


def parse_size(text: str | int) -> int:
    """``"512MiB"``, ``"2g"``, ``"1048576"`` -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_SUFFIX:
        raise ValueError(f"invalid size {text!r} ({_SIZE_EXAMPLES})")
    return int(float(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()])


def _size(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"is not a size ({_SIZE_EXAMPLES})") from None


#: bytes; text may carry a binary unit (``512MiB``, ``2G``)
Size = Annotated[int, BeforeValidator(_size), Field(ge=1)]


class CacheSettings(EnvSettings):
    """Where the feature cache lives and how big, how long and how patient it is (docs/cache.md)."""

    redis_url: Annotated[RedisUrl | None, Env("CASS_CACHE_REDIS_URL", "REDIS_URL"),
                         Field(repr=False)] = None    # None: in-process
    max_bytes: Annotated[Size, Env("CASS_CACHE_MAX_BYTES")] = DEFAULT_MAX_BYTES  # in-process budget
    ttl_s: Annotated[int, Env("CASS_CACHE_TTL_S"), scaled(1, 1), Field(ge=1)] = DEFAULT_TTL_S
    fallback_max_bytes: Annotated[Size, Env("CASS_CACHE_FALLBACK_MAX_BYTES")] = DEFAULT_FALLBACK_MAX_BYTES
    socket_timeout_s: Annotated[float, Env("CASS_REDIS_TIMEOUT_S"), Field(gt=0)] = DEFAULT_SOCKET_TIMEOUT_S
    retry_interval_s: Annotated[float, Env("CASS_REDIS_RETRY_S"), Field(ge=0)] = DEFAULT_RETRY_INTERVAL_S
    lock_ttl_s: Annotated[float, Env("CASS_CACHE_LOCK_TTL_S"), Field(gt=0)] = DEFAULT_LOCK_TTL_S
    lock_wait_s: Annotated[float, Env("CASS_CACHE_LOCK_WAIT_S"), Field(ge=0)] = DEFAULT_LOCK_WAIT_S

    def make_cache(self, holds_state: bool = False) -> "FeatureCache":
        """:func:`make_cache` with these settings. ``holds_state``: that Redis is also the state Redis
        (see :class:`~cass.cache.redis_store.RedisCache`)."""
        options = dict(fallback_max_bytes=self.fallback_max_bytes, socket_timeout_s=self.socket_timeout_s,
                       retry_interval_s=self.retry_interval_s, lock_ttl_s=self.lock_ttl_s,
                       lock_wait_s=self.lock_wait_s, holds_state=holds_state)
        return make_cache(self.redis_url, max_bytes=self.max_bytes, ttl_s=self.ttl_s, **options)


def make_cache(redis_url: str | None, max_bytes: int = DEFAULT_MAX_BYTES, ttl_s: int = DEFAULT_TTL_S,
               **redis_options: Any) -> "FeatureCache":
    """:class:`RedisCache` when ``redis_url`` is set, else :class:`MemoryCache` of ``max_bytes``.

    ``redis_options`` go to :class:`RedisCache` (``fallback_max_bytes``, ``socket_timeout_s``,
    ``retry_interval_s``, ``lock_ttl_s``, ``lock_wait_s`` ...). With Redis, ``max_bytes`` is not
    used: Redis's own ``maxmemory`` bounds the cache.
    """
    if redis_url:
        from cass.cache.redis_store import RedisCache

        return RedisCache(redis_url, ttl_s=ttl_s, **redis_options)
    from cass.cache.in_process import MemoryCache

    return MemoryCache(max_bytes=max_bytes, ttl_s=ttl_s)


def make_cache_from_env(environ: Mapping[str, str] | None = None, holds_state: bool = False) -> "FeatureCache":
    """The cache of ``CacheSettings.from_env(environ)`` (default ``os.environ``): Redis at
    ``CASS_CACHE_REDIS_URL``, else ``REDIS_URL``, else in-process. A bad value raises
    :class:`~cass.env_settings.SettingsError` (a ValueError) naming the variable."""
    return CacheSettings.from_env(environ).make_cache(holds_state=holds_state)
