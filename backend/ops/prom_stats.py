"""Prometheus metric families from a ``stats()`` dict, on ``prometheus_client`` (no hand-written text).

A table row ``(stats key, metric name, "counter" | "gauge", help)`` becomes one metric family; a
:class:`StatsCollector` reads the live stats at every scrape. :class:`SafeCollector` keeps one
failing source from failing the whole scrape (it is logged and left out).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily

log = logging.getLogger("backend.ops.metrics")

#: (stats key, metric name, type, help)
Row = tuple[str, str, str, str]

_FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "untyped": UnknownMetricFamily}


def family(kind: str, name: str, help_text: str, value: Any = None, labels: Mapping[str, str] | None = None) -> Metric:
    """One metric family of ``kind`` ("counter" names end in ``_total`` on the wire) with one sample
    ``value`` (labelled by ``labels``), or none when ``value`` is None."""
    if kind not in _FAMILIES:
        raise ValueError(f"unknown metric type {kind!r} (expected one of {sorted(_FAMILIES)})")
    if labels:
        metric = _FAMILIES[kind](name, help_text, labels=list(labels))
        if value is not None:
            metric.add_metric(list(labels.values()), float(value))
        return metric
    return _FAMILIES[kind](name, help_text, value=None if value is None else float(value))


def stats_families(table: Sequence[Row], stats: Mapping[str, Any]) -> Iterator[Metric]:
    """A family per row of ``table`` whose key is in ``stats``."""
    for key, name, kind, help_text in table:
        if key in stats:
            yield family(kind, name, help_text, stats[key])


class StatsCollector:
    """Collector of ``table``'s metrics from ``stats()`` (called at every scrape)."""

    def __init__(self, table: Sequence[Row], stats: Callable[[], Mapping[str, Any]]):
        self.table = table
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from stats_families(self.table, self.stats())


class SafeCollector:
    """Wraps a collector: if it raises, its metrics are left out of the scrape (logged), the others stay."""

    def __init__(self, what: str, collector):
        self.what = what
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.collector.collect())
        except Exception:  # metrics must keep answering whatever one source does
            log.exception("/metrics: %s metrics failed", self.what)
            return []


def render(*collectors) -> str:
    """The Prometheus text exposition of ``collectors`` (a throwaway registry; for tests and tools)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def top_values(weights: Mapping[str, float], cap: int) -> tuple[list[str], int]:
    """The label values to export when at most ``cap`` may be: the ``cap`` heaviest of ``weights``
    (ties by name, so a scrape is deterministic), and how many were left out.

    Every label value that reaches a metric from outside (a webhook's project, a label config's names)
    goes through this: a forged payload can add values but never more series than the caps allow.
    """
    ranked = sorted(weights, key=lambda value: (-weights[value], value))
    return ranked[:max(cap, 0)], max(len(ranked) - max(cap, 0), 0)
