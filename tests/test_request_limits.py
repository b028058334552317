"""Issue 21: per-endpoint body limits checked from Content-Length before anything is read, and a
maximum number of tasks per ``/predict`` (400 naming the limit before any per-task work)."""
from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, label_studio, ls_request, png_bytes, three_band_image

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

UPLOAD = "/data/upload/1/63a93ce6-a.png"


@pytest.fixture
def ls():
    with label_studio({UPLOAD: png_bytes(three_band_image(6, 9))}) as server:
        yield server


def raw_post(client, path: str, length: int) -> tuple[int, dict]:
    """POST ``path`` declaring ``length`` bytes with a body that must not be read (status, JSON)."""
    environ = EnvironBuilder(path=path, method="POST", content_type="application/json").get_environ()
    environ.update({"CONTENT_LENGTH": str(length), "wsgi.input": Unread(b"")})
    body, status, _ = run_wsgi_app(client.application, environ, buffered=True)
    return int(status.split()[0]), json.loads(b"".join(body))


def client_for(ls, **settings):
    base = dict(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, fetch_timeout_s=5.0)
    base.update(settings)
    return create_app(Settings(**base), Predictor(FakeEngine())).test_client()


class Unread(io.BytesIO):
    """A body that fails the test if anything reads it."""

    def read(self, *args):  # pragma: no cover - reached only on failure
        raise AssertionError("the body was read")

    readline = readinto = read


def test_setup_body_over_its_own_limit_is_413_before_reading(ls):
    client = client_for(ls, max_setup_bytes=1000)
    status, answer = raw_post(client, "/setup", 16 * 2**20)
    assert status == 413 and "CASS_MAX_SETUP_MB" in answer["error"]
    assert client.post("/setup", json=ls_request("setup")).status_code == 200  # a real one fits


def test_webhook_body_over_its_own_limit_is_413(ls):
    client = client_for(ls, max_webhook_bytes=1000)
    status, answer = raw_post(client, "/webhook", 5000)
    assert status == 413 and "CASS_MAX_WEBHOOK_MB" in answer["error"]
    chunked = client.post("/webhook", input_stream=io.BytesIO(b"{" + b" " * 5000 + b"}"),
                          headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_predict_keeps_the_general_limit(ls):
    client = client_for(ls, max_setup_bytes=1000, max_request_bytes=4000)
    body = ls_request("predict")
    body["tasks"] = [{"id": i, "data": {"image": UPLOAD}} for i in range(100)]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 413 and "CASS_MAX_REQUEST_MB" in resp.get_json()["error"]


def test_too_many_tasks_is_a_400_naming_the_limit_before_any_task_is_worked_on(ls, caplog, monkeypatch):
    client = client_for(ls, max_tasks_per_request=10)
    body = ls_request("predict")
    body["tasks"] = [{} for _ in range(11)]
    caplog.set_level(logging.INFO)
    resp = client.post("/predict", json=body)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert "11 tasks" in error and "10" in error and "CASS_MAX_TASKS_PER_REQUEST" in error
    assert len(caplog.records) < 5  # one refusal line, not one per task
    body["tasks"] = body["tasks"][:1]
    body["tasks"][0] = {"id": 1, "data": {"image": UPLOAD}}
    assert client.post("/predict", json=body).status_code == 200


def test_a_million_empty_tasks_cost_one_line_and_a_small_answer(ls, caplog):
    client = client_for(ls)
    raw = json.dumps({**ls_request("predict"), "tasks": [{}] * 1_000_000}).encode()
    resp = client.post("/predict", data=raw, content_type="application/json")
    assert resp.status_code == 400 and len(resp.get_data()) < 2000
    assert "1000000 tasks" in resp.get_json()["error"]
    assert sum("refused POST /predict" in r.getMessage() for r in caplog.records) == 1
    assert len(caplog.records) < 5
