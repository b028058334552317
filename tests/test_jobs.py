"""Unit tests of backend.jobs with fakes (FakeProjects for Label Studio, FakePredictor for the engine)
and a real redis-server; the end-to-end version is tests/e2e/test_jobs.py."""
from __future__ import annotations

import json
import threading
import time

import pytest
import redis as redis_lib

from backend.config import Settings
from backend.controls.config import parse_controls
from backend.predict.pipeline import RequestContext
from backend.predict.version import model_version
from backend.fetch.images import ImageFetchError
from backend.jobs.cli import progress_line
from backend.jobs.queue import JobConflict, Jobs, JobNotFound
from backend.jobs.runner import ChunkRun, WorkerContext
from backend.jobs.spec import JobSpec, JobSpecError, chunks, parse_task_ids
from backend.jobs.store import JobStore, retrying
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""
VERSION = model_version("cass-fake-1", parse_controls(CONFIG))  # what FakePipeline's runs post


class FakeProjects:
    """Label Studio in memory: tasks with data and predictions; counts import calls."""

    def __init__(self, n: int, project: int = 1):
        self.project = project
        self.data = {i: {"image": f"/data/upload/{i}.png"} for i in range(1, n + 1)}
        self.preds: dict[int, list[dict]] = {i: [] for i in self.data}
        self.import_calls = 0

    def label_config(self, project):
        return CONFIG

    def tasks(self, project, ids=None, view=None):
        keep = self.data if ids is None else [i for i in ids if i in self.data]
        return [{"id": i, "data": self.data[i], "predictions": [{"model_version": p["model_version"]}
                                                                for p in self.preds[i]]} for i in sorted(keep)]

    def predicted(self, project, ids, version):
        return {i for i in ids if any(p["model_version"] == version for p in self.preds.get(i, []))}

    def import_predictions(self, project, predictions):
        self.import_calls += 1
        for p in predictions:
            self.preds[p["task"]].append(p)
        return len(predictions)


class FakePredictor:
    """Predicts a fixed region; task ids in ``bad`` raise ImageFetchError."""

    model_version = "cass-fake-1"

    def __init__(self, bad=()):
        self.bad = set(bad)
        self.calls = []

    def predict_task(self, task, targets, fetch, info=None, prefill=None):
        self.calls.append(task["id"])
        if task["id"] in self.bad:
            raise ImageFetchError(f"/data/upload/{task['id']}.png answered HTTP 404")
        return {"result": [{"type": "brushlabels"}], "score": 0.5, "model_version": self.model_version}


class FakeFetcher:
    def fetch(self, url, task_id):
        return b"bytes"


class FakePipeline:
    """Fake of :class:`backend.predict.pipeline.Pipeline` around a fake predictor: the surface the job
    runner uses (parse, context, predict_task); the context's version is the real one of the predictor's
    engine version and the label set (``<engine>-labels.<digest>``), as the real pipeline's."""

    def __init__(self, predictor):
        self.predictor = predictor

    def parse(self, config):
        return parse_controls(config)

    def context(self, project, controls, *, label_config=None, fetch=None, connection=None):
        return RequestContext(project, controls, fetch, None, model_version(self.predictor.model_version, controls))

    def predict_task(self, task, ctx, info=None, prefill=None):
        return self.predictor.predict_task(task, ctx.controls, ctx.fetch, info, prefill=prefill)


def context(conn, projects, predictor, **kw):
    kw.setdefault("fetch", FakeFetcher().fetch)  # no HTTP in unit tests
    return WorkerContext(FakePipeline(predictor), Settings(), projects, JobStore(conn), post_every=3, **kw)


@pytest.fixture
def conn(redis_url):  # noqa: F811
    c = redis_lib.Redis.from_url(redis_url)
    yield c
    c.close()


