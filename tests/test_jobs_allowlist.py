"""RQ safety (issue 21): JSON-serialised jobs, and a worker that runs only the project's own job
functions. A job written into Redis naming ``subprocess.check_call`` is refused and never runs."""
from __future__ import annotations

import sys

import redis as redis_lib
import pytest
from rq import Callback, Queue, SimpleWorker
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from backend.jobs import allowlist
from backend.jobs.allowlist import SERIALIZER, AllowedJob
from backend.jobs.worker import CASSWorker
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

QUEUE = "cass-test-allowlist"


def harmless(job_id: str, task_ids: list[int]) -> dict:
    """Stands in for run_chunk (allowed in one test)."""
    return {"job": job_id, "tasks": len(task_ids)}


@pytest.fixture
def conn(redis_url):  # noqa: F811
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def work(conn) -> None:
    CASSWorker([QUEUE], connection=conn).work(burst=True)


def test_queue_and_worker_use_json(conn):
    assert SERIALIZER is JSONSerializer
    worker = CASSWorker([QUEUE], connection=conn)
    assert worker.serializer is JSONSerializer and worker.job_class is AllowedJob


def test_control_rq_own_worker_would_run_it(conn, tmp_path):
    """Why the allow-list: rq's plain worker runs whatever a job names (the marker appears)."""
    marker = tmp_path / "pwned"
    Queue(QUEUE, connection=conn, serializer=JSONSerializer).enqueue(
        "subprocess.check_call", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    SimpleWorker([QUEUE], connection=conn, serializer=JSONSerializer).work(burst=True)
    assert marker.exists()


def test_a_job_naming_another_function_is_refused_and_never_runs(conn, tmp_path):
    marker = tmp_path / "pwned"
    attacker = Queue(QUEUE, connection=conn, serializer=JSONSerializer)  # a plain rq client
    job = attacker.enqueue("subprocess.check_call", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    work(conn)
    assert not marker.exists()
    job = AllowedJob.fetch(job.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    reason = job.latest_result().exc_string
    assert "refused" in reason and "subprocess.check_call" in reason and "backend.jobs.runner.run_chunk" in reason


def test_a_failure_callback_naming_another_function_is_not_imported(conn, tmp_path):
    marker = tmp_path / "pwned"
    attacker = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    job = attacker.enqueue("subprocess.check_call", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                           on_failure=Callback("os.abort"))  # would kill the worker if imported and called
    work(conn)
    assert not marker.exists()
    assert AllowedJob.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.FAILED


def test_a_pickled_job_is_not_unpickled(conn, tmp_path):
    attacker = Queue(QUEUE, connection=conn)  # rq's default serializer: pickle
    job = attacker.enqueue("backend.jobs.runner.run_chunk", "j1", [1, 2])
    work(conn)
    assert conn.hget(job.key, "status") == b"failed"


def test_an_allowed_function_runs_with_json_arguments(conn, monkeypatch):
    monkeypatch.setattr(allowlist, "ALLOWED_FUNCTIONS", frozenset({f"{__name__}.harmless"}))
    queue = Queue(QUEUE, connection=conn, serializer=SERIALIZER)
    job = queue.enqueue(f"{__name__}.harmless", "j1", [1, 2, 3])
    work(conn)
    job = AllowedJob.fetch(job.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == {"job": "j1", "tasks": 3}
