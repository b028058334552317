"""The job record in Redis, shared by every enqueuer and worker.

Keys (``cass:jobs:`` prefix)::

    cass:jobs:<id>            hash: spec (JSON), status (planning, queued, running, finished,
                              cancelled, failed), total, chunks (JSON list of RQ job ids),
                              model_version (planned: engine + label set), engine_version,
                              created, started (the first chunk), finished, first_prediction,
                              error, heartbeat (of the planner)
    cass:jobs:<id>:done       set of task ids with a prediction posted by this job
    cass:jobs:<id>:computed   set of task ids predicted by a worker, waiting for their bulk post
    cass:jobs:<id>:skipped    set of task ids that already had a prediction of this model_version
    cass:jobs:<id>:failed     hash task id -> reason (removed again when a retry succeeds)
    cass:jobs:index           sorted set of job ids by creation time
    cass:jobs:active:<key>    the running job of one project + filter (the 409 lock)
    cass:jobs:model_versions  hash worker name -> model_version of the running workers

Sets make progress idempotent: a chunk retried after a worker died re-adds the same task ids, so
``done + skipped + failed`` never exceeds ``total``. A task moves from ``computed`` to ``done`` (or
``skipped``, ``failed``) in one transaction, so it is counted once: progress advances per task
computed (:meth:`JobStore.record`'s ``done`` counts both) while predictions are posted in bulk.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable, TypeVar

import redis
import tenacity

log = logging.getLogger("backend.jobs")

PREFIX = "cass:jobs:"
TERMINAL = ("finished", "cancelled", "failed")
T = TypeVar("T")


def job_key(job_id: str, part: str = "") -> str:
    return f"{PREFIX}{job_id}{':' + part if part else ''}"


def retrying(call: Callable[[], T], what: str, wait_s: float = 300.0, sleep=time.sleep) -> T:
    """``call()``, retried while Redis is unreachable (connection refused/reset, timeouts) for up to
    ``wait_s`` seconds of wall-clock time with backoff 0.5 s .. 5 s (tenacity: no retry whose sleep
    would end past the budget); then the last error is raised. A Redis outage therefore pauses a
    worker instead of losing the chunk. One WARNING line per outage."""
    logged = []

    def warn(state: tenacity.RetryCallState) -> None:
        if not logged:
            log.warning("Redis unreachable during %s (%s): waiting up to %.0fs", what, state.outcome.exception(), wait_s)
            logged.append(True)

    retry = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)),
        wait=tenacity.wait_exponential(multiplier=0.5, max=5.0), stop=tenacity.stop_before_delay(wait_s),
        before_sleep=warn, sleep=sleep, reraise=True)
    return retry(call)


class JobStore:
    """Reads and writes the keys above on ``conn`` (a ``redis.Redis``)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn

    # -- creation and the one-running-job lock ---------------------------------------------------
    def claim(self, spec_key: str, job_id: str) -> str | None:
        """Take the lock of ``spec_key`` for ``job_id``; returns None, or the id of the job that holds
        it and is still running (a lock left by a finished/cancelled/vanished job is taken over)."""
        lock = f"{PREFIX}active:{spec_key}"
        for _ in range(5):
            if self.conn.set(lock, job_id, nx=True):
                return None
            holder = self.conn.get(lock)
            holder = holder.decode() if holder is not None else None
            if holder is not None and self.status(holder) not in TERMINAL + (None,):
                return holder
            with self.conn.pipeline() as pipe:  # compare-and-delete the stale lock, then try again
                try:
                    pipe.watch(lock)
                    if pipe.get(lock) == (holder.encode() if holder else None):
                        pipe.multi()
                        pipe.delete(lock)
                        pipe.execute()
                except redis.exceptions.WatchError:
                    pass
        raise RuntimeError(f"could not take the job lock {lock}")

    def release(self, spec_key: str, job_id: str) -> None:
        lock = f"{PREFIX}active:{spec_key}"
        if self.conn.get(lock) == job_id.encode():
            self.conn.delete(lock)

    def create(self, job_id: str, spec: dict, spec_key: str) -> None:
        """A new job in state ``planning`` (its tasks and chunks come with :meth:`planned`)."""
        now = time.time()
        with self.conn.pipeline() as pipe:
            pipe.hset(job_key(job_id), mapping={
                "spec": json.dumps(spec), "spec_key": spec_key, "status": "planning", "total": 0,
                "chunks": "[]", "model_version": "", "engine_version": "", "created": now, "started": "",
                "finished": "", "first_prediction": "", "error": "", "heartbeat": now})
            pipe.zadd(f"{PREFIX}index", {job_id: now})
            pipe.execute()

    def planned(self, job_id: str, total: int, chunks: list[str], model_version: str | None,
                engine_version: str | None) -> None:
        """The plan of a job (still ``planning`` while its chunks are enqueued)."""
        self.conn.hset(job_key(job_id), mapping={
            "total": total, "chunks": json.dumps(chunks), "model_version": model_version or "",
            "engine_version": engine_version or "", "heartbeat": time.time()})

    def beat(self, job_id: str) -> None:
        """The planner is alive (a ``planning`` job without a beat for long is failed by ``Jobs.get``)."""
        self.conn.hset(job_key(job_id), "heartbeat", time.time())

    def enqueued(self, job_id: str) -> None:
        """planning -> queued, once every chunk is in RQ (a later status is left alone)."""
        self.conn.eval("if redis.call('hget', KEYS[1], 'status') == 'planning' then "
                       "redis.call('hset', KEYS[1], 'status', 'queued') end", 1, job_key(job_id))

    # -- progress (idempotent) -------------------------------------------------------------------
    def mark(self, job_id: str, done=(), skipped=(), failed: dict | None = None, computed=()) -> None:
        """Record task outcomes in one transaction; a task that succeeds is removed from ``failed``, a
        task posted, skipped or failed from ``computed`` (predicted, waiting for its bulk post)."""
        with self.conn.pipeline() as pipe:
            if computed:
                pipe.sadd(job_key(job_id, "computed"), *computed)
                pipe.hdel(job_key(job_id, "failed"), *computed)
            if done:
                pipe.sadd(job_key(job_id, "done"), *done)
                pipe.hdel(job_key(job_id, "failed"), *done)
            if skipped:
                pipe.sadd(job_key(job_id, "skipped"), *skipped)
                pipe.hdel(job_key(job_id, "failed"), *skipped)
            if failed:
                pipe.hset(job_key(job_id, "failed"), mapping={str(k): v for k, v in failed.items()})
            settled = [*done, *skipped, *(failed or ())]
            if settled:
                pipe.srem(job_key(job_id, "computed"), *settled)
            pipe.execute()
        if done:
            self.conn.eval("if redis.call('hget', KEYS[1], 'first_prediction') == '' then "
                           "redis.call('hset', KEYS[1], 'first_prediction', ARGV[1]) end", 1,
                           job_key(job_id), repr(time.time()))

    def started(self, job_id: str) -> None:
        """A chunk starts: the job's first one records ``started``; queued -> running (a job still
        ``planning`` -- chunks enqueued, not all yet -- and a later status are left alone)."""
        self.conn.eval("local s = redis.call('hget', KEYS[1], 'status') "
                       "if s == 'queued' then redis.call('hset', KEYS[1], 'status', 'running') end "
                       "local t = redis.call('hget', KEYS[1], 'started') "
                       "if s and (not t or t == '') then redis.call('hset', KEYS[1], 'started', ARGV[1]) end",
                       1, job_key(job_id), repr(time.time()))

    def set_status(self, job_id: str, status: str, error: str = "") -> None:
        fields = {"status": status}
        if status in TERMINAL:
            fields["finished"] = time.time()
        if error:
            fields["error"] = error
        self.conn.hset(job_key(job_id), mapping=fields)

    # -- reading ---------------------------------------------------------------------------------
    def status(self, job_id: str) -> str | None:
        value = self.conn.hget(job_key(job_id), "status")
        return value.decode() if value is not None else None

    def record(self, job_id: str) -> dict | None:
        raw = self.conn.hgetall(job_key(job_id))
        if not raw:
            return None
        rec = {k.decode(): v.decode() for k, v in raw.items()}
        with self.conn.pipeline() as pipe:  # one transaction: a task moving between sets counts once
            pipe.hgetall(job_key(job_id, "failed"))
            for part in ("done", "skipped", "computed"):
                pipe.scard(job_key(job_id, part))
            failed_raw, posted, skipped, computed = pipe.execute()
        failed = {k.decode(): v.decode() for k, v in failed_raw.items()}
        # predicted and waiting for a bulk post count as done while the job runs; once it is over, a
        # task still waiting was never posted (its chunk failed for good, or a cancelled chunk's post)
        posting = 0 if rec["status"] in TERMINAL else computed

        def num(name):
            return float(rec[name]) if rec.get(name) else None

        return {"id": job_id, "spec": json.loads(rec["spec"]), "status": rec["status"],
                "total": int(rec["total"]), "done": posted + posting, "posted": posted, "posting": posting,
                "skipped": skipped, "failed": len(failed),
                "failed_tasks": {int(k): v for k, v in sorted(failed.items(), key=lambda kv: int(kv[0]))},
                "chunks": json.loads(rec["chunks"]), "model_version": rec.get("model_version") or None,
                "engine_version": rec.get("engine_version") or None,
                "created": num("created"), "started": num("started"), "finished": num("finished"),
                "heartbeat": num("heartbeat"),
                "first_prediction": num("first_prediction"), "error": rec.get("error") or None}

    def job_ids(self, limit: int = 50) -> list[str]:
        return [j.decode() for j in self.conn.zrevrange(f"{PREFIX}index", 0, limit - 1)]

    # -- workers' model versions -----------------------------------------------------------------
    def register_worker(self, name: str, model_version: str) -> None:
        self.conn.hset(f"{PREFIX}model_versions", name, model_version)

    def unregister_worker(self, name: str) -> None:
        self.conn.hdel(f"{PREFIX}model_versions", name)

    def worker_model_versions(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.conn.hgetall(f"{PREFIX}model_versions").items()}
