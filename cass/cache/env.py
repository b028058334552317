"""The feature cache configured by environment variables (documented in docs/cache.md)."""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

from cass.cache import DEFAULT_MAX_BYTES, DEFAULT_TTL_S, MiB, FeatureCache, make_cache


_SIZE_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MiB, "mb": MiB,
                "mib": MiB, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str | int) -> int:
    """``"512MiB"``, ``"2g"``, ``"1048576"`` -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_SUFFIX:
        raise ValueError(f"invalid size {text!r} (examples: 536870912, 512MiB, 2G)")
    return int(float(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()])


def make_cache_from_env(environ: Mapping[str, str] | None = None, holds_state: bool = False) -> FeatureCache:
    """:func:`make_cache` configured by environment variables (documented in docs/cache.md): Redis at
    ``CASS_CACHE_REDIS_URL``, else ``REDIS_URL``, else in-process. ``holds_state``: that Redis is
    also the state Redis (see :class:`~cass.cache.redis_store.RedisCache`)."""
    env = os.environ if environ is None else environ

    def num(name: str, default: float) -> float:
        value = env.get(name, "").strip()
        return float(value) if value else default

    options: dict[str, Any] = {}
    if env.get("CASS_CACHE_FALLBACK_MAX_BYTES", "").strip():
        options["fallback_max_bytes"] = parse_size(env["CASS_CACHE_FALLBACK_MAX_BYTES"])
    for var, opt in (("CASS_REDIS_TIMEOUT_S", "socket_timeout_s"),
                     ("CASS_REDIS_RETRY_S", "retry_interval_s"),
                     ("CASS_CACHE_LOCK_TTL_S", "lock_ttl_s"), ("CASS_CACHE_LOCK_WAIT_S", "lock_wait_s")):
        if env.get(var, "").strip():
            options[opt] = num(var, 0.0)
    max_bytes = parse_size(env.get("CASS_CACHE_MAX_BYTES", "").strip() or DEFAULT_MAX_BYTES)
    ttl_s = int(num("CASS_CACHE_TTL_S", DEFAULT_TTL_S))
    redis_url = env.get("CASS_CACHE_REDIS_URL", "").strip() or env.get("REDIS_URL", "").strip() or None
    if holds_state:
        options["holds_state"] = True
    return make_cache(redis_url, max_bytes=max_bytes, ttl_s=ttl_s, **(options if redis_url else {}))
