"""Start, watch, cancel and retry jobs: the one code path behind the CLI, ``/jobs`` and auto mode.

A job is claimed (one running job per project + filter) and recorded in state ``planning`` at once;
planning (which tasks, :meth:`Jobs.plan`) and enqueueing (``ENQUEUE_BATCH`` chunks per Redis
pipeline) follow in the caller (the CLI) or in a background thread (``POST /jobs``, auto mode), then
the job is ``queued``; ``running`` from its first chunk on; ``finished``, ``failed`` or ``cancelled``.

A job's chunks are RQ jobs on the queue ``CASS_JOB_QUEUE`` (``JobSettings.queue``, default
``cass-preannotate``) of the state Redis, ids ``<job id>-<chunk number>``, each with
``Retry(max=3)``: a chunk whose worker died (RQ finds it abandoned once its heartbeat lapses, see
:mod:`.worker`) or that raised is run again, and the runner skips every task that already has a
prediction of its ``model_version``.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from backend.jobs.allowlist import SERIALIZER
from backend.labelstudio.client import Projects
from backend.jobs.spec import JobSpec, JobSpecError, chunks
from backend.jobs.store import TERMINAL, JobStore

log = logging.getLogger("backend.jobs")

CHUNK_RETRIES = 3
ENQUEUE_BATCH = 500      # RQ jobs (chunks) per Redis pipeline when a job is enqueued
PLANNING_STALE_S = 600   # a job planning without a sign of life for this long failed (its process ended)


class JobConflict(Exception):
    """A job for the same project and filter is still running (HTTP 409)."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} for the same project and filter is still running: watch it, or cancel "
                         f"it first (python -m backend jobs cancel {job_id})")
        self.job_id = job_id


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return f"no job {self.args[0]!r} (python -m backend jobs lists them)"


def connect(redis_url: str | None) -> redis.Redis:
    """A client of the **state** Redis (``Settings.redis_url``: ``CASS_STATE_REDIS_URL``, else
    ``REDIS_URL``), which holds the queue and the job records. Queues and workers on it use
    :data:`backend.jobs.allowlist.SERIALIZER` (JSON)."""
    if not redis_url:
        raise JobSpecError("jobs need REDIS_URL or CASS_STATE_REDIS_URL (the state Redis holds the queue and the "
                           "job records; REDIS_URL serves both the feature cache and the state)")
    return redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)


