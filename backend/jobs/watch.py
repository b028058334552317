"""Watching a job: measured throughput and ETA, and whether any worker is there to run it.

* :func:`throughput`: tasks finished (done + failed) / seconds since the job's first chunk started
  (``started`` in the record), and the ETA of the tasks left at that rate. Skipped tasks are counted
  as processed but not in the rate (they cost no prediction). Progress moves per task as the runner
  records it: skipped and unknown tasks when a chunk starts, failed and predicted tasks at once (a
  predicted task counts as done while its prediction waits for the bulk post, every
  ``CASS_JOB_POST_EVERY`` predictions, 8 by default; the record's ``posted`` counts those in Label Studio).
* :func:`worker_presence`: the RQ workers listening on the job queue and the age of the freshest
  heartbeat. A busy worker beats every ``CASS_JOB_HEARTBEAT_S`` (10 s), an idle one every
  ``CASS_JOB_MAINTENANCE_S`` (30 s: RQ's dequeue timeout), so "no worker seen" means no heartbeat for
  ``2 x CASS_JOB_MAINTENANCE_S``, at least 30 s (60 s by default): :func:`no_worker_warning`.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

HINT = "start one: python -m backend worker"


def throughput(rec: dict, now: float | None = None) -> tuple[float | None, float | None]:
    """``(tasks per second, ETA in seconds)`` of a job record; None where not measured yet."""
    now = time.time() if now is None else now
    started = rec.get("started")
    finished = rec.get("done", 0) + rec.get("failed", 0)
    left = rec.get("total", 0) - rec.get("done", 0) - rec.get("skipped", 0) - rec.get("failed", 0)
    if not started:
        return None, (0.0 if left <= 0 and rec.get("status") not in ("planning",) else None)
    end = rec.get("finished") or now
    elapsed = max(end - started, 1e-6)
    rate = finished / elapsed if finished else None
    if left <= 0:
        return rate, 0.0
    return rate, (left / rate if rate else None)


def worker_presence(queue, now: datetime | None = None) -> dict:
    """``{"workers": n, "last_seen_s": age of the freshest heartbeat or None}`` on ``queue`` (an RQ
    ``Queue``); RQ forgets a worker ``worker_ttl + 60`` s after its last heartbeat."""
    from rq import Worker

    now = now or datetime.now(timezone.utc)
    ages = []
    workers = Worker.all(queue=queue)
    for w in workers:
        beat = w.last_heartbeat
        if beat is None:
            continue
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        ages.append(max(0.0, (now - beat).total_seconds()))
    return {"workers": len(workers), "last_seen_s": round(min(ages), 1) if ages else None}


def no_worker_warning(presence: dict, silent_s: float, queue_name: str) -> str | None:
    """A warning with the hint when no worker has been seen for ``silent_s`` seconds, else None."""
    age = presence.get("last_seen_s")
    if age is not None and age <= silent_s:
        return None
    seen = "no worker has registered" if age is None else f"the last worker heartbeat was {age:.0f}s ago"
    return (f"no worker seen for {silent_s:.0f}s on queue {queue_name} ({seen}): queued chunks wait; {HINT}")


def clock(ts: float | None) -> str:
    """A record's timestamp as local ``YYYY-mm-dd HH:MM:SS`` ("-" when unset)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s`` ("?" when unknown)."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
