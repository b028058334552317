"""/metrics on one prometheus_client registry (backend/ops/metrics.py): every source's metrics in one
exposition that prometheus_client's own parser reads back, a failing source left out, the job
collector on the same registry (real redis-server)."""
from __future__ import annotations

import types

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backend.ops import metrics
from cass.cache import MemoryCache
from tests.redis_fixtures import free_port, redis_server, redis_url  # noqa: F401


class FakePredictor:
    """Unit-test fake of backend.predict.predictor.Predictor: stats, model version, engine timings, a real cache."""

    model_version = 'cass "tiny"'

    def __init__(self, cache=None):
        self.cache = cache or MemoryCache()
        self.engine = types.SimpleNamespace(timings=types.SimpleNamespace(
            dino_s=1.0, clip_s=0.5, spectral_s=0.25, global_s=0.25, text_s=0.5, head_s=0.5,
            encode_s=2.5, segment_s=1.5, encode_calls=2, segment_calls=3))

    def stats(self):
        return {"requests": 4, "tasks": 5, "brand_new_counter": 7, "flag": True, "name": "x"}


def parsed(text: str) -> dict[str, tuple[str, dict[tuple, float]]]:
    """metric family name -> (type, {(sample name, sorted labels): value})."""
    return {f.name: (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
            for f in text_string_to_metric_families(text)}


def test_one_registry_holds_every_source():
    registry = metrics.build_registry(FakePredictor())
    assert isinstance(registry, CollectorRegistry)
    fams = parsed(generate_latest(registry).decode())
    assert fams["cass_predict_requests"] == ("counter", {("cass_predict_requests_total", ()): 4.0})
    assert fams["cass_predictor_brand_new_counter"][0] == "unknown"
    assert fams["cass_model_info"][1] == {("cass_model_info", (("model_version", 'cass "tiny"'),)): 1.0}
    assert fams["cass_encode_calls"][1] == {("cass_encode_calls_total", ()): 2.0}
    stages = fams["cass_engine_stage_seconds"][1]
    assert stages[("cass_engine_stage_seconds_total", (("stage", "dino"),))] == 1.0 and len(stages) == 6
    assert fams["cass_feature_cache_info"][1] == {("cass_feature_cache_info", (("backend", "memory"),)): 1.0}
    assert fams["cass_feature_cache_hits"][0] == "counter" and fams["cass_feature_cache_up"][0] == "gauge"
    assert fams["cass_warmup_max_queue"][1] == {("cass_warmup_max_queue", ()): 0.0}
    assert "cass_warmup_submitted" not in fams  # no warmer: only its max_queue


def test_the_registry_reads_live_stats_at_each_scrape():
    predictor = FakePredictor()
    registry = metrics.build_registry(predictor)
    assert parsed(generate_latest(registry).decode())["cass_feature_cache_text_misses"][1] == \
        {("cass_feature_cache_text_misses_total", ()): 0.0}
    predictor.cache.get_text("absent")
    assert parsed(generate_latest(registry).decode())["cass_feature_cache_text_misses"][1] == \
        {("cass_feature_cache_text_misses_total", ()): 1.0}


def test_a_failing_source_is_left_out_not_the_scrape(caplog):
    class BrokenCache(MemoryCache):
        def stats(self):
            raise RuntimeError("stats exploded")

    text = metrics.render(FakePredictor(BrokenCache()))
    fams = parsed(text)
    assert "cass_predict_requests" in fams and "cass_encode_calls" in fams
    assert not any(name.startswith("cass_feature_cache") for name in fams)
    assert "cache metrics failed" in caplog.text


def test_job_collector_is_on_the_same_registry(redis_url):
    fams = parsed(metrics.render(FakePredictor(), redis_url=redis_url))
    assert fams["cass_jobs_queue_length"][1] == {("cass_jobs_queue_length", ()): 0.0}
    assert "cass_predict_requests" in fams


def test_no_hand_written_exposition_remains():
    import inspect

    from backend.ops import cache_metrics

    from backend.ops import prom_stats

    from backend.predict import warmup
    for module in (metrics, cache_metrics, warmup, prom_stats):
        source = inspect.getsource(module)
        assert '"# TYPE' not in source and '"# HELP' not in source and "f\"# HELP" not in source, module.__name__
