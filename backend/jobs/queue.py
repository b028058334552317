"""Start, watch, cancel and retry jobs: the one code path behind the CLI, ``/jobs`` and auto mode.

A job's chunks are RQ jobs on the queue ``cass-preannotate`` of ``REDIS_URL`` (the Redis of the
feature cache), ids ``<job id>-<chunk number>``, each with ``Retry(max=3)``: a chunk whose worker
died (RQ finds it abandoned once its heartbeat lapses, see :mod:`.worker`) or that raised is run
again, and the runner skips every task that already has a prediction of its ``model_version``.
"""
from __future__ import annotations

import logging
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

QUEUE_NAME = "cass-preannotate"  # the default of CASS_JOB_QUEUE (backend.config.JobSettings.queue)
CHUNK_RETRIES = 3


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
    """``conn``: Redis; ``projects``: a :class:`~.lsclient.Projects` (or a fake in unit tests);
    ``settings``: a :class:`backend.config.JobSettings` (queue name, chunk timeout; default: the
    environment's)."""

    def __init__(self, conn: redis.Redis, projects: Projects, settings=None):
        from backend.config import JobSettings

        settings = settings if settings is not None else JobSettings.from_env()
        self.conn = conn
        self.store = JobStore(conn)
        self.projects = projects
        self.queue = Queue(settings.queue, connection=conn, serializer=SERIALIZER)
        self.chunk_timeout_s = settings.chunk_timeout_s

    def model_version(self) -> str | None:
        """The running workers' ``model_version`` (None when there is none, or they disagree)."""
        versions = set(self.store.worker_model_versions().values())
        return versions.pop() if len(versions) == 1 else None

    # -------------------------------------------------------------------------------------------
    def start(self, spec: JobSpec, model_version: str | None = None) -> dict:
        """Plan and enqueue ``spec``; raises :class:`JobConflict` while the same job runs."""
        model_version = model_version or self.model_version()
        job_id = uuid.uuid4().hex[:12]
        holder = self.store.claim(spec.key, job_id)
        if holder is not None:
            raise JobConflict(holder)
        try:
            task_ids = self.plan(spec, model_version)
            parts = chunks(task_ids, spec.chunk_size)
            rq_ids = [f"{job_id}-{n:05d}" for n in range(len(parts))]
            self.store.create(job_id, spec.to_dict(), spec.key, len(task_ids), rq_ids, model_version)
            with self.conn.pipeline() as pipe:
                for rq_id, part in zip(rq_ids, parts):
                    self.queue.enqueue("backend.jobs.runner.run_chunk", job_id, part, job_id=rq_id,
                                       job_timeout=self.chunk_timeout_s, retry=Retry(max=CHUNK_RETRIES),
                                       result_ttl=7 * 86400, failure_ttl=7 * 86400, pipeline=pipe,
                                       description=f"job {job_id}: tasks {part[0]}..{part[-1]} of project "
                                                   f"{spec.project}")
                pipe.execute()
        except BaseException:
            self.store.release(spec.key, job_id)
            raise
        if not parts:
            self.store.release(spec.key, job_id)
        log.info("job %s: project %s, %d task(s) in %d chunk(s)%s", job_id, spec.project, len(task_ids),
                 len(parts), f", model_version {model_version}" if model_version else "")
        return self.get(job_id)

    def plan(self, spec: JobSpec, model_version: str | None) -> list[int]:
        """The task ids of ``spec``, in id order (``only_missing``: without those already predicted)."""
        if spec.task_ids is not None and not spec.only_missing:
            return list(spec.task_ids)  # unknown ids are recorded as failed by the runner
        tasks = self.projects.tasks(spec.project, ids=spec.task_ids, view=spec.view)
        if spec.only_missing and model_version:
            tasks = [t for t in tasks if not any(p["model_version"] == model_version for p in t["predictions"])]
        elif spec.only_missing:
            log.warning("only_missing: no worker has registered its model_version yet; every task is queued "
                        "and the workers skip those already predicted")
        return [t["id"] for t in tasks]

    # -------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        rec = self.store.record(job_id)
        if rec is None:
            raise JobNotFound(job_id)
        if rec["status"] not in TERMINAL:
            rec = self._settle(rec)
        rec["processed"] = rec["done"] + rec["skipped"] + rec["failed"]
        return rec

    def _settle(self, rec: dict) -> dict:
        """Finish a job whose chunks are all over (the runner finishes it too, when its last task is
        recorded); a chunk RQ gave up on (failed after its retries) fails the job."""
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
        return self.start(spec, rec["model_version"])
