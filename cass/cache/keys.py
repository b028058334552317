"""The feature cache's interface (:class:`FeatureCache`), fixed defaults and key layout.

Keys are ``cass:feat:v<format>:<engine fingerprint>:<sha256 of the image bytes>`` (features) and
``cass:text:<sha256 of "<model fingerprint>:<prompt>">`` (text embeddings). See docs/cache.md.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Protocol, runtime_checkable

from cass.features import FEATURES_FORMAT_VERSION, ImageFeatures
from cass.redaction import redact as redact_url  # noqa: F401 (for logs and health: one redaction)

# the defaults that a variable can change are in cass.cache.settings (CacheSettings)
DEFAULT_TEXT_MAX_ENTRIES = 16384
DEFAULT_CONNECT_TIMEOUT_S = 0.5
KEY_PREFIX = "cass"


@runtime_checkable
class FeatureCache(Protocol):
    """What the backend uses; :func:`make_cache` returns one."""

    def get_or_compute(self, image_bytes: bytes, fingerprint: str,
                       compute: Callable[[], ImageFeatures]) -> tuple[ImageFeatures, bool]:
        """``(features, was_hit)``; ``was_hit`` is False only when this call ran ``compute``."""
        ...

    def get_text(self, key: str) -> bytes | None: ...

    def set_text(self, key: str, value: bytes) -> None: ...

    def stats(self) -> dict: ...

    def health(self) -> dict: ...


def image_digest(image_bytes: bytes) -> str:
    """sha256 hex digest of the encoded image bytes (the URL is not part of the key)."""
    return hashlib.sha256(image_bytes).hexdigest()


def feature_key(digest: str, fingerprint: str, prefix: str = KEY_PREFIX) -> str:
    """Cache key of an image's features: format version + engine fingerprint + image digest."""
    return f"{prefix}:feat:v{FEATURES_FORMAT_VERSION}:{fingerprint}:{digest}"


def text_cache_key(key: str, prefix: str = KEY_PREFIX) -> str:
    """Key of a text embedding; ``key`` is the TextEncoder's ``"<model fingerprint>:<prompt>"``."""
    return f"{prefix}:text:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