def test_spec_validates_and_keys_by_project_and_filter():
    assert JobSpec(1, (3, 1, 3)).task_ids == (1, 3)
    assert JobSpec(1, (1, 3)).key == JobSpec(1, (3, 1), chunk_size=99).key != JobSpec(1).key
    assert JobSpec(1).key != JobSpec(1, only_outdated=False).key != JobSpec(2).key
    for bad, word in [(dict(project=0), "project"), (dict(project=1, task_ids=()), "empty"),
                      (dict(project=1, chunk_size=3), "at least 4"),
                      (dict(project=1, task_ids=(1, -2)), "task ids"), (dict(project=1, chunk_size=0), "chunk_size")]:
        with pytest.raises(JobSpecError, match=word):
            JobSpec(**bad)
    with pytest.raises(JobSpecError, match="unknown field"):
        JobSpec.from_request({"project": 1, "task": [1]})
    with pytest.raises(JobSpecError, match="'project'"):
        JobSpec.from_request({})
    with pytest.raises(JobSpecError, match="JSON object"):
        JobSpec.from_request([1])
    assert parse_task_ids("1, 2,5-7") == (1, 2, 5, 6, 7)
    with pytest.raises(JobSpecError, match="'x'"):
        parse_task_ids("1,x")
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_a_chunk_posts_once_per_task_records_failures_and_a_rerun_posts_nothing(conn):
    projects, predictor = FakeProjects(7), FakePredictor(bad={4})
    jobs = Jobs(conn, projects)
    rec = jobs.start(JobSpec(1, chunk_size=10), predictor.model_version)
    ctx = context(conn, projects, predictor)
    counts = ChunkRun(ctx, rec["id"], [1, 2, 3, 4, 5, 6, 7, 99]).run()
    assert counts == {"done": 6, "skipped": 0, "failed": 2, "cancelled": False}
    assert projects.import_calls == 3  # post_every=3 (7 posts: 6 predictions, 1 error): bulk, not one per task
    assert all(len(projects.preds[i]) == 1 for i in projects.data)
    (shown,) = projects.preds[4]  # the failed task's visible error prediction (what /predict answers)
    assert shown["result"] == [] and shown["score"] == 0.0 and shown["model_version"] == \
        f"error: ImageFetchError: /data/upload/4.png answered HTTP 404 ({VERSION})"
    rec = jobs.get(rec["id"])
    assert rec["failed_tasks"][4].startswith("ImageFetchError: ") and "not a task of project" in rec["failed_tasks"][99]
    # the same chunk again (a retry after a worker died, the job still running): skips every predicted task
    JobStore(conn).set_status(rec["id"], "running")
    assert ChunkRun(ctx, rec["id"], [1, 2, 3, 4, 5, 6, 7]).run()["skipped"] == 6
    assert all(len(projects.preds[i]) == 1 for i in projects.data)  # the error prediction not posted twice
    rec = jobs.get(rec["id"])
    assert (rec["done"], rec["skipped"], rec["failed"]) == (6, 6, 2)


def test_a_prediction_that_appeared_meanwhile_is_not_posted_again(conn):
    projects, predictor = FakeProjects(3), FakePredictor()
    rec = Jobs(conn, projects).start(JobSpec(1), predictor.model_version)
    real_tasks = projects.tasks

    def tasks_then_someone_else_posts(project, ids=None, view=None):
        out = real_tasks(project, ids, view)
        projects.preds[2].append({"task": 2, "model_version": VERSION})  # another worker
        return out

    projects.tasks = tasks_then_someone_else_posts
    counts = ChunkRun(context(conn, projects, predictor), rec["id"], [1, 2, 3]).run()
    assert counts["done"] == 2 and counts["skipped"] == 1 and len(projects.preds[2]) == 1


def test_second_job_for_the_same_filter_is_refused_until_the_first_is_over(conn):
    projects, predictor = FakeProjects(5), FakePredictor()
    jobs = Jobs(conn, projects)
    first = jobs.start(JobSpec(1, chunk_size=4), predictor.model_version)
    assert first["total"] == 5 and len(first["chunks"]) == 2 and first["status"] == "queued"
    with pytest.raises(JobConflict) as exc:
        jobs.start(JobSpec(1, chunk_size=4))
    assert exc.value.job_id == first["id"]
    other = jobs.start(JobSpec(1, task_ids=(1, 2)))  # another filter: allowed
    assert other["total"] == 2
    cancelled = jobs.cancel(first["id"])
    assert cancelled["status"] == "cancelled"
    assert ChunkRun(context(conn, projects, predictor), first["id"], [1, 2]).run()["cancelled"]
    assert predictor.calls == []
    assert jobs.start(JobSpec(1), predictor.model_version)["id"] != first["id"]
    with pytest.raises(JobNotFound):
        jobs.get("nope")


