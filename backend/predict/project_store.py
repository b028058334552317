"""What ``/setup`` learnt per project, kept in the **state** Redis so that every process knows it.

Without it a project is known only to the process whose ``/setup`` saw it: after a restart, or in
another gunicorn worker or replica, the project's webhooks (annotations for the project memory and
agreement, ``TASKS_CREATED`` for warm-up) were refused as "not set up" until Label Studio happened to
call ``/setup`` again (it does so before a prediction run and when the model page is opened).

One key per project, ``cass:project:v1:<project>``: JSON ``{"hostname", "label_config"}`` with a TTL
refreshed by every ``/setup`` (:data:`TTL_S`). The token ``/setup`` sent is **never** stored: a
process that learns a project from Redis reaches Label Studio with ``LABEL_STUDIO_API_KEY`` (or not
at all). The label config is bounded by ``/setup``'s body limit; entries over :data:`MAX_ENTRY_BYTES`
are not stored. Redis errors are logged and make the store answer "unknown" (nothing is trusted
that could not be read).
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger("backend.predict.projects")

#: How long a project stays known without a new ``/setup`` (30 days).
TTL_S = 30 * 24 * 3600
#: The largest entry stored (a label config over this is not shared between processes).
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class ProjectStore:
    """``client``: a ``redis.Redis`` of the state Redis; None: nothing is shared (in-process only)."""

    def __init__(self, client=None, prefix: str = "cass:project:v1"):
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, redis_url: str | None) -> "ProjectStore":
        """``redis_url``: the state Redis (``Settings.state_redis_url``); None: in-process only."""
        if not redis_url:
            return cls()
        import redis

        return cls(redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5))

    def key(self, project: str) -> str:
        return f"{self.prefix}:{project}"

    def put(self, project: str, hostname: str, label_config: str | None) -> bool:
        """Remember ``project``'s Label Studio address and config; False when not stored."""
        if self.client is None or not isinstance(label_config, str):
            return False
        value = json.dumps({"hostname": hostname or "", "label_config": label_config})
        if len(value) > MAX_ENTRY_BYTES:
            log.warning("project %s: label config of %d bytes not shared through Redis (limit %d)",
                        project, len(value), MAX_ENTRY_BYTES)
            return False
        try:
            self.client.set(self.key(project), value, ex=TTL_S)
        except Exception as exc:  # redis errors: the project stays known to this process only
            log.warning("project %s: could not remember its /setup in the state Redis: %s",
                        project, type(exc).__name__)
            return False
        return True

    def get(self, project: str) -> dict | None:
        """``{"hostname", "label_config"}`` of ``project``'s last ``/setup``, or None (unknown, or
        the state Redis could not be read)."""
        if self.client is None:
            return None
        try:
            raw = self.client.get(self.key(project))
        except Exception as exc:
            log.warning("project %s: the state Redis could not be read: %s", project, type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("label_config"), str) \
                or not isinstance(entry.get("hostname", ""), str):
            log.warning("project %s: an unreadable entry in the state Redis is ignored", project)
            return None
        return {"hostname": entry.get("hostname", ""), "label_config": entry["label_config"]}
