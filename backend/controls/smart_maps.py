"""What the smart-tool refiner (:mod:`backend.controls.smart`) keeps per image between smart regions.

Label Studio re-sends every smart region of an annotation with each new one, so :class:`ImageMaps`
keeps the last decoded images (uint8 RGB, 6 MB at 1080p: each further region skips a 0.1-0.3 s decode)
and whole-image label maps (int32 at the original size, 8 MB at 1080p: a later keypoint costs a
flood fill) in one LRU, by image digest.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any, Hashable

import numpy as np
from cachetools import LRUCache

from cass.images import load_image


class ImageMaps:
    """The last ``maps`` decoded images and label maps (one LRU of ``2 * maps`` entries) of images
    segmented by ``predictor`` (a :class:`~backend.predict.predictor.Predictor`); thread-safe."""

    def __init__(self, predictor, maps: int = 8):
        self.predictor = predictor
        self._lru: LRUCache = LRUCache(maxsize=2 * maps)  # label maps and decoded images together
        self._lock = threading.Lock()

    def decoded(self, data: bytes) -> np.ndarray:
        """``load_image(data)`` (uint8 ``(H, W, 3)``), the last ``maps`` images kept by their digest."""
        key = ("rgb", hashlib.blake2b(data, digest_size=16).digest())
        with self._lock:
            rgb = self._lru.get(key)  # a get marks the entry as recently used
            if rgb is not None:
                return rgb
        rgb = load_image(data)
        self._remember(key, rgb)
        return rgb

    def label_map(self, data: bytes, target):
        """The whole image's segmentation for ``target`` (features via the feature cache; the map
        itself kept in the LRU under image digest, fingerprint, vocabulary and rule)."""
        key = (hashlib.blake2b(data, digest_size=16).digest(), self.predictor.engine.fingerprint,
               target.vocabulary, target.rule)
        with self._lock:
            seg = self._lru.get(key)
            if seg is not None:
                return seg
        seg = self.predictor.segment(self.predictor.features(data), target)
        self._remember(key, seg)
        return seg

    def _remember(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if self._lru.maxsize:  # maps=0: nothing is kept
                self._lru[key] = value