def test_only_outdated_and_retry_failed(conn):
    projects, predictor = FakeProjects(4), FakePredictor(bad={3})
    projects.preds[1].append({"task": 1, "model_version": VERSION})
    jobs = Jobs(conn, projects)
    rec = jobs.start(JobSpec(1), predictor.model_version)
    assert rec["total"] == 3
    ChunkRun(context(conn, projects, predictor), rec["id"], [2, 3, 4]).run()
    rec = jobs.get(rec["id"])
    assert rec["status"] == "finished" and list(rec["failed_tasks"]) == [3]
    predictor.bad.clear()
    retry = jobs.retry_failed(rec["id"])
    assert retry["spec"]["task_ids"] == [3] and retry["spec"]["retry_of"] == rec["id"]
    ChunkRun(context(conn, projects, predictor), retry["id"], [3]).run()
    assert jobs.get(retry["id"])["done"] == 1
    with pytest.raises(JobSpecError, match="no failed tasks"):
        jobs.retry_failed(retry["id"])


def test_planning_compares_with_the_label_set_version_the_workers_post(conn):
    """Issue 20: a prediction of the bare engine version, or of another label set, is outdated; one of
    ``<engine>-labels.<digest of this config>`` is current. ``all`` queues every task; the runner still
    skips the current ones (and counts them)."""
    projects, predictor = FakeProjects(4), FakePredictor()
    projects.preds[1].append({"task": 1, "model_version": VERSION})
    projects.preds[2].append({"task": 2, "model_version": "cass-fake-1"})  # before label-set versions
    projects.preds[3].append({"task": 3, "model_version": "cass-fake-1-labels.0123456789ab"})  # other labels
    jobs = Jobs(conn, projects)
    conn.hset("cass:jobs:model_versions", "w1", predictor.model_version)  # a worker registered its engine
    rec = jobs.start(JobSpec(1))
    assert rec["total"] == 3 and rec["model_version"] == VERSION and rec["engine_version"] == "cass-fake-1"
    jobs.cancel(rec["id"])
    every = jobs.start(JobSpec(1, only_outdated=False), predictor.model_version)
    assert every["total"] == 4
    assert ChunkRun(context(conn, projects, predictor), every["id"], [1, 2, 3, 4]).run()["skipped"] == 1
    assert JobSpec.from_request({"project": 1, "all": True}).only_outdated is False
    assert JobSpec.from_request({"project": 1, "only_outdated": False}).only_outdated is False
    assert JobSpec.from_request({"project": 1}).only_outdated is True
    for body, word in [({"project": 1, "only_missing": True}, "unknown field"),
                       ({"project": 1, "all": True, "only_outdated": True}, "'all'"),
                       ({"project": 1, "all": "yes"}, "'all'")]:
        with pytest.raises(JobSpecError, match=word):
            JobSpec.from_request(body)


def test_cli_has_only_outdated_and_all_and_no_only_missing(capsys):
    from backend.jobs.cli import preannotate_parser

    p = preannotate_parser()
    assert p.parse_args(["--project", "3"]).all is False
    assert p.parse_args(["--project", "3", "--all"]).all is True
    assert p.parse_args(["--project", "3", "--only-outdated"]).all is False
    with pytest.raises(SystemExit):
        p.parse_args(["--project", "3", "--only-missing"])
    with pytest.raises(SystemExit):
        p.parse_args(["--project", "3", "--all", "--only-outdated"])


def test_a_holder_whose_task_lock_expired_cannot_release_its_successors_lock(conn, monkeypatch):
    """Issue 20: the per-task posting lock is released with a token check (redis-py ``Lock``): a slow
    holder whose lock expired while it posted leaves the lock another worker took since alone."""
    from backend.jobs import runner

    monkeypatch.setattr(runner, "LOCK_TTL_S", 1)
    projects, predictor = FakeProjects(1), FakePredictor()
    rec = Jobs(conn, projects).start(JobSpec(1), predictor.model_version)
    key = f"cass:jobs:posting:1:1:{VERSION}"
    real_import = projects.import_predictions

    def slow_import(project, predictions):
        assert conn.exists(key)  # held while posting
        time.sleep(1.3)  # longer than the lock's TTL: it expired
        assert conn.set(key, "successor", nx=True, px=30_000)  # another worker takes it
        return real_import(project, predictions)

    projects.import_predictions = slow_import
    assert ChunkRun(context(conn, projects, predictor), rec["id"], [1]).run()["done"] == 1
    assert conn.get(key) == b"successor" and conn.pttl(key) > 0


