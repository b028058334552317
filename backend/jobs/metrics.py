"""Job progress for Prometheus: a ``prometheus_client`` collector reading the job records in Redis.

Wire it with ``register_job_metrics(registry, redis_url)`` (the lead's ``/metrics`` registry);
it reports, per job still listed (the last ``limit``)::

    cass_job_tasks{job, project, state="total|done|skipped|failed"}   gauge
    cass_job_running{job, project}                                    1 while queued/running
    cass_jobs_queue_length                                            chunks waiting in RQ

``render_job_metrics`` keeps one collector (one pooled ``redis.Redis``) per Redis URL for the
process: a scrape reuses its connection instead of opening a new one.
"""
from __future__ import annotations

import logging
import threading

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("backend.jobs")


class JobCollector:
    def __init__(self, conn, limit: int = 20, queue: str | None = None):
        from backend.config import JobSettings

        self.conn = conn
        self.limit = limit
        self.queue = queue or JobSettings().queue

    def collect(self):
        from rq import Queue

        from backend.jobs.store import TERMINAL, JobStore

        tasks = GaugeMetricFamily("cass_job_tasks", "Tasks of a pre-annotation job by state",
                                  labels=["job", "project", "state"])
        running = GaugeMetricFamily("cass_job_running", "1 while a pre-annotation job is queued or running",
                                    labels=["job", "project"])
        queued = GaugeMetricFamily("cass_jobs_queue_length", "Chunks waiting in the RQ queue")
        try:
            store = JobStore(self.conn)
            for job_id in store.job_ids(self.limit):
                rec = store.record(job_id)
                if rec is None:
                    continue
                project = str(rec["spec"]["project"])
                for state in ("total", "done", "skipped", "failed"):
                    tasks.add_metric([job_id, project, state], rec[state])
                running.add_metric([job_id, project], 0 if rec["status"] in TERMINAL else 1)
            queued.add_metric([], Queue(self.queue, connection=self.conn).count)
        except Exception as exc:  # Redis down: /metrics still answers, without job figures
            log.debug("job metrics unavailable: %s", exc)
            return
        yield tasks
        yield running
        yield queued


_COLLECTORS: dict[tuple[str, str], JobCollector] = {}
_COLLECTORS_LOCK = threading.Lock()


def collector_for(redis_url: str, queue: str | None = None) -> JobCollector:
    """The process's :class:`JobCollector` for ``redis_url`` (created once; its client pools connections)."""
    from backend.config import JobSettings
    from backend.jobs.queue import connect

    queue = queue or JobSettings.from_env().queue
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get((redis_url, queue))
        if collector is None:
            collector = _COLLECTORS[(redis_url, queue)] = JobCollector(connect(redis_url), queue=queue)
        return collector


def register_job_metrics(registry, redis_url: str | None, queue: str | None = None) -> JobCollector | None:
    """Register the :class:`JobCollector` of ``redis_url`` on ``registry`` (None without ``REDIS_URL``)."""
    if not redis_url:
        return None
    collector = collector_for(redis_url, queue)
    registry.register(collector)
    return collector


def render_job_metrics(redis_url: str | None, queue: str | None = None) -> bytes:
    """The job metrics alone in the Prometheus text format (for the current text ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    if register_job_metrics(registry, redis_url, queue) is None:
        return b""
    return generate_latest(registry)
