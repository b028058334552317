"""Faults the process must survive: Redis down or hung, Label Studio unreachable for downloads, out of
memory in a task, a gunicorn worker killed in the middle of a batch. Each time the backend keeps
serving and ``/health`` (always 200, ``status: UP``) says honestly what is degraded."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.predict import faults
from backend.config import Settings
from backend.http.health import CacheProbe
from backend.fetch.images import DOWNLOADS, DownloadHealth
from backend.predict.loading import NoCache, make_feature_cache
from backend.predict.predictor import Predictor
from tests.backend_fixtures import (label_studio, LEGACY_TOKEN, FakeEngine, _Server, ls_request, png_bytes,
                                    three_band_image)
from tests.redis_fixtures import free_port, redis_server_fn  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
HANG_S = 60  # liveness limits only


@pytest.fixture
def ls():
    with label_studio({f"/data/upload/1/{i}.png": png_bytes(np.full((6, 9, 3), (40 + 50 * i, 200, 30), np.uint8))
                       for i in range(4)}) as server:
        yield server


def body(*refs):
    b = ls_request("predict")
    b["tasks"] = [{"id": i, "data": {"image": r}} for i, r in enumerate(refs, 1)]
    return b


def health(client) -> dict:
    resp = client.get("/health")
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["status"] == "UP" and data["model_loaded"] is True
    return data


# ---------------------------------------------------------------------------------------------
# the feature cache: Redis down, Redis hung
# ---------------------------------------------------------------------------------------------
def test_redis_down_and_back(ls, model, redis_server_fn, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CASS_REDIS_RETRY_S", "0.2")
    monkeypatch.setenv("CASS_REDIS_TIMEOUT_S", "0.5")
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        redis_url=redis_server_fn.url)
    client = create_app(settings, Predictor(model, make_feature_cache(redis_server_fn.url))).test_client()
    assert health(client)["degraded"] == [] and health(client)["cache"]["reachable"] is True
    assert all("error" not in r for r in client.post("/predict", json=body("/data/upload/1/0.png")).get_json()["results"])

    redis_server_fn.kill()
    resp = client.post("/predict", json=body("/data/upload/1/1.png", "/data/upload/1/0.png"))
    assert resp.status_code == 200
    assert all(r["result"] for r in resp.get_json()["results"])  # predicted without the shared cache
    down = health(client)
    assert down["cache"]["reachable"] is False
    assert any(d.startswith("feature cache unreachable") for d in down["degraded"]), down["degraded"]

    redis_server_fn.start()
    deadline = time.monotonic() + HANG_S
    while health(client)["degraded"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the cache retries Redis after CASS_REDIS_RETRY_S
    assert health(client)["degraded"] == [] and health(client)["cache"]["reachable"] is True


class HungRedis:
    """Accepts connections and never answers (a Redis that hangs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_hung_redis_costs_time_not_predictions(ls, model, monkeypatch):
    hung = HungRedis()
    monkeypatch.setenv("CASS_REDIS_TIMEOUT_S", "0.3")
    monkeypatch.setenv("CASS_REDIS_RETRY_S", "30")
    try:
        settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                            redis_url=hung.url)
        client = create_app(settings, Predictor(model, make_feature_cache(hung.url))).test_client()
        resp = client.post("/predict", json=body("/data/upload/1/2.png"))
        assert resp.status_code == 200 and resp.get_json()["results"][0]["result"]
        state = health(client)
        assert state["cache"]["reachable"] is False
        assert any("feature cache" in d for d in state["degraded"])
    finally:
        hung.close()


