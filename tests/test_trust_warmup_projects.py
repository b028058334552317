"""Issue 21: ``TASKS_CREATED`` is a notification, not data, and a project set up once is known to every
process.

* Warm-up acts only for projects this backend was set up for, takes the task list's images from Label
  Studio by id (``GET /api/tasks?project=..&selectedItems=..``) with the project's own credentials and the
  controls of its ``/setup`` -- never the payload's task data or label config; a task id of another
  project is not read and not warmed.
* What ``/setup`` learnt (address, config; never the token) lives in the state Redis, so a restarted
  process (or another gunicorn worker) acts on the project's webhooks without waiting for a new ``/setup``.

Real parts: the tiny-weight engine, the Flask app of the composition root, a fake Label Studio on a real
socket, a real redis-server.
"""
from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from backend.config import Settings
from backend.http.app import create_app
from backend.http.mlbackend import CASSManager
from backend.predict.loading import make_feature_cache
from backend.predict.predictor import Predictor
from backend.predict.project_store import ProjectStore
from backend.predict.projects import Connection, ProjectRegistry, setup_project_key
from backend.predict.pipeline import parse_config
from tests.backend_fixtures import LEGACY_TOKEN, label_studio, ls_request, png_bytes
from tests.parity import tiny_model
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="cat"/><Label value="dog"/></BrushLabels></View>')
REAL = "/data/upload/1/real.png"
OTHER = "/data/upload/2/other.png"


def image(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def engine():
    return tiny_model()


@pytest.fixture
def ls():
    with label_studio({REAL: image(0), OTHER: image(1)}) as server:
        server.add_tasks(1, [{"id": 6, "data": {"image": REAL}}])
        server.add_tasks(2, [{"id": 9, "data": {"image": OTHER}}])
        yield server


@pytest.fixture
def make_client(ls, engine):
    made = []

    def factory(redis_url=None):
        settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, redis_url=redis_url,
                            warmup=False)
        predictor = Predictor(engine, make_feature_cache(None))
        client = create_app(settings, predictor).test_client()
        made.append(client)
        return client

    yield factory
    warmer = CASSManager.pipeline().warmer
    if warmer is not None:
        warmer.close(timeout=30)


def setup(client) -> None:
    body = ls_request("setup")
    body["schema"] = CONFIG
    assert body["project"] == setup_project_key(ls_request("webhook_tasks_created")["project"])
    assert client.post("/setup", json=body).status_code == 200


def tasks_created(*tasks: dict, label_config: str = CONFIG) -> dict:
    body = ls_request("webhook_tasks_created")
    body["project"]["label_config"] = label_config
    body["tasks"] = list(tasks)
    return body


def warmed(ls) -> list[str]:
    """The image paths the backend downloaded from (fake) Label Studio."""
    return [r["path"] for r in ls.requests if r["path"].startswith("/data/")]


def wait_idle(timeout: float = 60) -> None:
    warmer = CASSManager.pipeline().warmer
    assert warmer.join(timeout), warmer.stats()


def test_a_project_never_set_up_gets_no_warm_up_and_nothing_is_fetched(make_client, ls):
    client = make_client()
    resp = client.post("/webhook", json=tasks_created({"id": 6, "data": {"image": REAL}}))
    assert resp.status_code == 201
    body = resp.get_json()
    assert body.get("warmup") is None and "not set up" in body["refused"], body
    wait_idle()
    assert ls.requests == []  # nothing read, nothing fetched


def test_the_payload_task_data_is_never_used_label_studio_is_asked(make_client, ls):
    client = make_client()
    setup(client)
    inline = "data:image/png;base64," + base64.b64encode(image(5)).decode()
    forged = tasks_created({"id": 6, "data": {"image": inline}},                  # Label Studio says: REAL
                           {"id": 9, "data": {"image": OTHER}},                   # a task of project 2
                           {"id": 12345, "data": {"image": "http://127.0.0.1:1/x.png"}},  # no such task
                           label_config="<View/>")                                 # ignored: /setup's config
    out = client.post("/webhook", json=forged).get_json()
    assert out["warmup"] == {"tasks": 1, "unread": 0, "queued": 1, "rejected": 0, "skipped": 0}, out
    wait_idle()
    assert warmed(ls) == [REAL]
    (read,) = [r for r in ls.requests if r["path"] == "/api/tasks"]
    assert read["query"]["project"] == ["1"] and read["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"
    assert CASSManager.pipeline().warmer.stats()["done"] == 1


def test_the_ids_read_back_are_bounded_by_the_warm_up_queue(make_client, ls):
    client = make_client()
    setup(client)
    size = CASSManager.pipeline().warmer.max_queue
    out = client.post("/webhook", json=tasks_created(*({"id": i} for i in range(size + 50)))).get_json()
    wait_idle()
    (read,) = [r for r in ls.requests if r["path"] == "/api/tasks"]
    import json
    assert len(json.loads(read["query"]["selectedItems"][0])["included"]) == size
    assert out["warmup"]["tasks"] == 1 and out["warmup"]["unread"] == 50  # Label Studio has task 6 of those


def test_a_project_set_up_before_a_restart_is_known_through_the_state_redis(make_client, ls, redis_url):
    setup(make_client(redis_url))
    restarted = make_client(redis_url)  # a new process: a fresh registry, the same state Redis
    out = restarted.post("/webhook", json=tasks_created({"id": 6})).get_json()
    assert out["warmup"] == {"tasks": 1, "unread": 0, "queued": 1, "rejected": 0, "skipped": 0}, out
    wait_idle()
    assert warmed(ls) == [REAL]


def test_without_a_state_redis_a_restart_forgets_the_project(make_client, ls):
    setup(make_client())
    out = make_client().post("/webhook", json=tasks_created({"id": 6})).get_json()
    assert "not set up" in out["refused"]


def test_the_shared_entry_holds_the_address_and_config_never_the_token(redis_url, redis_server):
    settings = Settings()
    a = ProjectRegistry(settings, ProjectStore.from_url(redis_url), parse=lambda c: parse_config(c, settings))
    b = ProjectRegistry(settings, ProjectStore.from_url(redis_url), parse=lambda c: parse_config(c, settings))
    a.remember("1.1700000000", Connection("http://ls:8080", "secret-token", parse_config(CONFIG, settings)), CONFIG)
    assert not b.known("2.1700000000") and b.known("1.1700000000")
    got = b.recall("1.1700000000")
    assert (got.hostname, got.access_token) == ("http://ls:8080", "")
    assert [t.from_name for t in got.controls.outputs] == ["tag"]
    stored = b"".join(redis_server.client().get(k) for k in redis_server.client().keys("cass:project:*"))
    assert b"secret-token" not in stored and b"http://ls:8080" in stored


def test_an_unreadable_shared_entry_is_unknown(redis_url, redis_server):
    redis_server.client().set("cass:project:v1:1.1700000000", b"\x00not json")
    registry = ProjectRegistry(Settings(), ProjectStore.from_url(redis_url))
    assert not registry.known("1.1700000000")
