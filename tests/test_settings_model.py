"""Every setting in one typed object (issue 20): each default written once, every documented variable a
field of it, the feature cache's settings composed into the backend's, a bad value refused at start."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.config import ConfigError, Settings

REPO = Path(__file__).resolve().parents[1]
#: documented variables that are not settings of the backend's object: read where they act
NOT_SETTINGS = {
    "CASS_MODEL_DIR",  # cass.weights.model_dir(): the CLI's and the backend's weight downloads
    "LOG_LEVEL",       # backend.ops.logs, before any settings are read
}


def documented_variables() -> set[str]:
    """The variables of the docs' settings tables (first column of a row, in backticks)."""
    names: set[str] = set()
    for doc in [*(REPO / "docs").glob("*.md"), REPO / "README.md"]:
        for line in doc.read_text().splitlines():
            cells = line.split("|")
            if line.startswith("| `") and len(cells) > 2:
                names.update(n for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]) if n == n.upper())
    return names - {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}  # webhook events


def test_every_documented_variable_is_a_field():
    from backend.config import GunicornSettings
    from cass.env_settings import env_variables

    known = set(env_variables(Settings)) | set(env_variables(GunicornSettings)) | NOT_SETTINGS
    assert documented_variables() - known == set()


def test_every_field_variable_is_documented():
    from cass.env_settings import env_variables

    docs = "".join(p.read_text() for p in [*(REPO / "docs").glob("*.md"), REPO / "README.md"])
    assert [name for name in env_variables(Settings) if f"`{name}" not in docs] == []


def test_defaults_are_the_environment_without_variables():
    from cass.cache.settings import DEFAULT_MAX_BYTES, CacheSettings, make_cache_from_env

    assert Settings.from_env({}) == Settings()
    assert Settings().cache == CacheSettings() == CacheSettings.from_env({})
    assert make_cache_from_env({}).max_bytes == Settings().cache.max_bytes == DEFAULT_MAX_BYTES


def test_the_cache_settings_are_read_once_and_checked_at_start():
    from cass.cache.settings import CacheSettings

    s = Settings.from_env({"REDIS_URL": "redis://r/0", "CASS_CACHE_MAX_BYTES": "1MiB", "CASS_CACHE_TTL_S": "60",
                           "CASS_REDIS_RETRY_S": "7"})
    assert s.cache == CacheSettings.from_env({"REDIS_URL": "redis://r/0", "CASS_CACHE_MAX_BYTES": "1MiB",
                                              "CASS_CACHE_TTL_S": "60", "CASS_REDIS_RETRY_S": "7"})
    assert (s.cache.max_bytes, s.cache.ttl_s, s.cache.retry_interval_s) == (1 << 20, 60, 7.0)
    assert s.cache_redis_url == s.cache.redis_url == "redis://r/0"
    with pytest.raises(ConfigError, match=r"^CASS_CACHE_TTL_S = 'soon' is not"):
        Settings.from_env({"CASS_CACHE_TTL_S": "soon"})
    with pytest.raises(ConfigError, match=r"^CASS_CACHE_MAX_BYTES = 'lots' "):
        Settings.from_env({"CASS_CACHE_MAX_BYTES": "lots"})


def test_connection_deadlines_and_allocator_are_settings():
    s = Settings.from_env({})
    assert (s.connections.header_timeout_s, s.connections.body_idle_s, s.connections.max_connections) == (10.0, 30.0,
                                                                                                          64)
    assert s.malloc_arenas == 2
    s = Settings.from_env({"CASS_HEADER_TIMEOUT_S": "2.5", "CASS_MAX_CONNECTIONS": "8", "CASS_MALLOC_ARENAS": "3"})
    assert (s.connections.header_timeout_s, s.connections.max_connections, s.malloc_arenas) == (2.5, 8, 3)
    for name, bad in (("CASS_BODY_IDLE_S", "0"), ("CASS_MAX_CONNECTIONS", "lots"), ("CASS_MALLOC_ARENAS", "0")):
        with pytest.raises(ConfigError, match=f"^{name} = '{bad}' "):
            Settings.from_env({name: bad})


def test_settings_are_frozen_and_checked_when_built_in_python():
    s = Settings()
    with pytest.raises(Exception):
        s.max_queue = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        Settings(inference_slots=0)
    assert s.model_copy(update={"max_queue": 3}).max_queue == 3


def test_a_secret_value_never_appears_in_a_message():
    for env in ({"REDIS_URL": "http://:hunter2@redis:6379"}, {"CASS_STATE_REDIS_URL": "ftp://:hunter2@r"}):
        with pytest.raises(ConfigError) as info:
            Settings.from_env(env)
        assert "hunter2" not in str(info.value) and next(iter(env)) in str(info.value)


def test_the_predictor_builds_its_cache_from_the_settings(monkeypatch):
    import cass
    from backend.predict.loading import build_predictor
    from cass.cache.settings import CacheSettings
    from tests.backend_fixtures import FakeEngine

    engine = FakeEngine()
    engine.device = "cpu"
    monkeypatch.setattr(cass, "create_model", lambda *a, **k: engine)
    monkeypatch.setenv("CASS_CACHE_MAX_BYTES", "3MiB")  # the settings object decides, not the environment
    predictor = build_predictor(Settings(warmup=False, cache=CacheSettings(max_bytes=5 << 20)))
    assert predictor.cache.max_bytes == 5 << 20


def documented_defaults() -> list[tuple[str, str]]:
    """``(variable, default)`` of the docs' tables with a *default* column, where the default is a literal:
    `x`, or a number or true/false (``10 (>= 0.5)``); a row naming several variables pairs them with as
    many defaults."""
    pairs = []
    for doc in (REPO / "docs").glob("*.md"):
        defaults_column = False
        for line in doc.read_text().splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) < 4:
                defaults_column = False
                continue
            if not line.startswith("| `"):
                defaults_column = defaults_column or cells[2] == "default"
                continue
            names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1])
            values = re.findall(r"`([^`]+)`", cells[2]) or re.findall(r"^(\d+(?:\.\d+)?|true|false)(?: \(.*\))?$",
                                                                      cells[2])
            if defaults_column and len(values) == len(names):
                pairs += [(n, v) for n, v in zip(names, values) if not v.startswith(("REDIS_URL", "~"))]
    return pairs


def test_the_documented_defaults_are_the_defaults():
    """Setting a variable to the default its docs name changes nothing (the docs repeat the default; this
    keeps them honest)."""
    from backend.config import GunicornSettings
    from cass.env_settings import env_variables

    pairs = documented_defaults()
    assert len(pairs) > 40, pairs
    for name, text in pairs:
        if name in NOT_SETTINGS:
            continue
        model = GunicornSettings if name in env_variables(GunicornSettings) else Settings
        assert model.from_env({name: text}) == model(), f"{name}: the docs say the default is {text!r}"
