"""One chunk of a job, run inside a worker (:mod:`.worker`) with the engine it keeps loaded.

Per chunk: read the project's label config and the chunk's tasks (with their predictions' model
versions) from Label Studio; build the request context through the one pipeline
(:class:`backend.predict.pipeline.Pipeline`: the same controls parser, limits, project memory and
``model_version`` as ``/predict``); record tasks that are not in the project as failed and tasks that
already have a prediction of this ``model_version`` as skipped; then, for the rest, download the
next ``prefetch`` tasks' images in threads while the current one is encoded, predict each task
(``Pipeline.predict_task``: feature cache, engine, brush/polygon regions), and post the predictions in bulk
(``post_every`` per Label Studio call, and whatever is left at the end). With ``batch`` > 1
(``CASS_JOB_BATCH``), the cache misses among each next ``batch`` tasks' images are encoded in one
``engine.encode_many`` call first (:mod:`.batching`); the tasks then find their features ready.

Exactly once: every post takes a per-task Redis lock (redis-py ``Lock``: a random token, released only
by its holder, so a holder whose lock expired cannot delete its successor's), asks Label Studio again which of its tasks
already have a prediction of this version, and posts only the others; a chunk retried after a
worker died mid-chunk therefore re-posts nothing. Cooperative cancel: the job's status is read
before every task. A failing task (404, not an image, ...) is recorded with its reason and the
chunk goes on, and its visible error prediction (no regions, score 0, ``model_version`` ``"error:
<reason> (<version>)"``: :mod:`backend.predict.errors`, what ``/predict`` answers) goes out with the
next bulk post, once per reason (a retried chunk sees it among the task's predictions); Label Studio
or Redis failures raise, and RQ retries the chunk.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from redis.exceptions import LockError

from backend.fetch.images import ImageFetchError
from backend.controls.labels import LabelConfigError, TaskDataError
from backend.predict.errors import error_prediction, is_error_version, task_error
from backend.predict.predictor import TASK_ERRORS, TaskInfo
from backend.predict.projects import Connection
from backend.jobs.batching import Prefill, prefill
from backend.labelstudio.client import Projects
from backend.jobs.store import TERMINAL, JobStore, retrying

log = logging.getLogger("backend.jobs")

LOCK_TTL_S = 120


@dataclass
class WorkerContext:
    """What a worker process keeps between chunks: the pipeline (loaded engine) and its connections."""

    pipeline: object                   # backend.predict.pipeline.Pipeline (backend.bootstrap)
    settings: object                   # backend.config.Settings
    projects: Projects
    store: JobStore
    name: str = "worker"
    prefetch: int = 2                  # images downloaded ahead of the one being encoded
    post_every: int = 8                # predictions per bulk import call
    redis_wait_s: float = 300.0        # how long a Redis outage may pause a chunk
    batch: int = 1                     # images per backbone call (engine.encode_many; .batching)
    fetch: object = None               # fetch(url, task_id) -> bytes; None: the project's fetcher
    counters: dict = field(default_factory=lambda: {"chunks": 0, "tasks_done": 0, "tasks_failed": 0,
                                                    "tasks_skipped": 0})

    @property
    def predictor(self):
        return self.pipeline.predictor


_CONTEXT: WorkerContext | None = None


def install(context: WorkerContext | None) -> None:
    """Set the process's context (the worker does this once, after loading the engine)."""
    global _CONTEXT
    _CONTEXT = context


def run_chunk(job_id: str, task_ids: list[int]) -> dict:
    """The RQ job function of one chunk; returns its counts ``{done, skipped, failed, cancelled}``."""
    if _CONTEXT is None:
        raise RuntimeError("run_chunk runs inside `python -m backend worker` (no engine loaded in this process)")
    return ChunkRun(_CONTEXT, job_id, [int(t) for t in task_ids]).run()


