"""/webhook -> CASSBackend.process_event -> the corrections dispatcher -> agreement totals, through the
Flask test client, with a fake Label Studio (tests.backend_fixtures.FakeLabelStudio) serving the
task's stored prediction. The real Label Studio path: tests/e2e/test_corrections.py."""
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
    yield client, ls
    ls.close()
    LabelStudioAuth._access.clear()


def test_created_counts_deleted_reverts(setup):
    client, ls = setup
    resp = client.post("/webhook", json=ls_request("webhook_annotation_created_brush"))
    assert resp.status_code == 201
    (out,) = resp.get_json()["result"]["listeners"]["agreement"]
    assert out["state"] == "added" and out["prediction"] == 9
    assert any(r["path"] == "/api/predictions/" and r["query"] == {"task": ["1"]} for r in ls.requests)
    cat = summarize(store_module._memory.totals(1))["cat"]
    assert (cat["annotated_px"], cat["predicted_px"], cat["iou"], cat["recall"]) == (300, 150, 0.5, 0.5)
    client.post("/webhook", json=ls_request("webhook_annotation_created_brush"))  # redelivered
    assert summarize(store_module._memory.totals(1))["cat"]["annotations"] == 1
    client.post("/webhook", json=ls_request("webhook_annotations_deleted_brush"))
    assert store_module._memory.totals(1) == {}


def test_a_malformed_annotation_is_named_in_the_answer(setup):
    client, _ = setup
    resp = client.post("/webhook", json=ls_request("webhook_annotation_created"))  # its made-up RLE
    assert resp.status_code == 201
    assert "EventError: annotation 1 of task 1: result[0]: value.rle does not decode" in resp.get_json()["result"]["error"]
    assert store_module._memory.totals(1) == {}
