"""Settings from the environment: defaults, parsing, and an error naming each bad variable."""
from __future__ import annotations

import pytest

from backend.config import ConfigError, Settings
from backend.controls.labels import NothingRule


def test_defaults_are_the_official_weights():
    s = Settings.from_env({})
    assert (s.clip_weights, s.dino_weights, s.preset) == ("openai", "dino_vitb8", "default")
    assert s.device is None and s.threads is None and s.redis_url is None
    assert s.label_studio_url is None and s.label_studio_api_key is None
    assert s.nothing == NothingRule()
    assert s.max_image_bytes == 64 << 20 and s.fetch_timeout_s == 30.0 and s.predict_budget_s == 80.0


def test_every_variable_is_read():
    s = Settings.from_env({
        "CASS_CLIP_WEIGHTS": "/w/clip.safetensors", "CASS_DINO_WEIGHTS": "/w/dino.pth", "CASS_PRESET": "voc21",
        "CASS_DEVICE": "cuda:1", "CASS_THREADS": "3", "REDIS_URL": "redis://redis:6379/0",
        "LABEL_STUDIO_URL": "http://label-studio:8080/", "LABEL_STUDIO_API_KEY": " abc ",
        "CASS_THRESHOLD": "0.35", "CASS_BACKGROUND": "wall, floor", "CASS_FETCH_TIMEOUT_S": "5",
        "CASS_MAX_IMAGE_MB": "2.5", "CASS_PREDICT_BUDGET_S": "40", "CASS_WARMUP": "false"})
    assert (s.clip_weights, s.dino_weights, s.preset, s.device, s.threads) == (
        "/w/clip.safetensors", "/w/dino.pth", "voc21", "cuda:1", 3)
    assert s.redis_url == "redis://redis:6379/0"
    assert (s.label_studio_url, s.label_studio_api_key) == ("http://label-studio:8080", "abc")
    assert s.nothing == NothingRule(0.35, ("wall", "floor"))
    assert (s.fetch_timeout_s, s.max_image_bytes, s.predict_budget_s, s.warmup) == (5.0, int(2.5 * 2**20), 40.0,
                                                                                     False)


def test_blank_values_mean_unset():
    assert Settings.from_env({"REDIS_URL": "", "CASS_CLIP_WEIGHTS": "  ", "CASS_THRESHOLD": ""}) == Settings()


@pytest.mark.parametrize("env, fragment", [
    ({"CASS_THREADS": "many"}, "CASS_THREADS = 'many' is not an integer"),
    ({"CASS_THREADS": "0"}, "CASS_THREADS = '0' must be at least 1"),
    ({"CASS_THRESHOLD": "2"}, "CASS_THRESHOLD = '2' is outside [0, 1]"),
    ({"CASS_MAX_IMAGE_MB": "nan"}, "CASS_MAX_IMAGE_MB = 'nan' must be at least"),
    ({"CASS_WARMUP": "maybe"}, "CASS_WARMUP = 'maybe' is not a boolean"),
    ({"LABEL_STUDIO_URL": "label-studio:8080"}, "LABEL_STUDIO_URL = 'label-studio:8080' is not an http(s) URL"),
    ({"LABEL_STUDIO_API_KEY": "abc"}, "LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not"),
])
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_admission_is_bounded_by_count_and_by_time():
    s = Settings.from_env({})
    assert (s.inference_slots, s.max_queue, s.queue_wait_s) == (1, 16, 60.0)
    s = Settings.from_env({"CASS_MAX_QUEUE": "4", "CASS_QUEUE_WAIT_S": "45"})
    assert (s.max_queue, s.queue_wait_s) == (4, 45.0)
    with pytest.raises(ConfigError, match="CASS_QUEUE_WAIT_S = '0' must be at least"):
        Settings.from_env({"CASS_QUEUE_WAIT_S": "0"})


def test_the_predictor_gets_the_time_bound(monkeypatch):
    """``build_predictor`` builds its InferenceSlots from the settings (fake engine, no weights)."""
    import cass
    from backend.predict.loading import build_predictor
    from tests.backend_fixtures import FakeEngine

    engine = FakeEngine()
    engine.device = "cpu"
    monkeypatch.setattr(cass, "create_model", lambda *a, **k: engine)
    predictor = build_predictor(Settings(warmup=False, max_queue=5, queue_wait_s=30.0))
    stats = predictor.slots.stats()
    assert (stats["max_queue"], stats["queue_wait_s"]) == (5, 30.0)
