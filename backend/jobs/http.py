"""``POST /jobs``, ``GET /jobs``, ``GET /jobs/<id>``, ``DELETE /jobs/<id>`` on the backend.

The blueprint sits behind the app's basic auth (``backend.http.edge`` checks every path but
``/health``). Answers: 202 with the job record in state ``planning`` (planning and enqueueing go on
in a background thread: :meth:`backend.jobs.queue.Jobs.start`), 200, 400 (bad body, naming the field), 404 (no such
job), 409 with ``{"error", "job"}`` when a job for the same project and filter is running, 503 when
``REDIS_URL`` or Label Studio is missing or unreachable. Also the optional auto mode
(``CASS_AUTO_PREANNOTATE=true``): :func:`auto_preannotate` enqueues a ``TASKS_CREATED`` webhook's
tasks.
"""
from __future__ import annotations

import logging
from typing import Callable

import redis
from flask import Blueprint, current_app, jsonify, request

from backend.labelstudio.client import LabelStudioError
from backend.jobs.queue import JobConflict, JobNotFound
from backend.jobs.spec import JobSpec, JobSpecError
from backend.predict.projects import task_ids

log = logging.getLogger("backend.jobs")

blueprint = Blueprint("cass_jobs", __name__)


def register(app, settings, predictor) -> None:
    """Add the routes to ``app`` (idempotent); jobs take the model_version of ``predictor``."""
    app.extensions["cass_jobs"] = {"settings": settings, "predictor": predictor, "jobs": None}
    if "cass_jobs" not in app.blueprints:
        app.register_blueprint(blueprint)


def _state() -> dict:
    return current_app.extensions["cass_jobs"]


def jobs_for(state: dict):
    if state["jobs"] is None:
        from backend.labelstudio.client import Projects
        from backend.jobs.queue import Jobs, connect

        s = state["settings"]
        state["jobs"] = Jobs(connect(s.redis_url), Projects(s.label_studio_url or "", s.label_studio_api_key or ""),
                             s)
    return state["jobs"]


def _error(status: int, message: str, **extra):
    resp = jsonify({"status": status, "error": message, **extra})
    resp.status_code = status
    return resp


def _guard(call):
    try:
        return call()
    except JobSpecError as exc:
        return _error(400, str(exc))
    except JobNotFound as exc:
        return _error(404, str(exc))
    except JobConflict as exc:
        return _error(409, str(exc), job=exc.job_id)
    except LabelStudioError as exc:
        return _error(503, f"Label Studio: {exc}")
    except redis.exceptions.RedisError as exc:
        return _error(503, f"Redis (REDIS_URL) unreachable: {type(exc).__name__}: {exc}")


@blueprint.route("/jobs", methods=["POST"])
def start_job():
    def go():
        state = _state()
        spec = JobSpec.from_request(request.get_json(silent=True))
        rec = jobs_for(state).start(spec, state["predictor"].model_version, background=True)
        return jsonify(rec), 202
    return _guard(go)


@blueprint.route("/jobs", methods=["GET"])
def list_jobs():
    """``{"jobs": [...], "workers": {"workers", "last_seen_s"}, "warning": str | None}``; the warning
    (with the hint ``start one: python -m backend worker``) when no worker was seen for
    ``2 x CASS_JOB_MAINTENANCE_S`` (at least 30 s)."""
    def go():
        jobs = jobs_for(_state())
        seen = jobs.workers()
        warning = seen.pop("warning")
        return jsonify({"jobs": jobs.list(), "workers": seen, "warning": warning})
    return _guard(go)


@blueprint.route("/jobs/<job_id>", methods=["GET"])
def get_job(job_id: str):
    return _guard(lambda: jsonify(jobs_for(_state()).get(job_id)))


@blueprint.route("/jobs/<job_id>", methods=["DELETE"])
def cancel_job(job_id: str):
    return _guard(lambda: jsonify(jobs_for(_state()).cancel(job_id)))


def auto_enabled(settings) -> bool:
    """``CASS_AUTO_PREANNOTATE`` (``settings.jobs.auto_preannotate``, :class:`backend.config.JobSettings`)."""
    return settings.jobs.auto_preannotate


def auto_preannotate(app, data: dict, known: Callable[[dict], bool]) -> dict | None:
    """``TASKS_CREATED`` with ``CASS_AUTO_PREANNOTATE=true``: a job for the new tasks (None when off).

    Only for a project this backend was set up for (``known(project)``: the project registry); the job
    reads the named tasks back from that project in Label Studio, so ids of other projects do nothing."""
    state = app.extensions["cass_jobs"]
    if not auto_enabled(state["settings"]):
        return None
    project = data.get("project") if isinstance(data, dict) else None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    ids = tuple(task_ids(tasks))
    if not isinstance(project, dict) or not isinstance(project.get("id"), int) or not ids:
        return {"error": "no project id or task ids in the webhook"}
    if not known(project):
        return {"error": f"project {project['id']} was not set up with this backend"}
    try:
        rec = jobs_for(state).start(JobSpec(project=project["id"], task_ids=ids), state["predictor"].model_version,
                                    background=True)
    except (JobConflict, JobSpecError, LabelStudioError, redis.exceptions.RedisError) as exc:
        log.warning("auto pre-annotation of %d new task(s) of project %s not queued: %s", len(ids),
                    project["id"], exc)
        return {"error": str(exc)}
    return {"job": rec["id"], "tasks": len(ids), "status": rec["status"]}
