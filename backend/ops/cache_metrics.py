"""The feature cache's :meth:`~cass.cache.FeatureCache.stats` as Prometheus metrics (``/metrics``):
:class:`CacheCollector` on the backend's ``prometheus_client`` registry."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from prometheus_client.core import Metric

from cass.cache import FeatureCache

from backend.ops.prom_stats import family, render, stats_families


# (stats key, metric name, type, help)
PROMETHEUS_METRICS = (
    ("hits", "cass_feature_cache_hits_total", "counter",
     "Image feature requests served without running the image towers"),
    ("misses", "cass_feature_cache_misses_total", "counter",
     "Image feature requests that ran the image towers (encode)"),
    ("errors", "cass_feature_cache_errors_total", "counter",
     "Cache failures: Redis unreachable or erroring, unreadable entries, features not cacheable"),
    ("corrupt", "cass_feature_cache_corrupt_total", "counter",
     "Unreadable or incompatible entries that were recomputed"),
    ("coalesced", "cass_feature_cache_coalesced_total", "counter",
     "Requests that waited for a concurrent computation of the same image (counted in hits)"),
    ("bytes", "cass_feature_cache_bytes", "gauge",
     "Bytes of image features held in this process (the LRU, or the Redis fallback LRU)"),
    ("entries", "cass_feature_cache_entries", "gauge", "Image feature entries held in this process"),
    ("bytes_stored", "cass_feature_cache_stored_bytes_total", "counter", "Bytes of features written"),
    ("bytes_served", "cass_feature_cache_served_bytes_total", "counter", "Bytes of features read on hits"),
    ("compute_seconds", "cass_feature_cache_compute_seconds_total", "counter",
     "Seconds spent computing features on misses"),
    ("evictions", "cass_feature_cache_evictions_total", "counter", "In-process LRU evictions"),
    ("text_hits", "cass_feature_cache_text_hits_total", "counter", "Text embedding cache hits"),
    ("text_misses", "cass_feature_cache_text_misses_total", "counter", "Text embedding cache misses"),
    ("reachable", "cass_feature_cache_up", "gauge", "1 if the cache backend is reachable"),
)


class CacheCollector:
    """Collector of the feature cache's metrics; ``stats()`` is read at every scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        yield family("gauge", "cass_feature_cache_info", "Feature cache backend", 1,
                     {"backend": str(stats.get("backend", "unknown"))})
        yield from stats_families(PROMETHEUS_METRICS, stats)


def render_prometheus(stats: Mapping[str, Any] | FeatureCache) -> str:
    """The cache's metrics alone in the Prometheus text format (``stats`` or a cache)."""
    snapshot = dict(stats) if isinstance(stats, Mapping) else stats.stats()
    return render(CacheCollector(lambda: snapshot))
