"""``GET /metrics`` in the Prometheus text format, from one ``prometheus_client`` registry.

:func:`build_registry` registers collectors that read the live stats at every scrape: the
predictor's request/task counters, the engine's cumulative encode/segment time
(``cass.engine.Timings``), the feature cache (``backend.ops.cache_metrics.CacheCollector``), the warm-up
queue (``backend.predict.warmup.PROMETHEUS_METRICS``) and, with ``REDIS_URL``, the pre-annotation jobs
(``backend.jobs.metrics.register_job_metrics``). A source that fails is left out (and logged),
never the scrape. Everything is per process: with several gunicorn workers each exposes its own
numbers (see docs/backend.md).
"""
from __future__ import annotations

import logging
import re
from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import Metric

from backend.ops.prom_stats import SafeCollector, StatsCollector, family

log = logging.getLogger("backend.ops.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes

# Predictor.counters key -> (metric name, help)
PREDICTOR_COUNTERS = {
    "requests": ("cass_predict_requests_total", "/predict requests answered"),
    "tasks": ("cass_tasks_total", "Tasks received by /predict"),
    "predictions": ("cass_predictions_total", "Tasks that got a prediction"),
    "failed_tasks": ("cass_failed_tasks_total", "Tasks that got an error entry (image or data problem, or a bug)"),
    "skipped_tasks": ("cass_skipped_tasks_total", "Tasks not started because the batch used its time budget"),
    "regions": ("cass_regions_total", "Brush regions returned"),
    "cache_hits": ("cass_predict_cache_hits_total", "Images of /predict tasks whose features came from the cache"),
    "cache_misses": ("cass_predict_cache_misses_total", "Images of /predict tasks that were encoded"),
}

# cass.engine.Timings fields per stage
ENCODE_STAGES = ("dino", "clip", "spectral", "global")
SEGMENT_STAGES = ("text", "head")


# cass.engine.Timings fields per stage
ENCODE_STAGES = ("dino", "clip", "spectral", "global")
SEGMENT_STAGES = ("text", "head")


class PredictorCollector:
    """The served model version and :meth:`Predictor.stats`'s numeric counters."""

    def __init__(self, predictor):
        self.predictor = predictor

    def collect(self) -> Iterator[Metric]:
        yield family("gauge", "cass_model_info", "The served model version", 1,
                     {"model_version": str(self.predictor.model_version)})
        for key, value in self.predictor.stats().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key in PREDICTOR_COUNTERS:
                name, help_text = PREDICTOR_COUNTERS[key]
                yield family("counter", name, help_text, value)
            else:  # a counter added to Predictor.stats() without a name here yet
                yield family("untyped", "cass_predictor_" + re.sub(r"[^a-zA-Z0-9_]", "_", key),
                             f"Predictor.stats()[{key!r}]", value)


class EngineCollector:
    """Cumulative seconds and calls of ``CASS.encode`` / ``CASS.segment`` and per engine stage."""

    def __init__(self, predictor):
        self.predictor = predictor

    def collect(self) -> Iterator[Metric]:
        timings = getattr(self.predictor.engine, "timings", None)
        if timings is None:
            return
        seconds = {stage: float(getattr(timings, f"{stage}_s", 0.0)) for stage in ENCODE_STAGES + SEGMENT_STAGES}
        yield family("counter", "cass_encode_seconds_total",
                     "Seconds in CASS.encode (decode, resize, image towers, spectral fusion; cache misses and warm-up)",
                     float(getattr(timings, "encode_s", sum(seconds[s] for s in ENCODE_STAGES))))
        yield family("counter", "cass_encode_calls_total", "CASS.encode calls", int(timings.encode_calls))
        yield family("counter", "cass_segment_seconds_total",
                     "Seconds in CASS.segment (text embeddings and the label-dependent head)",
                     float(getattr(timings, "segment_s", sum(seconds[s] for s in SEGMENT_STAGES))))
        yield family("counter", "cass_segment_calls_total", "CASS.segment calls", int(timings.segment_calls))
        stages = family("counter", "cass_engine_stage_seconds_total", "Seconds per engine stage", labels={"stage": ""})
        for stage, value in seconds.items():
            stages.add_metric([stage], value)
        yield stages


class WarmupCollector:
    """The warm-up queue's counters and ``cass_warmup_max_queue`` (0 when warm-up is off)."""

    def __init__(self, warmer=None):
        self.warmer = warmer

    def collect(self) -> Iterator[Metric]:
        from backend.predict.warmup import PROMETHEUS_METRICS

        if self.warmer is not None:
            yield from StatsCollector(PROMETHEUS_METRICS, self.warmer.stats).collect()
        yield family("gauge", "cass_warmup_max_queue", "CASS_WARMUP_QUEUE (0: warm-up on TASKS_CREATED is off)",
                     self.warmer.max_queue if self.warmer is not None else 0)


def build_registry(predictor, warmer=None, redis_url: str | None = None) -> CollectorRegistry:
    """The process's ``/metrics`` registry: every collector above, each behind a :class:`SafeCollector`,
    the agreement gauges (backend.corrections), plus the job collector when ``redis_url`` is set."""
    from backend.ops.cache_metrics import CacheCollector
    from backend.corrections.metrics import collector as agreement_collector
    from backend.jobs.metrics import register_job_metrics

    registry = CollectorRegistry(auto_describe=False)
    for what, collector in (("predictor", PredictorCollector(predictor)), ("engine", EngineCollector(predictor)),
                            ("cache", CacheCollector(lambda: predictor.cache.stats())),
                            ("warm-up", WarmupCollector(warmer)),
                            ("agreement", agreement_collector(redis_url))):
        registry.register(SafeCollector(what, collector))
    try:
        register_job_metrics(registry, redis_url)
    except Exception:  # a bad REDIS_URL must not take /metrics down
        log.exception("/metrics: job metrics not registered")
    return registry


def render(predictor, warmer=None, redis_url: str | None = None) -> str:
    """The whole ``/metrics`` page (a registry built for this call; the app keeps one instead)."""
    return generate_latest(build_registry(predictor, warmer, redis_url)).decode()
