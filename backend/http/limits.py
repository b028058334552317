"""Request limits of the HTTP edge (issue 21), kept apart from :mod:`backend.http.edge`'s checks.

* **body size per endpoint**, from ``Content-Length`` before a byte is read (and while reading a body
  without one): ``/setup`` ``CASS_MAX_SETUP_MB`` (2 MiB: a label config of 3,500 controls is 0.4 MB),
  ``/webhook`` ``CASS_MAX_WEBHOOK_MB`` (16 MiB), everything else ``CASS_MAX_REQUEST_MB`` (64 MiB);
  none above ``CASS_MAX_REQUEST_MB``;
* **tasks per ``/predict``** (``CASS_MAX_TASKS_PER_REQUEST``, 1000): more is a 400 naming the limit,
  answered right after the JSON parse, before any task is looked at, so one request can cost at most
  that many task entries, answer entries and per-task log lines;
* **smart regions per interactive ``/predict``** (``CASS_MAX_SMART_HINTS``, 20): more is a 400 naming
  the limit, before admission (the refiner's own ceiling is ``backend.controls.smart.MAX_HINTS``).
"""
from __future__ import annotations

#: path -> (the settings field of its body limit, the environment variable that sets it); the limits
#: and their defaults are fields of backend.config.Settings
ENDPOINT_LIMITS: dict[str, tuple[str, str]] = {
    "/setup": ("max_setup_bytes", "CASS_MAX_SETUP_MB"),
    "/webhook": ("max_webhook_bytes", "CASS_MAX_WEBHOOK_MB"),
}
GENERAL = ("max_request_bytes", "CASS_MAX_REQUEST_MB")


def body_limit(path: str, settings) -> tuple[int, str]:
    """``(bytes, the variable that sets it)`` a body sent to ``path`` may have (``settings``:
    :class:`backend.config.Settings`)."""
    general = int(getattr(settings, GENERAL[0]))
    field, name = ENDPOINT_LIMITS.get(path, GENERAL)
    own = int(getattr(settings, field))
    return (own, name) if own < general else (general, GENERAL[1])


def max_tasks(settings) -> int:
    """Tasks one ``/predict`` may carry."""
    return int(settings.max_tasks_per_request)


def too_many_tasks(data: dict, settings) -> str | None:
    """The 400 message when ``data['tasks']`` (a parsed ``/predict`` body) is over the limit, else None."""
    tasks = data.get("tasks")
    limit = max_tasks(settings)
    if isinstance(tasks, list) and len(tasks) > limit:
        return (f"POST /predict has {len(tasks)} tasks, over the limit of {limit} tasks per request "
                f"(CASS_MAX_TASKS_PER_REQUEST): retrieve predictions for fewer tasks at a time, or "
                f"pre-annotate the project with a job (docs/jobs.md)")
    return None


def too_many_hints(data: dict, settings) -> str | None:
    """The 400 message when an interactive ``/predict`` (``params.context.result``, or a top-level
    ``context``) holds more smart regions than ``CASS_MAX_SMART_HINTS``, else None."""
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    limit = int(settings.max_smart_hints)
    for context in (params.get("context"), data.get("context")):
        items = context.get("result") if isinstance(context, dict) else None
        if isinstance(items, list) and len(items) > limit:
            return (f"the context has {len(items)} smart regions, over the limit of {limit} per request "
                    f"(CASS_MAX_SMART_HINTS): Label Studio re-sends every smart region of the task with each "
                    f"new one; delete some, or accept the regions so far and continue")
    return None
