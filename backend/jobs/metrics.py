"""Job progress for Prometheus: a ``prometheus_client`` collector reading the job records in Redis.

Wire it with ``register_job_metrics(registry, redis_url)`` (the lead's ``/metrics`` registry);
it reports, per job still listed (the last ``limit``)::

    cass_job_tasks{job, project, state="total|done|skipped|failed"}   gauge
    cass_job_running{job, project}                                    1 while queued/running
    cass_jobs_queue_length                                            chunks waiting in RQ
"""
from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("backend.jobs")


class JobCollector:
    def __init__(self, conn, limit: int = 20):
        self.conn = conn
        self.limit = limit

    def collect(self):
        from rq import Queue

        from .queue import QUEUE_NAME
        from .store import TERMINAL, JobStore

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
            queued.add_metric([], Queue(QUEUE_NAME, connection=self.conn).count)
        except Exception as exc:  # Redis down: /metrics still answers, without job figures
            log.debug("job metrics unavailable: %s", exc)
            return
        yield tasks
        yield running
        yield queued


def register_job_metrics(registry, redis_url: str | None) -> JobCollector | None:
    """Register a :class:`JobCollector` on ``registry`` (None without ``REDIS_URL``)."""
    if not redis_url:
        return None
    from .queue import connect

    collector = JobCollector(connect(redis_url))
    registry.register(collector)
    return collector


def render_job_metrics(redis_url: str | None) -> bytes:
    """The job metrics alone in the Prometheus text format (for the current text ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    if register_job_metrics(registry, redis_url) is None:
        return b""
    return generate_latest(registry)
