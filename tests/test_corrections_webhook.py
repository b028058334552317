"""/webhook -> CASSBackend.process_event -> the corrections dispatcher -> agreement totals, through the
Flask test client, with a fake Label Studio (tests.backend_fixtures.FakeLabelStudio) serving the
annotation, its task, the project and the task's stored prediction. A webhook is a notification:
only the ids it names are used, the rest is read back from Label Studio (issue 21). The real Label
Studio path: tests/e2e/test_corrections.py."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.corrections import store as store_module
from backend.corrections.agreement import summarize
from backend.corrections.events import register_listener, unregister_listener
from backend.predict.projects import setup_project_key
from backend.corrections.store import MemoryStore
from backend.fetch.images import LabelStudioAuth
from backend.controls.brush_rle import mask_to_rle
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")
H, W = 48, 64


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setattr(store_module, "_memory", MemoryStore())
    engine = FakeEngine()
    ls = FakeLabelStudio()
    predicted = np.zeros((H, W), bool)
    predicted[5:20, 10:20] = True  # half of the annotated cat rectangle (rows 5-19, columns 10-29)
    prediction = {"id": 9, "task": 1, "model_version": engine.model_version, "created_at": "2026-12-01T00:00:00Z",
                  "result": [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W,
                              "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(predicted),
                                                              "brushlabels": ["cat"]}}]}
    ls.routes["/api/predictions/"] = lambda req: (200, {"Content-Type": "application/json"},
                                                  json.dumps([prediction]).encode())
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0)
    client = create_app(settings, Predictor(engine)).test_client()
    seen = []
    register_listener(seen.append, name="test-recorder")
    client.seen = seen
    yield client, ls
    unregister_listener("test-recorder")
    ls.close()
    LabelStudioAuth._access.clear()


def set_up(client, data: dict) -> str:
    """``/setup`` for the webhook's project, as Label Studio's Connect Model does; its version."""
    body = {"project": setup_project_key(data["project"]), "schema": data["project"]["label_config"]}
    return client.post("/setup", json=body).get_json()["model_version"]


def served(ls, name: str) -> dict:
    """The recorded webhook ``name``, its annotation, task and project served by the fake Label Studio."""
    data = ls_request(name)
    ls.add_annotation_event(data)
    return data


def agreement(resp) -> list:
    assert resp.status_code == 201
    return resp.get_json()["result"]["listeners"]["agreement"]


def test_created_counts_deleted_reverts(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    (out,) = agreement(client.post("/webhook", json=data))
    assert out["state"] == "added" and out["prediction"] == 9
    assert any(r["path"] == "/api/predictions/" and r["query"] == {"task": ["1"]} for r in ls.requests)
    cat = summarize(store_module._memory.totals(1))["cat"]
    assert (cat["annotated_px"], cat["predicted_px"], cat["iou"], cat["recall"]) == (300, 150, 0.5, 0.5)
    client.post("/webhook", json=ls_request("webhook_annotation_created_brush"))  # redelivered
    assert summarize(store_module._memory.totals(1))["cat"]["annotations"] == 1
    ls.forget("/api/annotations/1")  # deleted in Label Studio: GET answers 404
    client.post("/webhook", json=ls_request("webhook_annotations_deleted_brush"))
    assert store_module._memory.totals(1) == {}


def test_a_malformed_annotation_is_named_in_the_answer(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created")  # its made-up RLE, as Label Studio serves it
    set_up(client, data)
    resp = client.post("/webhook", json=data)
    assert resp.status_code == 201
    assert "EventError: annotation 1 of task 1: result[0]: value.rle does not decode" in resp.get_json()["result"]["error"]
    assert store_module._memory.totals(1) == {}


def ignored(resp) -> str:
    assert resp.status_code == 201
    return resp.get_json()["result"]["ignored"]


def test_a_project_never_set_up_changes_nothing(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    version = client.post("/setup", json={"project": "2.1795814322", "schema": data["project"]["label_config"]})
    assert ignored(client.post("/webhook", json=data)) == "project 1 was not set up with this backend"
    assert store_module._memory.totals(1) == {} and client.seen == []
    assert not any(r["path"].startswith("/api/") for r in ls.requests)  # not even read back
    assert set_up(client, data) == version.get_json()["model_version"]  # the version did not move


def test_a_forged_annotation_label_studio_does_not_know_reveals_nothing(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    forged = ls_request("webhook_annotation_created_brush")
    forged["annotation"]["id"] = 666
    forged["annotation"]["result"][0]["value"]["brushlabels"] = ["attacker-label"]
    forged["task"]["data"] = {"image": "data:image/png;base64,QVRUQUNLRVI="}
    resp = client.post("/webhook", json=forged)
    assert ignored(resp) == "annotation 666 is not in Label Studio"
    assert "attacker" not in resp.get_data(as_text=True) and "QVRUQUNLRVI" not in resp.get_data(as_text=True)
    assert store_module._memory.totals(1) == {} and client.seen == []


def test_label_studios_annotation_and_task_win_over_the_payloads(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    lying = ls_request("webhook_annotation_created_brush")
    lying["annotation"]["result"][0]["value"]["brushlabels"] = ["dog"]
    lying["annotation"]["updated_at"] = "2099-01-01T00:00:00Z"
    lying["task"]["data"] = {"image": "http://169.254.169.254/latest/meta-data"}
    lying["project"]["label_config"] = lying["project"]["label_config"].replace('"dog"', '"wolf"')
    (out,) = agreement(client.post("/webhook", json=lying))
    assert out["state"] == "added" and out["labels"] == ["cat"]  # Label Studio's result: cat, not dog
    totals = summarize(store_module._memory.totals(1))
    assert set(totals) == {"cat"} and totals["cat"]["annotated_px"] == 300
    (event,) = client.seen
    assert event.task["data"] == data["task"]["data"]  # the image the project memory fetches
    assert event.updated_at == data["annotation"]["updated_at"]
    assert "wolf" not in event.project_data["label_config"]


def test_an_annotation_whose_task_is_in_another_project_is_refused(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    ls.add_api("/api/tasks/1", {**data["task"], "project": 2})
    resp = client.post("/webhook", json=data)
    assert ignored(resp) == "annotation 1 is not in project 1"
    assert "upload" not in resp.get_data(as_text=True)
    assert store_module._memory.totals(1) == {} and client.seen == []


def test_an_unreadable_label_studio_is_refused_without_its_answer(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    ls.routes["/api/annotations/1"] = lambda req: (500, {}, b"internal secret trace")
    resp = client.post("/webhook", json=data)
    assert ignored(resp) == "Label Studio could not be read for annotation 1"
    assert "secret" not in resp.get_data(as_text=True)
    assert store_module._memory.totals(1) == {} and client.seen == []


def test_deleting_an_annotation_label_studio_still_has_tombstones_nothing(setup):
    client, ls = setup
    data = served(ls, "webhook_annotation_created_brush")
    set_up(client, data)
    client.post("/webhook", json=data)
    before = store_module._memory.totals(1)
    assert summarize(before)["cat"]["annotations"] == 1
    resp = client.post("/webhook", json=ls_request("webhook_annotations_deleted_brush"))  # LS still has 1
    assert resp.get_json()["result"]["events"] == 0
    assert store_module._memory.totals(1) == before and len(client.seen) == 1
    client.post("/webhook", json=data)  # not tombstoned: a redelivery is still an annotation of the project
    assert store_module._memory.totals(1) == before
