"""Loading the engine once per process, with its feature cache: :func:`build_predictor`.

``NoCache`` stores nothing (unit tests, and a stand-in with ``cass.cache.FeatureCache``'s interface).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cass.cache import FeatureCache

    from backend.predict.predictor import Predictor

log = logging.getLogger("backend.predict.loading")


class NoCache:
    """A cache that stores nothing, with ``cass.cache.FeatureCache``'s interface (used when
    ``cass.cache`` is not available, and by default in tests)."""

    def __init__(self):
        self._misses = 0
        self._lock = threading.Lock()

    def get_or_compute(self, image_bytes: bytes, fingerprint: str, compute: Callable):
        with self._lock:
            self._misses += 1
        return compute(), False

    def get_text(self, key: str) -> bytes | None:
        return None

    def set_text(self, key: str, value: bytes) -> None:
        return None

    def stats(self) -> dict:
        return {"backend": "none", "hits": 0, "misses": self._misses, "bytes": 0, "errors": 0}

    def health(self) -> dict:
        return {"backend": "none", "reachable": True}


def make_feature_cache(redis_url: str | None, holds_state: bool = False) -> "FeatureCache":
    """``cass.cache``'s feature cache with the default ``CacheSettings`` (docs/cache.md): Redis at
    ``redis_url``, else in-process. ``holds_state``: that Redis is also the state Redis. The server
    builds its cache from ``Settings.cache`` (:func:`build_predictor`)."""
    from cass.cache.settings import CacheSettings

    return CacheSettings(redis_url=redis_url).make_cache(holds_state=holds_state)


def build_predictor(settings) -> "Predictor":
    """Load the engine (once per process) with the feature cache; :class:`backend.config.Settings`."""
    import cass

    from backend.ops.allocator import tune_malloc
    from backend.predict.predictor import Predictor
    from backend.predict.slots import InferenceSlots

    tune_malloc(arenas=settings.malloc_arenas)  # before the request threads allocate (arenas, mmap threshold)
    t0 = time.perf_counter()
    cache_url = settings.cache.redis_url  # CASS_CACHE_*: one CacheSettings, read with the rest (docs/cache.md)
    cache = settings.cache.make_cache(holds_state=bool(cache_url) and cache_url == settings.redis_url)
    preset = cass.load_preset(settings.preset)
    if settings.pamr and preset.text.pamr is None:
        preset = preset.replace(pamr=True)
    engine = cass.create_model(settings.clip_weights, settings.dino_weights, preset,
                               device=settings.device, threads=settings.threads, text_cache=cache,
                               global_clip_weights=settings.global_clip_weights)
    log.info("loaded %s on %s in %.1fs (cache: %s)", engine.model_version, engine.device,
             time.perf_counter() - t0, type(cache).__name__)
    predictor = Predictor(engine, cache, predict_budget_s=settings.predict_budget_s,
                          text_budget_s=settings.text_budget_s,
                          slots=InferenceSlots(settings.inference_slots, settings.max_queue,
                                               grace_s=settings.reservation_grace_s,
                                               queue_wait_s=settings.queue_wait_s))
    if settings.warmup:
        predictor.warm_up()
    return predictor
