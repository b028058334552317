"""Checks a serving process and a job worker run before they start (issue 21; docs/security.md).

* :func:`check_exposure`: the HTTP server refuses to start without basic auth
  (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``) unless it is bound to loopback only (``python -m backend
  --host 127.0.0.1``: nothing outside the machine reaches it) or ``CASS_ALLOW_UNAUTHENTICATED=true``
  says the network is trusted: ``POST /jobs``, ``DELETE /jobs`` and ``POST /webhook`` change state, and
  ``/predict`` spends the machine. Called by the served entry points (``python -m backend``,
  ``backend._wsgi``), not by ``create_app``, so tests build apps freely;
* :func:`warn_if_state_redis_evicts`: the state Redis (``CASS_STATE_REDIS_URL``, else
  ``REDIS_URL``) holds RQ's queues and job records, project memories and agreement totals; with
  any ``maxmemory-policy`` but ``noeviction`` Redis may silently drop them. One warning at start
  (``CONFIG GET``; a Redis with ``CONFIG`` renamed away is tolerated).
"""
from __future__ import annotations

import ipaddress
import logging

from backend.config import ConfigError, Settings

log = logging.getLogger("backend.startup")


def is_loopback(host: str | None) -> bool:
    """``host`` (a bind address) reaches this machine only: 127.0.0.0/8, ::1 or ``localhost``."""
    if host is None:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str | None = None) -> None:
    """Raise :class:`ConfigError` when the server would serve its state-changing endpoints to anyone.
    ``host``: the address the server binds (None when unknown, e.g. under gunicorn: not loopback)."""
    if settings.basic_auth_user and settings.basic_auth_pass:
        return
    if is_loopback(host):
        log.info("serving on %s (loopback only) without basic auth: only this machine reaches it", host)
        return
    if settings.allow_unauthenticated:
        log.warning("CASS_ALLOW_UNAUTHENTICATED=true: serving WITHOUT basic auth; anyone who can reach this "
                    "backend can start and cancel jobs (/jobs), send webhooks (/webhook) and run predictions. "
                    "Only on a trusted network (docs/security.md)")
        return
    raise ConfigError("no basic auth: BASIC_AUTH_USER and BASIC_AUTH_PASS are not set, so anyone who can reach "
                      "the backend could start or cancel jobs (POST/DELETE /jobs), send webhooks (POST /webhook) "
                      "and run predictions. Either set BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same pair in "
                      "Label Studio's model connection, plus an Authorization header on its webhook), or, on a "
                      "trusted network only, set CASS_ALLOW_UNAUTHENTICATED=true (docs/security.md). Bound to "
                      "loopback only (--host 127.0.0.1) none of this is needed")


def state_redis_policy(conn) -> str | None:
    """The state Redis's ``maxmemory-policy``, or None when it cannot be read (CONFIG disabled, ...)."""
    try:
        found = conn.config_get("maxmemory-policy")
    except Exception as exc:  # redis ResponseError (CONFIG renamed/ACL), connection errors
        log.info("could not read the state Redis's maxmemory-policy (%s: %s); make sure it is noeviction",
                 type(exc).__name__, exc)
        return None
    value = (found or {}).get("maxmemory-policy")
    return value.decode() if isinstance(value, bytes) else value


def warn_if_state_redis_evicts(conn, shared_with_cache: bool = False) -> str | None:
    """Log one warning when the state Redis may evict keys; returns the policy (None: unknown)."""
    policy = state_redis_policy(conn)
    if policy is not None and policy != "noeviction":
        log.warning("the state Redis has maxmemory-policy %s: it may evict RQ jobs, project memories and "
                    "agreement totals. Set maxmemory-policy noeviction on it%s (docs/security.md, "
                    "CASS_STATE_REDIS_URL)", policy,
                    " and give the feature cache its own evicting Redis (CASS_CACHE_REDIS_URL)"
                    if shared_with_cache else "")
    return policy


def check_state_redis(settings: Settings) -> None:
    """:func:`warn_if_state_redis_evicts` on ``settings``' state Redis (nothing without one)."""
    if not settings.state_redis_url:
        return
    import redis

    try:
        conn = redis.Redis.from_url(settings.state_redis_url, socket_timeout=5, socket_connect_timeout=5)
        warn_if_state_redis_evicts(conn, shared_with_cache=settings.cache_redis_url == settings.state_redis_url)
        conn.close()
    except Exception as exc:  # never stops a start: Redis may come later
        log.info("state Redis not checked: %s: %s", type(exc).__name__, exc)


def server_checks(settings: Settings, host: str | None = None) -> None:
    """What a serving process checks before loading the model (raises :class:`ConfigError`);
    ``host``: the bind address of ``python -m backend`` (None: unknown)."""
    check_exposure(settings, host)
    check_state_redis(settings)
