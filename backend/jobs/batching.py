"""Batched encodes for a chunk: several images' windows in one backbone call (``CASS_JOB_BATCH``).

The runner (:mod:`.runner`) hands :func:`prefill` the downloaded bytes of the next ``batch`` tasks.
It looks each image up in the feature cache (a hit is **not** re-encoded), encodes the misses with
``engine.encode_many(images) -> list[ImageFeatures]`` (one call per ``batch`` images, under the
predictor's inference slot), stores them in the cache (so every other worker gets a hit), and returns
a :class:`Prefill` (``{sha256 digest of the bytes: ImageFeatures}``), which ``Predictor.predict_task``
takes as an argument and reads before the cache.

If ``encode_many`` raises (one undecodable image, out of memory, ...), nothing of that call is kept
and those images go through the ordinary one-image path: the bad one fails alone, its batch-mates
are predicted. Engines without ``encode_many`` and ``batch == 1`` skip all this.

``ImageFeatures`` (``cass.features``): per image, the label-free features (CLIP patch tokens,
DINO affinities; float16 once they went through the cache); shapes are the engine's business here.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

log = logging.getLogger("backend.jobs")


def digest(image_bytes: bytes) -> str:
    return hashlib.sha256(image_bytes).hexdigest()


def peek(cache, image_bytes: bytes, fingerprint: str):
    """Cached features of ``image_bytes`` without computing anything, else None.

    Uses ``cass.cache``'s :meth:`~cass.cache.FeatureCache.peek`; a cache without it (e.g. ``NoCache``)
    reports a miss."""
    peek_cache = getattr(cache, "peek", None)
    return peek_cache(image_bytes, fingerprint) if peek_cache is not None else None


def prefill(predictor, images: list[bytes], batch: int, timing: dict | None = None) -> "Prefill":
    """The features of ``images`` (raw encoded bytes, repeats allowed) found or encoded here.

    Hits come from the cache; misses are encoded ``batch`` at a time with ``engine.encode_many``.
    Images whose batched encode failed are left out (the caller's one-image path handles them).
    ``timing``, if given, gains ``encode_s`` (seconds in ``encode_many``), ``hits``, ``misses``,
    ``batches`` and ``batch_failures``.
    """
    engine = predictor.engine
    encode_many: Callable | None = getattr(engine, "encode_many", None)
    timing = timing if timing is not None else {}
    for k in ("encode_s", "hits", "misses", "batches", "batch_failures"):
        timing.setdefault(k, 0)
    if encode_many is None or batch < 2:
        return Prefill({}, set())
    fingerprint = engine.fingerprint
    ready: dict[str, object] = {}
    misses: dict[str, bytes] = {}
    for data in images:
        key = digest(data)
        if key in ready or key in misses:
            continue
        found = peek(predictor.cache, data, fingerprint)
        if found is not None:
            ready[key] = found
            timing["hits"] += 1
        else:
            misses[key] = data
    keys, encoded = list(misses), set()
    for start in range(0, len(keys), batch):
        part = keys[start:start + batch]
        if len(part) == 1:
            continue  # the one-image path encodes it (same work, and its errors name the image)
        t0 = time.perf_counter()
        try:
            with predictor.slots:  # one inference slot, like Predictor.encode
                features = encode_many([misses[k] for k in part])
            if len(features) != len(part):
                raise RuntimeError(f"encode_many returned {len(features)} features for {len(part)} images")
        except Exception as exc:  # one bad image must not fail its batch-mates: they go one by one
            timing["batch_failures"] += 1
            log.warning("batched encode of %d image(s) failed (%s: %s): encoding them one by one",
                        len(part), type(exc).__name__, exc)
            continue
        finally:
            timing["encode_s"] += time.perf_counter() - t0
        timing["batches"] += 1
        for k, f in zip(part, features):
            # store (other workers get a hit) and keep what a later hit would read (fp16 round trip)
            ready[k], _ = predictor.cache.get_or_compute(misses[k], fingerprint, lambda f=f: f)
            encoded.add(k)
            timing["misses"] += 1
    return Prefill(ready, encoded)


class Prefill:
    """Features encoded ahead for a group of tasks: ``{digest of the bytes: features}`` and the
    digests that were cache misses (encoded here) rather than hits."""

    def __init__(self, ready: dict[str, object], missed: set[str] = frozenset()):
        self._ready, self._missed = ready, missed

    def __bool__(self) -> bool:
        return bool(self._ready)

    def take(self, image_bytes: bytes):
        """``(features, was_hit)`` for ``image_bytes``, or None when it was not prefilled."""
        key = digest(image_bytes)
        found = self._ready.get(key)
        return None if found is None else (found, key not in self._missed)
