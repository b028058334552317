"""Deployment trust (issue 21): no unauthenticated server without an explicit opt-out, two Redis
roles (an evictable feature cache, a state Redis that must not evict), and the compose file."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib
import yaml

from backend.config import ConfigError, Settings
from backend.startup import check_exposure, state_redis_policy, warn_if_state_redis_evicts
from cass.cache import RedisCache
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def test_role_urls_fall_back_to_redis_url():
    both = Settings.from_env({"REDIS_URL": "redis://r:6379/0"})
    assert both.redis_url == both.state_redis_url == both.cache_redis_url == "redis://r:6379/0"
    split = Settings.from_env({"REDIS_URL": "redis://r/0", "CASS_STATE_REDIS_URL": "redis://:pw@state/0",
                               "CASS_CACHE_REDIS_URL": "redis://:pw@cache/0"})
    assert split.state_redis_url == split.redis_url == "redis://:pw@state/0"
    assert split.cache_redis_url == "redis://:pw@cache/0"
    assert ":pw@" not in repr(split)
    state_only = Settings.from_env({"CASS_STATE_REDIS_URL": "redis://state/0"})
    assert state_only.redis_url == "redis://state/0" and state_only.cache_redis_url is None
    with pytest.raises(ConfigError, match="CASS_CACHE_REDIS_URL"):
        Settings.from_env({"CASS_CACHE_REDIS_URL": "http://cache:6379"})


def test_the_server_refuses_to_start_without_basic_auth_or_the_opt_out(caplog):
    with pytest.raises(ConfigError) as err:
        check_exposure(Settings.from_env({}))
    assert "BASIC_AUTH_USER" in str(err.value) and "CASS_ALLOW_UNAUTHENTICATED=true" in str(err.value)
    check_exposure(Settings(basic_auth_user="u", basic_auth_pass="p"))
    caplog.set_level(logging.WARNING)
    opted = Settings.from_env({"CASS_ALLOW_UNAUTHENTICATED": "true"})
    assert opted.allow_unauthenticated
    check_exposure(opted)
    assert "CASS_ALLOW_UNAUTHENTICATED" in caplog.text and "/jobs" in caplog.text


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASS_", "LABEL_STUDIO_", "REDIS_URL", "BASIC_AUTH_"))}
    env.update(PYTHONPATH=str(REPO), CASS_CLIP_WEIGHTS="/nowhere/clip.safetensors",
               CASS_DINO_WEIGHTS="/nowhere/dino.pth", **extra)
    return env


@pytest.mark.parametrize("command", [["-m", "backend", "--port", "1"], ["-c", "import backend._wsgi"]])
def test_entry_points_refuse_before_loading_anything(command):
    out = subprocess.run([sys.executable, *command], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "BASIC_AUTH_USER" in text and "CASS_ALLOW_UNAUTHENTICATED" in text
    assert "/nowhere/clip" not in text  # refused before the weights are even looked at


def test_the_opt_out_lets_the_entry_point_go_on():
    out = subprocess.run([sys.executable, "-m", "backend", "--port", "1"], cwd=REPO, timeout=120,
                         env=_clean_env(CASS_ALLOW_UNAUTHENTICATED="true"), capture_output=True, text=True)
    assert out.returncode == 1 and "/nowhere/clip" in out.stderr  # got as far as the weights


def test_state_redis_eviction_policy_warning(redis_url, caplog):  # noqa: F811
    conn = redis_lib.Redis.from_url(redis_url)
    caplog.set_level(logging.WARNING)
    try:
        conn.config_set("maxmemory-policy", "allkeys-lru")
        assert state_redis_policy(conn) == "allkeys-lru"
        warn_if_state_redis_evicts(conn)
        assert "noeviction" in caplog.text and "CASS_STATE_REDIS_URL" in caplog.text
        caplog.clear()
        conn.config_set("maxmemory-policy", "noeviction")
        warn_if_state_redis_evicts(conn)
        assert caplog.text == ""
    finally:
        conn.config_set("maxmemory-policy", "noeviction")


def test_config_disabled_is_tolerated(caplog):
    class NoConfig:
        def config_get(self, name):
            raise redis_lib.exceptions.ResponseError("unknown command 'CONFIG'")

    caplog.set_level(logging.INFO)
    assert state_redis_policy(NoConfig()) is None
    warn_if_state_redis_evicts(NoConfig())  # no exception
    assert "could not read" in caplog.text


def test_a_cache_sharing_the_state_redis_never_asks_for_allkeys_lru(redis_url, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="cass.cache")
    RedisCache(redis_url, holds_state=True)  # the test server: maxmemory 0, noeviction
    assert "set maxmemory and allkeys-lru" not in caplog.text
    assert "keep it noeviction" in caplog.text and "CASS_CACHE_REDIS_URL" in caplog.text


def test_compose_has_two_private_redis_roles_with_passwords():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "redis" not in services
    for name, policy in (("redis-cache", "allkeys-lru"), ("redis-state", "noeviction")):
        svc = services[name]
        command = " ".join(svc["command"]) if isinstance(svc["command"], list) else svc["command"]
        assert f"--maxmemory-policy {policy}" in command, name
        assert "--requirepass" in command, name
        assert "ports" not in svc, name
    assert "--appendonly yes" in " ".join(services["redis-state"]["command"])
    assert "--appendonly no" in " ".join(services["redis-cache"]["command"])
    for name in ("cass-backend", "worker"):
        env = services[name]["environment"]
        assert "redis-cache" in env["CASS_CACHE_REDIS_URL"] and "redis-state" in env["CASS_STATE_REDIS_URL"]


def test_compose_redis_network_is_internal():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["networks"]["redis"]["internal"] is True
    for name in ("redis-cache", "redis-state"):
        assert compose["services"][name]["networks"] == ["redis"]
    assert "redis" in compose["services"]["cass-backend"]["networks"]


@pytest.mark.parametrize("host,refused", [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                          ("127.0.0.2", False), ("0.0.0.0", True), ("::", True),
                                          ("192.168.1.5", True), (None, True)])
def test_a_loopback_bind_needs_no_basic_auth(host, refused):
    """Bound to loopback only, nothing outside this machine reaches the backend: the README's one-step
    run (``--host 127.0.0.1``) starts without BASIC_AUTH_*; any other bind (or gunicorn's, unknown
    here: None) still needs them or the explicit opt-out."""
    settings = Settings.from_env({})
    if refused:
        with pytest.raises(ConfigError, match="BASIC_AUTH_USER"):
            check_exposure(settings, host=host)
    else:
        check_exposure(settings, host=host)