def test_redis_calls_wait_out_an_outage_then_raise():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise redis_lib.exceptions.ConnectionError("refused")
        return "ok"

    assert retrying(flaky, "test", wait_s=10, sleep=lambda s: None) == "ok" and len(attempts) == 3
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        retrying(lambda: (_ for _ in ()).throw(redis_lib.exceptions.ConnectionError("x")), "test", wait_s=0)


def test_throughput_and_eta_are_measured_from_the_first_started_task():
    from backend.jobs.watch import throughput

    rec = {"total": 40, "done": 10, "skipped": 2, "failed": 2, "status": "running", "started": 100.0,
           "finished": None}
    assert throughput(rec, now=106.0) == (2.0, 13.0)  # 12 finished in 6 s, 26 left
    assert throughput({**rec, "started": None}, now=106.0) == (None, None)
    line = progress_line({**rec, "rate_tasks_per_s": 2.0, "eta_s": 13.0})
    assert "14/40" in line and "2 failed" in line and "2.00 tasks/s" in line and "ETA 13s" in line


def test_no_worker_warning_until_a_worker_beats(conn):
    from datetime import datetime, timedelta, timezone

    from rq import Worker

    jobs = Jobs(conn, FakeProjects(1))
    seen = jobs.workers()
    assert seen["workers"] == 0 and "start one: python -m backend worker" in seen["warning"]
    Worker(["cass-preannotate"], connection=conn, name="w1").register_birth()
    assert jobs.workers()["workers"] == 1 and jobs.workers()["warning"] is None
    later = jobs.workers(now=datetime.now(timezone.utc) + timedelta(seconds=75))
    assert "no worker seen for 60s" in later["warning"] and "75s ago" in later["warning"]


class ScriptedJobs:
    """The CLI's view of :class:`Jobs`: records in turn (the last one repeats), no worker."""

    def __init__(self, recs: list[dict]):
        self.recs, self.last = iter(recs), None

    def start(self, spec, engine_version=None):
        return self.get("abc")

    def get(self, job_id):
        self.last = next(self.recs, self.last)
        return self.last

    def list(self):
        return [self.last or self.get("abc")]

    def workers(self, now=None):
        return {"workers": 0, "last_seen_s": None, "warning": "no worker seen for 60s: start one: python -m backend worker"}


def scripted_records() -> list[dict]:
    base = {"id": "abc", "spec": {"project": 1}, "total": 4, "done": 0, "skipped": 0, "failed": 0,
            "failed_tasks": {}, "created": 1_700_000_000.0, "started": None, "finished": None, "error": None,
            "status": "queued", "rate_tasks_per_s": None, "eta_s": None}
    running = {**base, "status": "running", "done": 1, "started": 1_700_000_002.0, "rate_tasks_per_s": 0.5,
               "eta_s": 6.0}
    over = {**running, "status": "finished", "done": 3, "failed": 1, "failed_tasks": {4: "ImageFetchError: 404"},
            "finished": 1_700_000_010.0, "eta_s": 0.0}
    return [base, running, over]


def test_preannotate_wait_shows_progress_warns_without_workers_and_exits_4_with_failed_tasks(monkeypatch, capsys):
    from backend.jobs import cli

    monkeypatch.setattr(cli, "_jobs", lambda: ScriptedJobs(scripted_records()))
    monkeypatch.setattr(cli, "POLL_S", 0.0)
    assert cli.main(["preannotate", "--project", "1", "--wait"]) == cli.EXIT_FAILED_TASKS == 4
    out, err = capsys.readouterr()
    assert out.startswith("abc\n") and "0.50 tasks/s" in out and "ETA 6s" in out and "4/4" in out
    assert "start one: python -m backend worker" in err
    assert "failed task 4: ImageFetchError" in out and "started 2023-" in out and "finished 2023-" in out
    monkeypatch.setattr(cli, "_jobs", lambda: ScriptedJobs(scripted_records()[2:]))
    assert cli.main(["jobs", "abc"]) == 4
    assert cli.main(["jobs"]) == 0 and "created 2023-" in capsys.readouterr().out
    monkeypatch.setattr(cli, "_jobs", lambda: ScriptedJobs([{**scripted_records()[2], "failed": 0,
                                                              "failed_tasks": {}}]))
    assert cli.main(["jobs", "abc"]) == 0