class ChunkRun:
    def __init__(self, ctx: WorkerContext, job_id: str, task_ids: list[int]):
        self.ctx, self.job_id, self.task_ids = ctx, job_id, task_ids
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "cancelled": False}
        self.pending: list[dict] = []  # predictions and visible error predictions for the next bulk post

    def redis(self, call, what: str):
        return retrying(call, what, self.ctx.redis_wait_s)

    def cancelled(self) -> bool:
        return self.redis(lambda: self.ctx.store.status(self.job_id), "reading the job status") in TERMINAL

    def run(self) -> dict:
        ctx, store = self.ctx, self.ctx.store
        rec = self.redis(lambda: store.record(self.job_id), "reading the job")
        if rec is None:
            log.warning("job %s: no record (expired or deleted): chunk dropped", self.job_id)
            return self.counts
        if rec["status"] in TERMINAL:
            self.counts["cancelled"] = rec["status"] == "cancelled"
            return self.counts
        self.redis(lambda: store.started(self.job_id), "starting the job")
        project = int(rec["spec"]["project"])
        try:
            config = ctx.projects.label_config(project)
            request = ctx.pipeline.context(str(project), ctx.pipeline.parse(config), label_config=config,
                                           fetch=ctx.fetch, connection=Connection())
        except (LabelConfigError, ImageFetchError) as exc:
            self.fail({t: task_error(exc) for t in self.task_ids})
            return self.finish(rec)
        version = request.version
        tasks = ctx.projects.tasks(project, ids=self.task_ids)
        found = {t["id"] for t in tasks}
        self.fail({t: f"not a task of project {project} (deleted, or a wrong id)"
                   for t in self.task_ids if t not in found})
        have = [t["id"] for t in tasks if any(p["model_version"] == version for p in t["predictions"])]
        self.skip(have)
        todo = [t for t in tasks if t["id"] not in set(have)]
        self.predict_all(project, todo, request)
        return self.finish(rec)

    # -------------------------------------------------------------------------------------------
    def predict_all(self, project: int, tasks: list[dict], request) -> None:
        targets, version, batch = request.controls, request.version, max(1, self.ctx.batch)
        window = max(1, self.ctx.prefetch + batch)
        ready: Prefill | None = None
        with ThreadPoolExecutor(max_workers=max(1, self.ctx.prefetch), thread_name_prefix="cass-prefetch") as pool:
            futures: dict[int, dict[str, Future]] = {}

            def prefetch(i: int) -> None:
                if i < len(tasks) and i not in futures:
                    futures[i] = {}
                    payload = {"id": tasks[i]["id"], "data": tasks[i]["data"]}
                    for target in targets:
                        try:
                            url = target.image_url(payload)
                        except TaskDataError:
                            continue  # predict_task raises it again, with the reason
                        if url not in futures[i]:
                            futures[i][url] = pool.submit(request.fetch, url, tasks[i]["id"])

            for i, task in enumerate(tasks):
                for j in range(i, i + window):
                    prefetch(j)
                if self.cancelled():
                    log.info("job %s cancelled: chunk stops before task %s", self.job_id, task["id"])
                    self.counts["cancelled"] = True
                    for fs in futures.values():
                        for f in fs.values():
                            f.cancel()
                    break
                if batch > 1 and i % batch == 0:  # the next `batch` tasks' cache misses in one backbone call
                    ready = self.prefill([futures[k] for k in range(i, min(i + batch, len(tasks)))])
                mine = futures.pop(i)
                payload = {"id": task["id"], "data": task["data"]}
                t0 = time.perf_counter()
                info = TaskInfo()
                try:
                    prediction = self.ctx.pipeline.predict_task(
                        payload, request.with_fetch(lambda url, task_id: mine[url].result()), info, ready)
                except Exception as exc:  # one bad task never fails the chunk
                    if isinstance(exc, TASK_ERRORS):
                        log.warning("job %s: task %s: no prediction: %s", self.job_id, task["id"], exc)
                    else:
                        log.exception("job %s: task %s: no prediction: unexpected %s", self.job_id, task["id"],
                                      type(exc).__name__)
                    self.failed_task(task, task_error(exc), version)
                else:
                    log.info("job %s: task %s: %d regions, %s, %.2fs", self.job_id, task["id"],
                             len(prediction["result"]), info.describe(), time.perf_counter() - t0)
                    self.pending.append({"task": task["id"], "result": prediction["result"],
                                         "score": prediction["score"], "model_version": version})
                    self.mark(computed=[task["id"]])  # progress per task; the post below is in bulk
                if len(self.pending) >= self.ctx.post_every:
                    self.post(project, version)
        self.post(project, version)

    def failed_task(self, task: dict, reason: str, version: str) -> None:
        """Record ``task`` as failed and queue its visible error prediction for the next bulk post
        (:func:`backend.predict.errors.error_prediction`, what ``/predict`` answers), unless the task
        already has that very prediction (a retried chunk) or the error means "later"."""
        self.fail({task["id"]: reason})
        shown = error_prediction(task["id"], reason, version)
        if shown is None or any(p.get("model_version") == shown["model_version"] for p in task.get("predictions", ())):
            return
        self.pending.append({k: shown[k] for k in ("task", "result", "score", "model_version")})

    def pending_errors(self) -> set[int]:
        """The tasks whose entry in ``pending`` is a visible error prediction (not a computed task)."""
        return {p["task"] for p in self.pending if is_error_version(p["model_version"])}

    def prefill(self, group: list[dict[str, Future]]) -> Prefill:
        """Batch-encode the cache misses among the downloaded images of ``group`` (see :mod:`.batching`);
        a failed download is left to its task (which records it)."""
        images = []
        for fs in group:
            for f in fs.values():
                try:
                    images.append(f.result())
                except Exception:
                    continue
        timing: dict = {}
        ready = prefill(self.ctx.predictor, images, self.ctx.batch, timing)
        if timing["batches"] or timing["batch_failures"]:
            log.info("job %s: %d image(s): %d cache hit(s), %d encoded in %d batched call(s) (%.2fs), %d batch(es) "
                     "failed", self.job_id, len(images), timing["hits"], timing["misses"], timing["batches"],
                     timing["encode_s"], timing["batch_failures"])
        return ready

    def post(self, project: int, version: str) -> None:
        """Post ``pending`` once per task (see the module docstring)."""
        if not self.pending:
            return
        conn, ids = self.ctx.store.conn, [p["task"] for p in self.pending]
        locks = [conn.lock(f"cass:jobs:posting:{project}:{t}:{version}", timeout=LOCK_TTL_S, sleep=0.2,
                           thread_local=False) for t in ids]
        deadline = time.monotonic() + LOCK_TTL_S
        held = []
        try:
            for lock in locks:  # ids ascend in every chunk: locks are always taken in the same order
                wait_s = max(0.0, deadline - time.monotonic())
                if not self.redis(lambda: lock.acquire(blocking_timeout=wait_s), "locking a task"):
                    raise RuntimeError(f"task lock {lock.name} held for over {LOCK_TTL_S}s")
                held.append(lock)
            already = self.ctx.projects.predicted(project, ids, version)
            fresh = [p for p in self.pending if p["task"] not in already]
            self.ctx.projects.import_predictions(project, fresh)
        finally:
            for lock in held:
                self.unlock(lock)
        errors = self.pending_errors()  # posted, or not (the task has a current prediction): failed already
        self.pending = []
        self.mark(done=[p["task"] for p in fresh if p["task"] not in errors], skipped=sorted(already - errors))

    def unlock(self, lock) -> None:
        """Release one task lock; redis-py's ``Lock.release`` deletes it only while it still holds this
        run's token, so a lock that expired (a slow post) and was taken by another worker stays theirs."""
        try:
            self.redis(lock.release, "unlocking a task")
        except LockError as exc:  # LockNotOwnedError: expired, perhaps taken over
            log.warning("job %s: task lock %s expired while posting (over %ss): left to its new holder (%s)",
                        self.job_id, lock.name, LOCK_TTL_S, exc)

    # -------------------------------------------------------------------------------------------
    def mark(self, done=(), skipped=(), computed=()) -> None:
        """Record posted (``done``), ``skipped`` and ``computed`` (predicted, waiting for the bulk post)
        tasks in the job record, and the chunk's counts in its RQ meta."""
        if done or skipped or computed:
            self.redis(lambda: self.ctx.store.mark(self.job_id, done=list(done), skipped=list(skipped),
                                                   computed=list(computed)), "recording progress")
        self.counts["done"] += len(done)
        self.counts["skipped"] += len(skipped)
        self.ctx.counters["tasks_done"] += len(done)
        self.ctx.counters["tasks_skipped"] += len(skipped)
        self.save_meta()

    def skip(self, ids) -> None:
        self.mark(skipped=list(ids))

    def fail(self, reasons: dict) -> None:
        if not reasons:
            return
        self.redis(lambda: self.ctx.store.mark(self.job_id, failed=reasons), "recording failures")
        self.counts["failed"] += len(reasons)
        self.ctx.counters["tasks_failed"] += len(reasons)
        self.save_meta()

    def save_meta(self) -> None:
        """The chunk's own progress in its RQ job's meta (``rq info`` / dashboards show it): ``done``
        counts the tasks predicted (``posting`` of them wait for the bulk post), per task."""
        from rq import get_current_job

        job = get_current_job()
        if job is not None:
            posting = len(self.pending) - len(self.pending_errors())  # predicted, waiting for the bulk post
            job.meta.update(self.counts, done=self.counts["done"] + posting, posting=posting,
                            size=len(self.task_ids))
            self.redis(job.save_meta, "saving chunk progress")

    def finish(self, rec: dict) -> dict:
        """Count the chunk; the chunk that records the job's last task finishes the job."""
        self.ctx.counters["chunks"] += 1
        store = self.ctx.store
        now = self.redis(lambda: store.record(self.job_id), "reading the job")
        if now is not None and now["status"] not in TERMINAL and \
                now["posted"] + now["skipped"] + now["failed"] >= now["total"]:  # posted, not only computed
            from backend.jobs.spec import JobSpec

            self.redis(lambda: store.set_status(self.job_id, "finished"), "finishing the job")
            self.redis(lambda: store.release(JobSpec.from_dict(now["spec"]).key, self.job_id), "releasing the job")
            log.info("job %s finished: %d done, %d skipped, %d failed of %d", self.job_id, now["done"],
                     now["skipped"], now["failed"], now["total"])
        return self.counts
