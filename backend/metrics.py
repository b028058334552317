"""``GET /metrics`` in the Prometheus text format (version 0.0.4).

One scrape = the predictor's request/task counters, the engine's cumulative encode/segment time
(``cass.engine.Timings``), the feature cache (``backend.cache_metrics.render_prometheus``) and the warm-up
queue (``backend.warmup.render_prometheus``). Everything is per process: with several gunicorn workers
each exposes its own numbers (see docs/backend.md).
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("backend.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


def _metric(lines: list[str], name: str, kind: str, help_text: str, value, labels: str = "") -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{labels} {_number(value)}"]


def _number(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def predictor_lines(predictor) -> list[str]:
    lines: list[str] = []
    _metric(lines, "cass_model_info", "gauge", "The served model version", 1,
            f'{{model_version="{_label(predictor.model_version)}"}}')
    stats = predictor.stats()
    for key, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in PREDICTOR_COUNTERS:
            name, help_text = PREDICTOR_COUNTERS[key]
            _metric(lines, name, "counter", help_text, value)
        else:  # a counter added to Predictor.stats() without a name here yet
            name = "cass_predictor_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            _metric(lines, name, "untyped", f"Predictor.stats()[{key!r}]", value)
    return lines


def engine_lines(engine) -> list[str]:
    timings = getattr(engine, "timings", None)
    if timings is None:
        return []
    seconds = {stage: float(getattr(timings, f"{stage}_s", 0.0)) for stage in ENCODE_STAGES + SEGMENT_STAGES}
    lines: list[str] = []
    _metric(lines, "cass_encode_seconds_total", "counter",
            "Seconds in CASS.encode (decode, resize, image towers, spectral fusion; cache misses and warm-up)",
            float(getattr(timings, "encode_s", sum(seconds[s] for s in ENCODE_STAGES))))
    _metric(lines, "cass_encode_calls_total", "counter", "CASS.encode calls", int(timings.encode_calls))
    _metric(lines, "cass_segment_seconds_total", "counter",
            "Seconds in CASS.segment (text embeddings and the label-dependent head)",
            float(getattr(timings, "segment_s", sum(seconds[s] for s in SEGMENT_STAGES))))
    _metric(lines, "cass_segment_calls_total", "counter", "CASS.segment calls", int(timings.segment_calls))
    lines += ["# HELP cass_engine_stage_seconds_total Seconds per engine stage",
              "# TYPE cass_engine_stage_seconds_total counter"]
    lines += [f'cass_engine_stage_seconds_total{{stage="{stage}"}} {_number(value)}'
              for stage, value in seconds.items()]
    return lines


def render(predictor, warmer=None) -> str:
    """The whole ``/metrics`` page. A part that fails is left out (and logged), never the scrape."""
    from backend.cache_metrics import render_prometheus as render_cache
    from backend.warmup import render_prometheus as render_warmup

    parts: list[str] = []
    for what, make in (("predictor", lambda: "\n".join(predictor_lines(predictor)) + "\n"),
                       ("engine", lambda: "\n".join(engine_lines(predictor.engine)) + "\n"),
                       ("cache", lambda: render_cache(predictor.cache.stats())),
                       ("warm-up", lambda: render_warmup(warmer.stats()) if warmer is not None else "")):
        try:
            text = make()
        except Exception:  # metrics must keep answering whatever one source does
            log.exception("/metrics: %s metrics failed", what)
            continue
        if text.strip():
            parts.append(text if text.endswith("\n") else text + "\n")
    lines: list[str] = []
    _metric(lines, "cass_warmup_max_queue", "gauge", "CASS_WARMUP_QUEUE (0: warm-up on TASKS_CREATED is off)",
            warmer.max_queue if warmer is not None else 0)
    parts.append("\n".join(lines) + "\n")
    return "".join(parts)