def test_http_jobs_endpoints_answer_202_400_404_409(conn, redis_url, monkeypatch):  # noqa: F811
    from flask import Flask

    from backend.jobs import http

    app = Flask("fake")
    settings = Settings(redis_url=redis_url, basic_auth_user="u", basic_auth_pass="p")
    http.register(app, settings, FakePredictor())
    app.extensions["cass_jobs"]["jobs"] = Jobs(conn, FakeProjects(3))
    client = app.test_client()
    assert client.post("/jobs", json={"project": "x"}).status_code == 400
    resp = client.post("/jobs", json={"project": 1})
    assert resp.status_code == 202 and resp.get_json()["status"] in ("planning", "queued")  # a 3-task plan is quick
    job_id = resp.get_json()["id"]
    again = client.post("/jobs", json={"project": 1})
    assert again.status_code == 409 and again.get_json()["job"] == job_id
    assert wait_for_status(client, job_id, "queued")["total"] == 3
    assert client.get("/jobs/nope").status_code == 404
    assert client.delete(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    listed = json.loads(client.get("/jobs").data)
    assert listed["jobs"][0]["id"] == job_id and "python -m backend worker" in listed["warning"]
    assert listed["workers"] == {"workers": 0, "last_seen_s": None}


def wait_for_status(client, job_id: str, status: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        rec = client.get(f"/jobs/{job_id}").get_json()
        if rec["status"] == status or time.monotonic() > deadline:
            assert rec["status"] == status, rec
            return rec
        time.sleep(0.05)


class GatedProjects(FakeProjects):
    """A project of ``n`` tasks whose task list is only answered once ``gate`` is set."""

    def __init__(self, n: int):
        super().__init__(0)
        self.n, self.gate = n, threading.Event()

    def tasks(self, project, ids=None, view=None):
        assert self.gate.wait(60)
        return [{"id": i, "data": {}, "predictions": []} for i in range(1, self.n + 1)]


def jobs_app(conn, redis_url, projects, **job_settings):  # noqa: F811
    from flask import Flask

    from backend.config import JobSettings
    from backend.jobs import http

    app = Flask("fake")
    settings = Settings(redis_url=redis_url, jobs=JobSettings(**job_settings))
    http.register(app, settings, FakePredictor())
    app.extensions["cass_jobs"]["jobs"] = Jobs(conn, projects, settings)
    return app.test_client()


def test_post_jobs_answers_202_while_a_100000_task_job_is_planned_in_the_background(conn, redis_url,  # noqa: F811
                                                                                   monkeypatch):
    """Issue 21: planning and enqueueing run outside the request (here held back by the fake until the
    answer is in), enqueueing in bounded pipelines."""
    from rq import Queue

    from backend.jobs import queue as jobs_queue

    monkeypatch.setattr(jobs_queue, "ENQUEUE_BATCH", 30)
    projects = GatedProjects(100_000)
    client = jobs_app(conn, redis_url, projects)
    resp = client.post("/jobs", json={"project": 1, "chunk_size": 1000})
    assert resp.status_code == 202, resp.get_json()
    rec = resp.get_json()
    assert rec["status"] == "planning" and rec["total"] == 0 and not projects.gate.is_set()
    assert client.get(f"/jobs/{rec['id']}").get_json()["status"] == "planning"
    projects.gate.set()
    rec = wait_for_status(client, rec["id"], "queued")
    assert rec["total"] == 100_000 and len(rec["chunks"]) == 100
    assert Queue("cass-preannotate", connection=conn).count == 100


def test_job_limits_most_tasks_and_smallest_chunk(conn, redis_url):  # noqa: F811
    """Issue 21: CASS_JOB_MAX_TASKS (400 naming it for explicit ids; a planned project over it fails the
    job with the reason) and chunks of at least 4 tasks."""
    client = jobs_app(conn, redis_url, FakeProjects(7), max_tasks=5)
    small = client.post("/jobs", json={"project": 1, "chunk_size": 1})
    assert small.status_code == 400 and "chunk_size" in small.get_json()["error"]
    many = client.post("/jobs", json={"project": 1, "tasks": [1, 2, 3, 4, 5, 6]})
    assert many.status_code == 400 and "CASS_JOB_MAX_TASKS" in many.get_json()["error"]
    planned = client.post("/jobs", json={"project": 1})
    assert planned.status_code == 202
    failed = wait_for_status(client, planned.get_json()["id"], "failed")
    assert "CASS_JOB_MAX_TASKS" in failed["error"] and "7" in failed["error"]
    assert client.post("/jobs", json={"project": 1, "tasks": [1, 2]}).status_code == 202  # the lock is free
    from backend.config import JobSettings

    jobs = Jobs(conn, FakeProjects(7), Settings(jobs=JobSettings(max_tasks=5)))
    with pytest.raises(JobSpecError, match="CASS_JOB_MAX_TASKS"):  # the CLI plans in its own process
        jobs.start(JobSpec(2), "cass-fake-1")
    assert jobs.list()[0]["status"] == "failed"


def test_job_metrics_collector(conn, redis_url):  # noqa: F811
    from backend.jobs.metrics import render_job_metrics

    Jobs(conn, FakeProjects(3)).start(JobSpec(1))
    text = render_job_metrics(redis_url).decode()
    assert 'cass_job_tasks{job="' in text and 'state="total"} 3.0' in text and "cass_jobs_queue_length 1.0" in text
    assert render_job_metrics(None) == b""


def test_auto_preannotate_starts_a_job_only_for_a_project_set_up_with_this_backend(conn, redis_url):  # noqa: F811
    """Issue 21: a forged ``TASKS_CREATED`` naming a project never set up must not make the backend write
    predictions into it with its token (a confused deputy)."""
    from backend.jobs.http import auto_preannotate

    client = jobs_app(conn, redis_url, FakeProjects(3), auto_preannotate=True)
    app = client.application
    hook = {"project": {"id": 1, "created_at": "2026-11-27T21:18:42Z"}, "tasks": [{"id": 1}, {"id": 2}]}
    refused = auto_preannotate(app, hook, known=lambda project: False)
    assert refused == {"error": "project 1 was not set up with this backend"}
    assert client.get("/jobs").get_json()["jobs"] == []
    started = auto_preannotate(app, hook, known=lambda project: project["id"] == 1)
    assert started["tasks"] == 2 and started["job"]


def test_progress_moves_per_task_while_posting_still_batches(conn, monkeypatch):
    """Issue 22: the job record (done, rate, ETA) and the chunk's RQ meta advance with every task
    computed, not only with every bulk post (``post_every``); a task counts as posted once its bulk
    post is in, and the job finishes only then."""
    import rq

    projects = FakeProjects(5)
    jobs = Jobs(conn, projects)
    rec = jobs.start(JobSpec(1), "cass-fake-1")
    seen = []

    class RQJob:  # the chunk's RQ job, as get_current_job() returns it inside a worker
        meta: dict = {}

        def save_meta(self):
            seen.append(("meta", dict(self.meta)))

    monkeypatch.setattr(rq, "get_current_job", lambda: RQJob())

    class Watching(FakePredictor):
        def predict_task(self, task, targets, fetch, info=None, prefill=None):
            now = jobs.get(rec["id"])
            seen.append(("record", task["id"], now["done"], now["posted"], now["rate_tasks_per_s"], now["status"]))
            return super().predict_task(task, targets, fetch, info, prefill)

    ctx = WorkerContext(FakePipeline(Watching(bad={3})), Settings(), projects, JobStore(conn), post_every=8,
                        fetch=FakeFetcher().fetch)
    counts = ChunkRun(ctx, rec["id"], [1, 2, 3, 4, 5]).run()
    assert counts == {"done": 4, "skipped": 0, "failed": 1, "cancelled": False}
    assert projects.import_calls == 1  # still one bulk post (4 predictions and task 3's error)
    records = [s[1:] for s in seen if s[0] == "record"]
    # (task, done, posted) as each task starts: done moves per task (task 3 failed), posted at the post
    assert [r[:3] for r in records] == [(1, 0, 0), (2, 1, 0), (3, 2, 0), (4, 2, 0), (5, 3, 0)], records
    assert records[0][3] is None and all(r[3] is not None and r[3] > 0 for r in records[1:])  # the rate
    assert all(r[4] == "running" for r in records)
    metas = [s[1] for s in seen if s[0] == "meta"]
    # the chunk's RQ meta: (done, posting) after the start, each task (task 3 failed) and the one post
    assert [(m["done"], m["posting"]) for m in metas] == [(0, 0), (1, 1), (2, 2), (2, 2), (3, 3), (4, 4), (4, 0)]
    assert metas[-1]["failed"] == 1 and metas[-1]["size"] == 5
    final = jobs.get(rec["id"])
    assert final["status"] == "finished" and (final["done"], final["posted"], final["posting"]) == (4, 4, 0)
    assert "4 done" in progress_line(final) and "to post" not in progress_line(final)
