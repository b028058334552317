"""``python -m backend worker``: an RQ worker that loads the engine once and keeps it.

RQ's default ``Worker`` forks a work horse per job (the engine would be loaded again per chunk, and
CUDA does not survive ``fork``); :class:`CASSWorker` is RQ's non-forking ``SimpleWorker`` plus:

* **a heartbeat thread** during each chunk (the main thread is busy computing): every
  ``heartbeat_s`` it refreshes the worker, the execution and the job in Redis with a TTL of
  ``3 x heartbeat_s``. RQ 3.0's ``SimpleWorker`` has no such thread: a chunk only becomes
  "abandoned" when its started-registry entry expires, ``job_timeout + 60`` s after it started.
  With the heartbeat, a worker killed with ``kill -9`` leaves an entry that expires within
  ``3 x heartbeat_s``; the next maintenance run of any live worker (every ``maintenance_s``)
  finds it in ``StartedJobRegistry.cleanup`` and, the chunk having ``Retry(max=3)``, requeues it;
* **only its own jobs**: JSON-serialised, and only the allow-listed functions run
  (:mod:`backend.jobs.allowlist`; a job naming anything else is marked failed, never imported);
* **Redis outages**: ``Worker.work`` gives up on a Redis timeout or error; the loop here then waits
  for Redis (logging once) and starts the worker again with the same engine; a chunk that was
  running meanwhile waits in :func:`~.store.retrying` for up to ``CASS_JOB_REDIS_WAIT_S``.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

import redis
from rq import SimpleWorker
from rq.worker import WorkerStatus

from backend.jobs.allowlist import SERIALIZER, AllowedJob
from backend.jobs.queue import connect
from backend.jobs.runner import WorkerContext, install
from backend.jobs.store import JobStore

log = logging.getLogger("backend.jobs.worker")


class CASSWorker(SimpleWorker):
    """See the module docstring. Jobs are JSON (never unpickled) and only the allow-listed job
    functions run (:mod:`backend.jobs.allowlist`)."""

    heartbeat_s: float = 10.0
    job_class = AllowedJob

    def __init__(self, queues, *args, **kwargs):
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("job_class", AllowedJob)
        super().__init__(queues, *args, **kwargs)

    #: set when a stop was asked for (SIGTERM/SIGINT or RQ's shutdown command): our own public flag,
    #: so the restart loop in :func:`main` reads none of RQ's private attributes
    stopping: bool = False

    def request_stop(self, signum, frame):
        self.stopping = True
        super().request_stop(signum, frame)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return max(3, int(3 * self.heartbeat_s))

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat():
            while not stop.wait(self.heartbeat_s):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as exc:  # Redis away: the next beat tries again
                    log.debug("heartbeat of chunk %s failed: %s", job.id, exc)

        thread = threading.Thread(target=beat, name="cass-heartbeat", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join(timeout=5)
        self.set_state(WorkerStatus.IDLE)


def wait_for_redis(conn: redis.Redis, stopping: threading.Event) -> None:
    logged = False
    while not stopping.is_set():
        try:
            conn.ping()
            if logged:
                log.info("Redis is back: the worker goes on")
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if not logged:
                log.warning("Redis unreachable (%s): the worker waits for it", exc)
                logged = True
            stopping.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    """Load the engine, then work on the queue until SIGTERM/SIGINT (``--burst``: until it is empty)."""
    import argparse

    from backend.config import ConfigError, Settings
    from backend.ops.logs import setup_logging
    from backend.bootstrap import build
    from backend.labelstudio.client import LabelStudioError, Projects

    parser = argparse.ArgumentParser(prog="python -m backend worker", description=main.__doc__)
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default host-pid-random)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = Settings.from_env()
        conn = connect(settings.redis_url)
        projects = Projects(settings.label_studio_url or "", settings.label_studio_api_key or "")
    except (ConfigError, LabelStudioError, ValueError) as exc:
        print(f"configuration error: {exc}", flush=True)
        return 2
    from backend.startup import check_state_redis

    check_state_redis(settings)  # a warning unless the state Redis is noeviction (it holds the queue)
    job = settings.jobs  # CASS_JOB_* (backend.config.JobSettings)
    heartbeat_s, maintenance_s, queue = job.heartbeat_s, job.maintenance_s, job.queue
    services = build(settings, warm_tasks=False)  # the engine once, for every chunk of this process
    predictor = services.predictor
    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    store = JobStore(conn)
    ctx = WorkerContext(services.pipeline, settings, projects, store, name=name,
                        prefetch=job.prefetch, post_every=job.post_every, redis_wait_s=job.redis_wait_s,
                        batch=job.batch_for(getattr(predictor.engine, "device", "cpu")))
    install(ctx)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # between worker runs; RQ installs its own while working
        signal.signal(sig, lambda *_: stopping.set())
    log.info("worker %s: %s, queue %s, heartbeat %.1fs, maintenance every %ds, %d image(s) per backbone call",
             name, predictor.model_version, queue, heartbeat_s, maintenance_s, ctx.batch)
    CASSWorker.heartbeat_s = heartbeat_s
    runs = 0
    try:
        while not stopping.is_set():
            wait_for_redis(conn, stopping)
            if stopping.is_set():
                break
            try:
                store.register_worker(name, predictor.model_version)
                worker = CASSWorker([queue], connection=conn, name=f"{name}-{runs}" if runs else name,
                                    maintenance_interval=maintenance_s,
                                    worker_ttl=max(16, maintenance_s + 15))
                runs += 1
                worker.work(burst=args.burst, logging_level=logging.getLevelName(logging.getLogger().level))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("worker %s: Redis failed (%s): waiting for it", name, exc)
                time.sleep(1.0)
                continue
            if args.burst or worker.stopping:
                break
            log.warning("worker %s: RQ's work loop ended (Redis error); starting again", name)
            time.sleep(1.0)
    finally:
        try:
            store.unregister_worker(name)
        except redis.exceptions.RedisError:
            pass
        install(None)
    return 0