class Jobs:
    """``conn``: Redis; ``projects``: a :class:`~backend.labelstudio.client.Projects` (or a fake in unit
    tests); ``settings``: a :class:`backend.config.Settings` (its ``jobs`` block: queue name, chunk
    timeout; its ``nothing``/``limits``/``regions``: how a label config is parsed when a job is
    planned), or only a :class:`backend.config.JobSettings`; default: the environment's job settings."""

    def __init__(self, conn: redis.Redis, projects: Projects, settings=None):
        from backend.config import JobSettings, Settings

        if isinstance(settings, Settings):
            self.settings, job_settings = settings, settings.jobs
        else:
            self.settings = Settings()
            job_settings = settings if settings is not None else JobSettings.from_env()
        self.conn = conn
        self.store = JobStore(conn)
        self.projects = projects
        self.queue = Queue(job_settings.queue, connection=conn, serializer=SERIALIZER)
        self.chunk_timeout_s = job_settings.chunk_timeout_s
        self.max_tasks = job_settings.max_tasks
        self.silent_s = max(30.0, 2.0 * job_settings.maintenance_s)  # "no worker seen" after this long

    def workers(self, now=None) -> dict:
        """``{"workers", "last_seen_s", "warning"}``: the RQ workers on the job queue, the age of the
        freshest heartbeat, and a warning with a hint when none was seen for ``silent_s``
        (:mod:`backend.jobs.watch`)."""
        from backend.jobs.watch import no_worker_warning, worker_presence

        presence = worker_presence(self.queue, now)
        return {**presence, "warning": no_worker_warning(presence, self.silent_s, self.queue.name)}

    def engine_version(self) -> str | None:
        """The running workers' engine version (None when there is none, or they disagree)."""
        versions = set(self.store.worker_model_versions().values())
        return versions.pop() if len(versions) == 1 else None

    def planned_version(self, project: int, engine_version: str) -> str:
        """The ``model_version`` the workers will post for ``project``: ``engine_version`` and the
        label-set digest of the project's output controls (:func:`backend.predict.version.model_version`,
        parsed as :meth:`backend.predict.pipeline.Pipeline.parse` does). Without the project memory's
        digest: with a non-empty memory the workers post ``...-mem.<digest>``, every task then counts as
        outdated here, and the runner skips, precisely, those that have that version."""
        from backend.controls.config import parse_controls
        from backend.controls.labels import LabelConfigError
        from backend.predict.version import model_version

        s = self.settings
        try:
            controls = parse_controls(self.projects.label_config(project), s.nothing, s.limits, s.regions)
        except LabelConfigError as exc:
            raise JobSpecError(f"project {project}: its label config cannot be predicted: {exc}") from None
        return model_version(engine_version, controls)

    # -------------------------------------------------------------------------------------------
    def start(self, spec: JobSpec, engine_version: str | None = None, *, background: bool = False) -> dict:
        """Claim, plan and enqueue ``spec``; returns the job record. Raises :class:`JobConflict` while
        the same job runs, :class:`JobSpecError` for more explicit task ids than ``CASS_JOB_MAX_TASKS``.
        ``background``: answer at once with the job in state ``planning`` while a thread plans and
        enqueues it (``POST /jobs``); else plan here and raise what planning raises (the CLI).
        ``engine_version``: the engine's version when the registered workers do not agree on one."""
        if spec.task_ids is not None and len(spec.task_ids) > self.max_tasks:
            raise JobSpecError(self._too_many(len(spec.task_ids), "task ids given"))
        engine_version = self.engine_version() or engine_version
        job_id = uuid.uuid4().hex[:12]
        holder = self.store.claim(spec.key, job_id)
        if holder is not None:
            raise JobConflict(holder)
        try:
            self.store.create(job_id, spec.to_dict(), spec.key)
        except BaseException:
            self.store.release(spec.key, job_id)
            raise
        if background:
            threading.Thread(target=self._plan_quietly, args=(job_id, spec, engine_version),
                             name=f"cass-plan-{job_id}", daemon=True).start()
        else:
            self.enqueue(job_id, spec, engine_version)
        return self.get(job_id)

    def _too_many(self, n: int, what: str) -> str:
        return (f"{n} {what}: more than CASS_JOB_MAX_TASKS = {self.max_tasks} tasks per job; split the job "
                f"(--tasks / \"tasks\", or a data-manager view) or raise CASS_JOB_MAX_TASKS")

    def _plan_quietly(self, job_id: str, spec: JobSpec, engine_version: str | None) -> None:
        try:
            self.enqueue(job_id, spec, engine_version)
        except Exception:  # recorded in the job (status failed, error) by enqueue
            pass

    def enqueue(self, job_id: str, spec: JobSpec, engine_version: str | None) -> None:
        """Plan the job (:meth:`plan`), record it, and enqueue its chunks ``ENQUEUE_BATCH`` per Redis
        pipeline; then planning -> queued. A failure fails the job (with the reason in ``error``),
        frees its lock and is raised; a job cancelled meanwhile stops being enqueued."""
        try:
            task_ids, version = self.plan(spec, engine_version)
            if len(task_ids) > self.max_tasks:
                raise JobSpecError(self._too_many(len(task_ids), f"tasks of project {spec.project} to queue"))
            parts = chunks(task_ids, spec.chunk_size)
            rq_ids = [f"{job_id}-{n:05d}" for n in range(len(parts))]
            self.store.planned(job_id, len(task_ids), rq_ids, version, engine_version)
            for first in range(0, len(parts), ENQUEUE_BATCH):
                if self.store.status(job_id) in TERMINAL:
                    log.info("job %s: %s while its chunks were enqueued", job_id, self.store.status(job_id))
                    return
                with self.conn.pipeline() as pipe:
                    for rq_id, part in zip(rq_ids[first:first + ENQUEUE_BATCH], parts[first:first + ENQUEUE_BATCH]):
                        self.queue.enqueue("backend.jobs.runner.run_chunk", job_id, part, job_id=rq_id,
                                           job_timeout=self.chunk_timeout_s, retry=Retry(max=CHUNK_RETRIES),
                                           result_ttl=7 * 86400, failure_ttl=7 * 86400, pipeline=pipe,
                                           description=f"job {job_id}: tasks {part[0]}..{part[-1]} of project "
                                                       f"{spec.project}")
                    pipe.execute()
                self.store.beat(job_id)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, JobSpecError) else f"planning failed: {type(exc).__name__}: {exc}"
            log.warning("job %s: %s", job_id, reason)
            try:
                self.store.set_status(job_id, "failed", reason)
                self.store.release(spec.key, job_id)
            except redis.exceptions.RedisError as again:
                log.warning("job %s: could not record the failure: %s", job_id, again)
            raise
        if parts:
            self.store.enqueued(job_id)
        else:
            self.store.set_status(job_id, "finished")
            self.store.release(spec.key, job_id)
        log.info("job %s: project %s, %d task(s) in %d chunk(s)%s", job_id, spec.project, len(task_ids),
                 len(parts), f", model_version {version}" if version else "")

    def plan(self, spec: JobSpec, engine_version: str | None) -> tuple[list[int], str | None]:
        """The task ids of ``spec`` in id order (``only_outdated``: without those that already have a
        prediction of the planned version) and that version (None when no engine version is known)."""
        if spec.task_ids is not None and (not spec.only_outdated or not engine_version):
            if spec.only_outdated:
                log.warning("only_outdated: no engine version known (no worker registered yet): every task is "
                            "queued and the workers skip those already predicted")
            return list(spec.task_ids), None  # unknown ids are recorded as failed by the runner
        version = self.planned_version(spec.project, engine_version) if engine_version else None
        tasks = self.projects.tasks(spec.project, ids=spec.task_ids, view=spec.view)
        if spec.only_outdated and version:
            tasks = [t for t in tasks if not any(p["model_version"] == version for p in t["predictions"])]
        elif spec.only_outdated:
            log.warning("only_outdated: no engine version known (no worker registered yet): every task is "
                        "queued and the workers skip those already predicted")
        return [t["id"] for t in tasks], version

    def get(self, job_id: str) -> dict:
        rec = self.store.record(job_id)
        if rec is None:
            raise JobNotFound(job_id)
        if rec["status"] not in TERMINAL:
            rec = self._settle(rec)
        from backend.jobs.watch import throughput

        rec["processed"] = rec["done"] + rec["skipped"] + rec["failed"]
        rate, eta = throughput(rec)
        rec["rate_tasks_per_s"] = round(rate, 3) if rate is not None else None
        rec["eta_s"] = round(eta, 1) if eta is not None else None
        return rec

    def _settle(self, rec: dict) -> dict:
        """Finish a job whose chunks are all over (the runner finishes it too, when its last task is
        recorded); a chunk RQ gave up on (failed after its retries) fails the job; so does planning
        that stopped (no heartbeat for ``PLANNING_STALE_S``: the process planning it ended)."""
        if rec["status"] == "planning":
            if time.time() - (rec["heartbeat"] or rec["created"] or 0) > PLANNING_STALE_S:
                self.store.set_status(rec["id"], "failed", f"planning stopped (no sign of life for "
                                                           f"{PLANNING_STALE_S}s: the process planning it ended?)")
                self.store.release(JobSpec.from_dict(rec["spec"]).key, rec["id"])
                rec = self.store.record(rec["id"])
            return rec
        statuses = []
        for job in Job.fetch_many(rec["chunks"], connection=self.conn, serializer=SERIALIZER):
            statuses.append(job.get_status(refresh=False) if job is not None else None)
        over = all(s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED, None)
                   for s in statuses)
        if rec["chunks"] and over:
            lost = sum(s in (JobStatus.FAILED, None) for s in statuses)
            status = "failed" if lost else "finished"
            self.store.set_status(rec["id"], status, f"{lost} chunk(s) failed after {CHUNK_RETRIES} retries "
                                                     f"(see the worker logs)" if lost else "")
            self.store.release(JobSpec.from_dict(rec["spec"]).key, rec["id"])
            rec = self.store.record(rec["id"])
        return rec

    def list(self, limit: int = 50) -> list[dict]:
        return [self.get(j) for j in self.store.job_ids(limit) if self.store.status(j) is not None]

    def cancel(self, job_id: str) -> dict:
        """Stop ``job_id``: queued chunks are cancelled in RQ, running ones stop before their next task."""
        rec = self.get(job_id)
        if rec["status"] in TERMINAL:
            return rec
        self.store.set_status(job_id, "cancelled")
        for job in Job.fetch_many(rec["chunks"], connection=self.conn, serializer=SERIALIZER):
            if job is not None and job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.DEFERRED,
                                                                     JobStatus.SCHEDULED):
                try:
                    job.cancel()
                except (NoSuchJobError, Exception) as exc:  # raced with a worker taking it: it stops itself
                    log.debug("job %s: chunk %s not cancelled in RQ: %s", job_id, job.id, exc)
        self.store.release(JobSpec.from_dict(rec["spec"]).key, job_id)
        log.info("job %s cancelled", job_id)
        return self.get(job_id)

    def retry_failed(self, job_id: str, chunk_size: int | None = None) -> dict:
        """A new job for the failed tasks of ``job_id``."""
        rec = self.get(job_id)
        failed = sorted(rec["failed_tasks"])
        if not failed:
            raise JobSpecError(f"job {job_id} has no failed tasks to retry")
        old = JobSpec.from_dict(rec["spec"])
        spec = JobSpec(project=old.project, task_ids=tuple(failed), chunk_size=chunk_size or old.chunk_size,
                       retry_of=job_id)
        return self.start(spec, rec.get("engine_version"))
