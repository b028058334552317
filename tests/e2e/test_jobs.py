"""End to end: pre-annotating a whole project with jobs on RQ (docs/jobs.md).

A real Label Studio 1.23.2 (session fixture), a real redis-server, two real ``python -m backend
worker`` processes on the tiny weights. Every Label Studio call uses the personal access token.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.controls.brush_rle import rle_to_mask
from tests.e2e.conftest import REPO, TINY_WEIGHTS, stop, tail
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat"/><Label value="dog"/><Label value="grass"/>
  </BrushLabels>
</View>"""
GOOD = 40


class PAT:
    """Label Studio API calls with the personal access token (exchanged for access tokens)."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.session = requests.Session()
        self.refresh()

    def refresh(self):
        resp = requests.post(f"{self.url}/api/token/refresh", json={"refresh": self.token}, timeout=30)
        assert resp.status_code == 200, resp.text
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access']}"

    def __call__(self, method, path, expect=(200, 201), **kw):
        resp = self.session.request(method, self.url + path, timeout=120, **kw)
        if resp.status_code == 401:
            self.refresh()
            resp = self.session.request(method, self.url + path, timeout=120, **kw)
        assert resp.status_code in expect, f"{method} {path} -> {resp.status_code}: {resp.text[:300]}"
        return resp.json() if resp.content else None


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_project(ls: PAT, title: str, good: int, broken: bool) -> tuple[int, list[int], dict[str, int]]:
    """A project with ``good`` PNG uploads (+ a non-image upload, a missing upload, a task with an empty
    image value when ``broken``); returns (project id, good task ids, broken name -> task id)."""
    pid = ls("POST", "/api/projects", json={"title": title, "label_config": CONFIG})["id"]
    for start in range(0, good, 20):
        files = {f"img{i}.png": (f"img{i}.png", png(i), "image/png") for i in range(start, min(good, start + 20))}
        ls("POST", f"/api/projects/{pid}/import", files=files)
    if broken:
        ls("POST", f"/api/projects/{pid}/import",
           files={"broken.png": ("broken.png", b"\x89PNG\r\n\x1a\n not a png", "image/png")})
        ls("POST", f"/api/projects/{pid}/import", json=[{"image": f"/data/upload/{pid}/missing.png"},
                                                        {"image": ""}])
    tasks = ls("GET", "/api/tasks", params={"project": pid, "page_size": 1000})["tasks"]
    good_ids, bad = [], {}
    for task in tasks:
        ref = task["data"].get("image", "")
        name = next((n for n in ("broken.png", "missing.png") if ref.endswith(n)), None) or \
            ("no-image" if not ref else None)
        if name:
            bad[name] = task["id"]
        else:
            good_ids.append(task["id"])
    assert len(good_ids) == good and len(bad) == (3 if broken else 0)
    return pid, sorted(good_ids), bad


FAST_PRESET = {"short_side": 224, "slide_crop": 224, "slide_stride": 224}  # fewer windows: a faster test


def worker_env(label_studio, token, redis_url, preset: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": token, "CASS_CLIP_WEIGHTS": str(TINY_WEIGHTS / "clip_tiny.safetensors"),
           "CASS_DINO_WEIGHTS": str(TINY_WEIGHTS / "dino_tiny.safetensors"), "CASS_THREADS": "1",
           "CASS_WARMUP": "false", "CASS_PRESET": str(preset), "CASS_JOB_HEARTBEAT_S": "1", "CASS_JOB_MAINTENANCE_S": "2", "LOG_LEVEL": "INFO"}
    env.pop("RQ_KEY_PREFIX", None)
    return env


def start_worker(env, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job(env, job_id) -> dict:
    """The job record as ``jobs JOB_ID --json`` prints it, read in-process (the CLI takes a while to
    start on a loaded machine; the test runs the CLI itself once at the end)."""
    import redis

    from backend.jobs.queue import Jobs

    rec = Jobs(redis.Redis.from_url(env["REDIS_URL"]), projects=None).get(job_id)
    return json.loads(json.dumps(rec))




def busy_worker(env, procs) -> int:
    """1 + the index of a worker process that RQ shows in the middle of a chunk (0: none right now)."""
    import redis
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    from backend.jobs.allowlist import SERIALIZER
    from backend.config import JobSettings

    conn = redis.Redis.from_url(env["REDIS_URL"])
    for job_id in StartedJobRegistry(JobSettings().queue, connection=conn).get_job_ids():
        name = Job.fetch(job_id, connection=conn, serializer=SERIALIZER).worker_name or ""  # JSON jobs
        for i, p in enumerate(procs):
            if f"-{p.pid}-" in name and p.poll() is None:
                return i + 1
    return 0


def predictions(ls: PAT, task_id: int) -> list[dict]:
    return ls("GET", "/api/predictions", params={"task": task_id})


@pytest.fixture
def workers(label_studio, personal_access_token, redis_server, tmp_path):  # noqa: F811
    if not (TINY_WEIGHTS / "clip_tiny.safetensors").is_file():
        pytest.skip(f"tiny weights not found under {TINY_WEIGHTS}")
    redis_server.client().flushall()
    preset = json.loads((REPO / "cass" / "presets" / "default.json").read_text())
    preset["name"] = "e2e-fast"
    preset["image"].update(FAST_PRESET)
    (tmp_path / "fast.json").write_text(json.dumps(preset))
    env = worker_env(label_studio, personal_access_token, redis_server.url, tmp_path / "fast.json")
    procs = [start_worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    try:
        client = redis_server.client()
        wait_for(lambda: client.hlen("cass:jobs:model_versions") == 2 or
                 any(p.poll() is not None for p in procs), 300, "two workers to register")
        for p, log in zip(procs, logs):
            assert p.poll() is None, tail(log)
        yield env, procs, logs
    finally:
        for p in procs:
            stop(p)


def test_preannotate_a_project_exactly_once_through_a_worker_kill_and_cancel(label_studio, personal_access_token,
                                                                           workers):
    env, procs, logs = workers
    ls = PAT(label_studio.url, personal_access_token)
    pid, good, bad = make_project(ls, "CASS jobs e2e", GOOD, broken=True)

    # run 1: --wait in the background; kill -9 one worker once the first predictions landed
    t0 = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "backend", "preannotate", "--project", str(pid),
                            "--chunk-size", "4", "--wait"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    job_id = run.stdout.readline().strip()
    assert len(job_id) == 12, (job_id, run.stderr.read() if run.poll() is not None else "")
    wait_for(lambda: job(env, job_id)["done"] >= 4, 180, "the first chunk")
    first_s = time.monotonic() - t0
    busy = wait_for(lambda: busy_worker(env, procs), 60, "a worker in the middle of a chunk") - 1
    os.kill(procs[busy].pid, signal.SIGKILL)
    procs[busy].wait()
    killed_at = job(env, job_id)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 4, (out[-2000:], err[-2000:], tail(logs[1 - busy]))  # finished, 3 failed tasks
    rec = job(env, job_id)
    assert rec["status"] == "finished" and rec["total"] == GOOD + 3, rec
    assert rec["done"] + rec["skipped"] == GOOD and rec["failed"] == 3, rec
    assert set(rec["failed_tasks"]) == {str(t) for t in bad.values()}, rec["failed_tasks"]
    assert "ImageError" in rec["failed_tasks"][str(bad["broken.png"])]
    assert "HTTP" in rec["failed_tasks"][str(bad["missing.png"])]
    assert "TaskDataError" in rec["failed_tasks"][str(bad["no-image"])]
    assert "ETA" in out and "tasks/s" in out and f"failed task {bad['broken.png']}:" in out
    shown = cli(env, "jobs", job_id)
    assert shown.returncode == 4 and f"failed task {bad['missing.png']}: ImageFetchError" in shown.stdout, shown
    version = rec["model_version"]
    assert version and version.startswith("cass-")
    for task_id in good:  # exactly one valid prediction per good task
        (p,) = predictions(ls, task_id)
        assert p["model_version"] == version and 0 <= p["score"] <= 1  # the job planned this label-set version
        union = np.zeros((24, 32), bool)
        for region in p["result"]:
            assert (region["original_height"], region["original_width"]) == (24, 32)
            mask = rle_to_mask(region["value"]["rle"], 24, 32)
            assert not (mask & union).any()
            union |= mask
        assert union.all()
    for task_id in bad.values():  # one visible error prediction each, as /predict answers (issue 22)
        (p,) = predictions(ls, task_id)
        assert p["result"] == [] and p["score"] == 0 and p["model_version"].startswith("error: "), p
        assert p["model_version"].endswith(f" ({version})"), p

    # run 2 (--all: every task queued, the current ones skipped and counted by the runner): adds nothing
    second = cli(env, "preannotate", "--project", str(pid), "--all", "--wait")
    assert second.returncode == 4, second.stderr
    rec2 = job(env, second.stdout.split()[0])
    assert (rec2["done"], rec2["skipped"], rec2["failed"]) == (0, GOOD, 3), rec2
    assert all(len(predictions(ls, t)) == 1 for t in good)

    # retry the failed tasks: still failing, recorded again, no new predictions
    retry = cli(env, "preannotate", "--retry-failed", job_id, "--wait")
    assert retry.returncode == 4, retry.stderr
    rec3 = job(env, retry.stdout.split()[0])
    assert rec3["spec"]["retry_of"] == job_id and rec3["failed"] == 3 and rec3["total"] == 3, rec3
    assert all(len(predictions(ls, t)) == 1 for t in bad.values())  # the same error is not posted again

    final = check_conflict_and_cancel(ls, env, procs)
    print(f"\ne2e jobs: {GOOD}+3 tasks, first chunk after {first_s:.1f}s, worker {busy} killed at "
          f"{killed_at['done']} done; run 2 {rec2['skipped']} skipped; cancel stopped at {final['done']}/{GOOD}")


def check_conflict_and_cancel(ls: PAT, env, procs) -> dict:
    """A second job for the same project + filter while one runs is refused; cancel stops the first.
    The live worker is paused (SIGSTOP) around the slow-starting CLI calls so the job cannot finish
    before it is cancelled; the chunk it holds stops before its next task."""
    pid2, good2, _ = make_project(ls, "CASS jobs cancel", GOOD, broken=False)
    live = [p for p in procs if p.poll() is None]
    started = cli(env, "preannotate", "--project", str(pid2), "--chunk-size", "4")
    assert started.returncode == 0, started.stderr
    job2 = started.stdout.strip()
    wait_for(lambda: job(env, job2)["done"] >= 2, 180, "the cancel job to start")
    for p in live:
        os.kill(p.pid, signal.SIGSTOP)
    try:
        again = cli(env, "preannotate", "--project", str(pid2))
        assert again.returncode == 3 and again.stdout.strip() == job2, (again.stdout, again.stderr)
        cancelled = cli(env, "jobs", "cancel", job2)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled
    finally:
        for p in live:
            os.kill(p.pid, signal.SIGCONT)
    time.sleep(5)
    settled = job(env, job2)
    time.sleep(3)
    final = job(env, job2)
    assert final["status"] == "cancelled" and final["done"] == settled["done"] < GOOD, final
    assert sum(len(predictions(ls, t)) for t in good2) == final["done"]
    return final

