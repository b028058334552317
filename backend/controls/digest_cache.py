"""Parsed label configs remembered by the sha256 of their text (Label Studio sends the same config on
every call; the text itself is not kept), bounded in bytes: the one cache behind
``backend.controls.label_parse.parse_label_config`` and ``backend.controls.config.parse_controls``."""
from __future__ import annotations

import hashlib
from typing import Callable, Generic, Hashable, TypeVar

from backend.controls.limits import ByteBoundedLRU

T = TypeVar("T")


def config_digest(config: str) -> str:
    """sha256 hex digest of a label config (what is remembered of it instead of its text)."""
    return hashlib.sha256(config.encode("utf-8", "surrogatepass")).hexdigest()


class DigestCache(Generic[T]):
    """``parse(config)`` results keyed by ``(config_digest(config), *extra)`` (``extra``: whatever
    else the result depends on, e.g. the nothing-rule and the vocabulary limits). Bounded by
    ``max_bytes`` of ``sizeof(result)`` (+256 per key) and ``max_entries``; a ``parse`` that raises
    stores nothing."""

    def __init__(self, max_bytes: int, *, max_entries: int = 256, sizeof: Callable[[T], int]):
        self._lru: ByteBoundedLRU = ByteBoundedLRU(max_bytes, max_entries=max_entries, sizeof=sizeof)

    def get_or_parse(self, config: str, parse: Callable[[str], T], *extra: Hashable) -> T:
        if not isinstance(config, str):
            raise TypeError(f"a label config must be a str, got {type(config).__name__}")
        key = (config_digest(config), *extra)
        result = self._lru.get(key)
        if result is None:
            result = parse(config)
            self._lru.put(key, result)
        return result

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    def keys(self) -> list:
        return self._lru.keys()

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)
