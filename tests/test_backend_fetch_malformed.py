"""Issue 9 item 7: every malformed request is a 4xx with a JSON reason (never an HTML 500 or a
traceback), every malformed task an error entry without a traceback."""
from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.fetch.images import DOWNLOADS, LabelStudioAuth
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def client(tmp_path):
    ls = FakeLabelStudio()
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        warmup_queue=0, local_files_root=str(tmp_path), fetch_timeout_s=5.0)
    yield create_app(settings, Predictor(FakeEngine())).test_client()
    ls.close()
    LabelStudioAuth._access.clear()
    DOWNLOADS.clear()


def nested(depth: int) -> bytes:
    return b'{"tasks": ' + b"[" * depth + b"]" * depth + b"}"


def assert_json_4xx(resp, fragment: str):
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.is_json, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert fragment in body["error"], body
    assert "Traceback" not in resp.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/predict", "/webhook", "/setup"])
@pytest.mark.parametrize("depth", [100_000, 200])
def test_deeply_nested_json_is_a_400(client, path, depth):
    resp = client.post(path, data=nested(depth), content_type="application/json")
    assert_json_4xx(resp, "nested")


@pytest.mark.parametrize("params, fragment", [
    ([1, 2], "'params' must be a JSON object"), ("x", "'params' must be a JSON object"),
    ({"tasks": []}, "'params' may not contain 'tasks'"), ({"project": "1"}, "may not contain 'project'"),
])
def test_bad_params_on_predict_are_a_400(client, params, fragment):
    body = ls_request("predict")
    body["params"] = params
    assert_json_4xx(client.post("/predict", json=body), fragment)


def test_post_train_is_a_json_4xx(client):
    assert_json_4xx(client.post("/train", json={"annotations": [], "project": "1.1"}), "training-free")
    assert_json_4xx(client.post("/train", json={"params": "x"}), "training-free")


@pytest.mark.parametrize("ref, fragment", [
    ("file:///data/a%00.png", "NUL byte"),
    ("http://127.0.0.1:+18080/x.png", "is not a number in 1..65535"),
    ("http://[::1/x.png", "IPv6"),
    ("http://a\\@b/x.png", "backslash"),
])
def test_malformed_task_references_are_error_entries_without_tracebacks(client, ref, fragment, caplog):
    body = ls_request("predict")
    body["tasks"] = [{"id": 1, "data": {"image": ref}}]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200
    (entry,) = resp.get_json()["results"]
    assert fragment in str(entry), entry
    assert "unexpected" not in str(entry)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_setup_hostname_that_the_strict_parse_refuses_is_a_400_at_predict():
    settings = Settings(warmup=False, warmup_queue=0)
    client = create_app(settings, Predictor(FakeEngine())).test_client()
    setup = ls_request("setup")
    setup["hostname"] = "http://127.0.0.2:1\\@127.0.0.1:8080"
    assert client.post("/setup", json=setup).status_code == 200
    body = ls_request("predict")
    body["project"] = setup["project"]
    body["tasks"] = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 400 and resp.is_json and "backslash" in resp.get_data(as_text=True)