def test_health_answers_while_the_cache_probe_hangs(ls):
    """/health never waits on a hung cache for more than the probe's wait: it reports "slow"."""

    class StuckCache(NoCache):
        def __init__(self):
            super().__init__()
            self.release = threading.Event()

        def health(self):
            self.release.wait(HANG_S)
            return {"backend": "stuck", "reachable": True}

    cache = StuckCache()
    client = create_app(Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False),
                        Predictor(FakeEngine(), cache)).test_client()
    result = {}
    t = threading.Thread(target=lambda: result.update(state=health(client)))
    t.start()
    t.join(HANG_S / 2)
    assert not t.is_alive(), "/health waited for the stuck cache"
    state = result["state"]
    assert "did not answer a health probe within 0.5s" in state["cache"]["slow"]
    assert any(d.startswith("feature cache slow") for d in state["degraded"])
    assert "error" not in client.post("/predict", json=body("/data/upload/1/0.png")).get_json()["results"][0]
    cache.release.set()
    deadline = time.monotonic() + HANG_S
    while health(client)["degraded"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health(client)["cache"] == {"backend": "stuck", "reachable": True}


def test_cache_probe_reports_errors_and_runs_one_at_a_time():
    calls = []

    class Broken(NoCache):
        def health(self):
            calls.append(1)
            raise ConnectionError("refused")

    probe = CacheProbe(Broken())
    assert probe.check() == {"reachable": False, "error": "ConnectionError: refused"}
    assert probe.check()["reachable"] is False and len(calls) == 2


# ---------------------------------------------------------------------------------------------
# Label Studio unreachable for image downloads
# ---------------------------------------------------------------------------------------------
def test_label_studio_unreachable_for_downloads(caplog):
    port = free_port()  # nothing listens there
    settings = Settings(label_studio_url=f"http://127.0.0.1:{port}", label_studio_api_key=LEGACY_TOKEN,
                        warmup=False, fetch_timeout_s=2)
    client = create_app(settings, Predictor(FakeEngine())).test_client()
    try:
        resp = client.post("/predict", json=body("/data/upload/1/a.png", "/data/upload/1/b.png"))
        assert resp.status_code == 200  # per-task errors: Label Studio stores nothing and retries later
        results = resp.get_json()["results"]
        assert [r["task"] for r in results] == [1, 2]
        assert all(f"could not fetch http://127.0.0.1:{port}/data/upload/1/" in r["error"] and
                   r["error"].endswith("connection failed") for r in results)
        assert "task 2: no prediction: could not fetch" in caplog.text
        state = health(client)
        (message,) = state["degraded"]
        assert message.startswith(f"image downloads from Label Studio at http://127.0.0.1:{port} failing (2 in a row")
        assert state["downloads"][f"http://127.0.0.1:{port}"]["reachable"] is False
    finally:
        DOWNLOADS.clear()


def test_download_health_recovers_on_the_next_answer():
    now = [100.0]
    h = DownloadHealth(clock=lambda: now[0])
    h.record("http://ls:8080", "could not fetch http://ls:8080/x: connection failed")
    now[0] += 3
    assert h.report() == {"http://ls:8080": {"failures_in_a_row": 1, "reachable": False, "seconds_ago": 3.0,
                                             "last_error": "could not fetch http://ls:8080/x: connection failed"}}
    h.record("http://ls:8080?token=x", None)  # any HTTP answer: reachable (query strings never shown)
    assert h.report() == {"http://ls:8080": {"failures_in_a_row": 0, "reachable": True, "seconds_ago": 0.0}}
    for i in range(40):
        h.record(f"http://host{i}:1", None)
    assert len(h.report()) == DownloadHealth.MAX_ORIGINS  # bounded


# ---------------------------------------------------------------------------------------------
# out of memory in one task
# ---------------------------------------------------------------------------------------------
class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``."""


@pytest.mark.parametrize("error", [MemoryError(), OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 4000000000 bytes")],
                         ids=["MemoryError", "cuda", "cpu-allocator"])
def test_out_of_memory_in_one_task(ls, monkeypatch, caplog, error):
    collected = []
    monkeypatch.setattr(faults.gc, "collect", lambda: collected.append(1))
    huge = png_bytes(np.full((6, 9, 3), (40, 200, 30), np.uint8))  # the image of task 2 "is too big"

    class Hungry(FakeEngine):
        def encode(self, image):
            if bytes(image) == huge:
                raise error
            return super().encode(image)

    predictor = Predictor(Hungry())
    client = create_app(Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False),
                        predictor).test_client()
    resp = client.post("/predict", json=body("/data/upload/1/1.png", "/data/upload/1/0.png", "/data/upload/1/3.png"))
    assert resp.status_code == 200
    first, oom, third = resp.get_json()["results"]
    assert first["result"] and third["result"]
    assert oom["task"] == 2 and oom["error"].startswith(
        f"TaskOutOfMemory: out of memory on this image ({type(error).__name__}); the task was skipped")
    assert "CASS_MAX_IMAGE_MP" in oom["error"]
    assert collected, "memory was not released"
    assert "out of memory in a task" in caplog.text and "task 2: no prediction: out of memory" in caplog.text
    assert predictor.slots.stats()["busy_slots"] == 0  # the slot came back
    assert health(client)["degraded"] == []
    assert client.post("/predict", json=body("/data/upload/1/1.png")).get_json()["results"][0]["result"]


def test_is_out_of_memory():
    assert faults.is_out_of_memory(MemoryError())
    assert faults.is_out_of_memory(OutOfMemoryError("x"))
    assert not faults.is_out_of_memory(RuntimeError("expected 4 dims, got 3"))
    assert not faults.is_out_of_memory(ValueError("out of memory"))  # only allocator errors


# ---------------------------------------------------------------------------------------------
# a gunicorn worker killed in the middle of a batch
# ---------------------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_worker_killed_mid_batch_is_replaced_and_serving_goes_on(tmp_path):
    pytest.importorskip("gunicorn")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the worker")
    hold = threading.Event()
    asked = threading.Event()
    images = _Server()
    good = png_bytes(three_band_image(6, 9))
    images.routes["/data/upload/1/good.png"] = lambda req: (200, {"Content-Type": "image/png"}, good)

    def slow(req):
        asked.set()
        hold.wait(HANG_S)
        return 200, {"Content-Type": "image/png"}, good

    images.routes["/data/upload/1/slow.png"] = slow
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASS_", "LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.update(PYTHONPATH=str(REPO), LABEL_STUDIO_URL=images.url, CASS_FETCH_TIMEOUT_S="60", LOG_LEVEL="INFO")
    env.pop("REDIS_URL", None)
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                             "--threads", "4", "--timeout", "120", "tests.gunicorn_app:app"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def wait_healthy(exclude=()):
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            workers = [w for w in children(proc.pid) if w not in exclude]
            try:
                if workers and requests.get(f"{url}/health", timeout=2).status_code == 200:
                    return workers[0]
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("gunicorn did not become healthy:\n" + (tmp_path / "gunicorn.log").read_text())

    try:
        worker = wait_healthy()
        outcome = {}

        def batch():
            try:
                outcome["resp"] = requests.post(f"{url}/predict", json=body("/data/upload/1/good.png",
                                                                           "/data/upload/1/slow.png"), timeout=HANG_S)
            except requests.RequestException as exc:
                outcome["error"] = exc

        t = threading.Thread(target=batch)
        t.start()
        assert asked.wait(HANG_S), "the batch never reached its second image"
        os.kill(worker, signal.SIGKILL)  # mid-batch: task 1 done, task 2 downloading
        t.join(HANG_S)
        # the caller sees the connection drop (Label Studio stores nothing for the batch and retries later)
        assert "error" in outcome and isinstance(outcome["error"], requests.ConnectionError), outcome
        new_worker = wait_healthy(exclude={worker})
        assert new_worker != worker
        hold.set()
        resp = requests.post(f"{url}/predict", json=body("/data/upload/1/good.png", "/data/upload/1/slow.png"),
                             timeout=HANG_S)
        assert resp.status_code == 200 and all(r["result"] for r in resp.json()["results"])
    finally:
        hold.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        images.close()
