"""Per-project vocabulary limits (``CASS_MAX_CLASSES``, ``CASS_MAX_PROMPTS``) and a byte-bounded LRU (cass.lru).

A project's label set is the vocabulary CASS encodes (80 templates per prompt through the CLIP text
tower) and segments with (work and memory grow with the number of prompts). Beyond the limits,
``/setup`` and ``/predict`` answer 400 naming the limit instead of monopolising the inference slot.
"""
from __future__ import annotations

import sys
from typing import Annotated, Callable, Hashable, TypeVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from cass.env_settings import Env
from cass.lru import BoundedLRU


@dataclass(frozen=True)
class VocabularyLimits:
    """The most classes (labels) and prompts (values + ``predicted_values``) of one project, all its
    ``BrushLabels`` controls together (background prompts included). ``Settings.limits`` reads them
    from the environment (:mod:`backend.config`); a value below 1 is refused (a ValueError)."""

    max_classes: Annotated[int, Env("CASS_MAX_CLASSES"), Field(ge=1)] = 1000
    max_prompts: Annotated[int, Env("CASS_MAX_PROMPTS"), Field(ge=1)] = 2000


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def deep_size(obj, _seen: set | None = None) -> int:
    """Approximate bytes held by ``obj`` (containers, dataclasses and strings followed; shared objects
    counted once)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return size
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(deep_size(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return size + deep_size(vars(obj), seen)
    if hasattr(obj, "__slots__"):
        return size + sum(deep_size(getattr(obj, s), seen) for s in obj.__slots__ if hasattr(obj, s))
    return size


class ByteBoundedLRU(BoundedLRU[K, V]):
    """:class:`cass.lru.BoundedLRU` (cachetools underneath) sized by ``sizeof(value)`` plus 256 bytes
    for the key (a digest and a few small objects), at most ``max_entries`` entries. An entry larger
    than ``max_bytes`` alone is not stored."""

    def __init__(self, max_bytes: int, max_entries: int = 1 << 30, sizeof: Callable[[object], int] = deep_size):
        super().__init__(max_bytes, max_entries=max_entries, sizeof=lambda value: sizeof(value) + 256)
