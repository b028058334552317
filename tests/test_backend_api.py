"""The label-studio-ml app (Flask test client) with request bodies recorded from Label Studio 1.23.2."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # Flask 1.1.2 (pinned by label-studio-ml) imports itsdangerous.json
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.controls.brush_rle import rle_to_mask
from backend.predict.predictor import Predictor
from cass.cache.settings import CacheSettings
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401
from tests.backend_fixtures import (label_studio, label_set_version, LEGACY_TOKEN, FakeEngine, ls_request, png_bytes,
                                    three_band_image)

# label-studio-ml 1.0.9 pins Flask 1.1.2, which warns about itsdangerous on every JSON response
pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

UPLOAD = "/data/upload/1/63a93ce6-a.png"  # the path in the recorded /predict body
RECT_CONFIG = ("<View><Image name='image' value='$image'/><RectangleLabels name='box' toName='image'>"
               "<Label value='cat'/></RectangleLabels></View>")


@pytest.fixture
def ls():
    with label_studio({UPLOAD: png_bytes(three_band_image(6, 9))}) as server:
        yield server


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(ls, engine):
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        warmup_queue=0)  # the recorded TASKS_CREATED names https://example.com/x.jpg
    app = create_app(settings, Predictor(engine))
    return app.test_client()


def test_health(client, engine):
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "UP"
    assert body["model_version"] == engine.model_version
    assert body["cache"]["reachable"] is True


def test_setup_reports_the_engine_version_without_running_the_model(client, engine, monkeypatch):
    # Label Studio allows /setup about 3 s and calls it before every prediction batch: it must not
    # touch the model (a behaviour, not a timing; timings are in scripts/ and cass/bench/engine.py)
    def no_model_work(*args, **kwargs):
        raise AssertionError("/setup ran the model")

    monkeypatch.setattr(engine, "encode", no_model_work)
    monkeypatch.setattr(engine, "segment", no_model_work)
    resp = client.post("/setup", json=ls_request("setup"))
    assert resp.status_code == 200
    assert resp.get_json() == {"model_version": label_set_version(engine, ls_request("setup")["schema"])}


def test_setup_with_a_config_cass_cannot_use_is_a_400_naming_what_is_missing(client):
    body = ls_request("setup")
    body["schema"] = RECT_CONFIG
    resp = client.post("/setup", json=body)
    assert resp.status_code == 400
    assert "LabelConfigError: the label config has no <BrushLabels> control (found: <RectangleLabels " \
           "name='box'>)" in resp.get_json()["detail"]


def test_predict_recorded_batch(client, engine, ls):
    client.post("/setup", json=ls_request("setup"))
    resp = client.post("/predict", json=ls_request("predict"))
    assert resp.status_code == 200
    body = resp.get_json()
    version = label_set_version(engine, ls_request("predict")["label_config"])
    assert body["model_version"] == version
    assert len(body["results"]) == 5
    expected = three_band_image(6, 9).argmax(axis=2) % 2  # cat, dog (two labels in the recorded config)
    for prediction in body["results"]:
        assert prediction["model_version"] == version
        assert 0 < prediction["score"] <= 1
        labels = [r["value"]["brushlabels"][0] for r in prediction["result"]]
        assert labels == ["cat", "dog"]
        for index, region in enumerate(prediction["result"]):
            assert (region["from_name"], region["to_name"]) == ("tag", "image")
            assert (region["original_width"], region["original_height"]) == (9, 6)
            assert np.array_equal(rle_to_mask(region["value"]["rle"], 6, 9), expected == index)
    uploads = [r for r in ls.requests if r["path"] == UPLOAD]
    assert len(uploads) == 5 and all(r["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}" for r in uploads)
    assert engine.segments[-1][1].prob_thd == 0.2  # cass_threshold="0.2" of the recorded config


def test_predict_bad_task_gets_an_error_entry_and_the_others_predictions(client, engine):
    body = ls_request("predict")
    body["tasks"][1]["data"]["image"] = "/data/upload/1/missing.png"
    body["tasks"][3]["data"]["image"] = "data:image/png;base64,bm90IGFuIGltYWdl"
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200  # an HTTP 500 would make Label Studio drop the whole batch
    results = resp.get_json()["results"]
    assert [("error" not in r) for r in results] == [True, False, True, False, True]
    assert results[1]["task"] == 2 and "missing.png answered HTTP 404" in results[1]["error"]
    assert results[3]["task"] == 4 and results[3]["error"].startswith("ImageError:")


def test_predict_uses_its_own_label_config_not_the_last_setup(client):
    client.post("/setup", json=ls_request("setup"))
    other = ls_request("setup")
    other.update(project="99.1700000000", schema=ls_request("predict")["label_config"].replace("dog", "wolf"))
    client.post("/setup", json=other)
    results = client.post("/predict", json=ls_request("predict")).get_json()["results"]
    assert {r["value"]["brushlabels"][0] for r in results[0]["result"]} == {"cat", "dog"}


def test_predict_without_label_config_uses_the_project_setup(client):
    client.post("/setup", json=ls_request("setup"))
    body = ls_request("predict")
    del body["label_config"]
    results = client.post("/predict", json=body).get_json()["results"]
    assert len(results[0]["result"]) == 2


@pytest.mark.parametrize("change, status, fragment", [
    ({"label_config": RECT_CONFIG}, 400, "no <BrushLabels> control"),
    ({"tasks": {"id": 1}}, 400, "'tasks' must be a list"),
    ({"label_config": None, "project": "404.1"}, 400, "no label config"),
])
def test_predict_bad_requests(client, change, status, fragment):
    body = ls_request("predict")
    body.update(change)
    resp = client.post("/predict", json=body)
    assert resp.status_code == status
    assert fragment in resp.get_json()["detail"]


def test_without_env_credentials_the_setup_hostname_and_token_are_used_for_that_project(ls, engine):
    app = create_app(Settings(warmup=False), Predictor(engine))
    client = app.test_client()
    setup = ls_request("setup")
    setup.update(hostname=ls.url, access_token=LEGACY_TOKEN)
    client.post("/setup", json=setup)
    elsewhere = ls_request("setup")
    elsewhere.update(project="7.1", hostname="http://127.0.0.1:9", access_token="other")
    client.post("/setup", json=elsewhere)  # another project's setup does not redirect this one
    results = client.post("/predict", json=ls_request("predict")).get_json()["results"]
    assert all(len(r["result"]) == 2 for r in results)
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"


def test_env_url_without_key_uses_the_setup_token_with_the_env_url(ls, engine):
    client = create_app(Settings(label_studio_url=ls.url, warmup=False), Predictor(engine)).test_client()
    setup = ls_request("setup")
    setup.update(hostname="http://localhost:8080", access_token=LEGACY_TOKEN)  # LS's idea of its address
    client.post("/setup", json=setup)
    results = client.post("/predict", json=ls_request("predict")).get_json()["results"]
    assert all(len(r["result"]) == 2 for r in results)
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"


@pytest.mark.parametrize("name", ["webhook_annotation_created", "webhook_annotation_updated",
                                  "webhook_annotations_deleted", "webhook_tasks_created",
                                  "webhook_project_updated"])
def test_webhooks_are_accepted_and_never_bump_the_model_version(client, engine, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = client.post("/setup", json=ls_request("setup")).get_json()
    resp = client.post("/webhook", json=ls_request(name))
    assert resp.status_code == 201
    assert resp.get_json()["model_version"] == engine.model_version
    version = label_set_version(engine, ls_request("setup")["schema"])
    assert client.post("/setup", json=ls_request("setup")).get_json() == before == {"model_version": version}
    assert client.post("/predict", json=ls_request("predict")).get_json()["model_version"] == version
    assert os.listdir(tmp_path) == []  # no job directories, no spawned training process


def test_webhook_without_action_is_a_400(client):
    for body in ({"project": {}}, [1, 2], None):
        resp = client.post("/webhook", json=body)
        assert resp.status_code == 400
        assert "'action'" in resp.get_json()["detail"]


def test_metrics_versions_and_is_training(client, engine):
    body = ls_request("predict")
    body["tasks"][0]["data"]["image"] = "/data/upload/1/missing.png"
    client.post("/predict", json=body)
    metrics = client.get("/metrics?format=json").get_json()
    assert (metrics["tasks"], metrics["predictions"], metrics["failed_tasks"]) == (5, 4, 1)
    assert client.post("/versions", json={"project": "1.1"}).get_json()["versions"] == [engine.model_version]
    assert client.get("/is_training?project=1.1").get_json()["is_training"] is False


def test_real_tiny_engine_end_to_end_through_the_app(ls, tiny_weights):
    clip, dino = tiny_weights
    settings = Settings(clip_weights=str(clip), dino_weights=str(dino), label_studio_url=ls.url,
                        label_studio_api_key=LEGACY_TOKEN, warmup=False)
    client = create_app(settings).test_client()
    version = client.post("/setup", json=ls_request("setup")).get_json()["model_version"]
    assert version.startswith("cass-default-clip.") and "-dino." in version
    body = ls_request("predict")
    body["tasks"] = body["tasks"][:1]
    (prediction,) = client.post("/predict", json=body).get_json()["results"]
    assert prediction["model_version"] == version
    assert prediction["result"], "at least one label covers some pixels"
    union = np.zeros((6, 9), bool)
    for region in prediction["result"]:
        mask = rle_to_mask(region["value"]["rle"], 6, 9)
        assert not (mask & union).any()
        union |= mask
        assert region["value"]["brushlabels"][0] in ("cat", "dog")
        assert 0 < region["score"] <= 1
    assert version.startswith(client.get("/health").get_json()["model_version"] + "-labels.")


def test_redis_url_gives_a_shared_feature_cache(ls, tiny_weights, redis_url):  # noqa: F811
    clip, dino = tiny_weights
    settings = Settings(clip_weights=str(clip), dino_weights=str(dino), label_studio_url=ls.url,
                        label_studio_api_key=LEGACY_TOKEN, redis_url=redis_url,
                        cache=CacheSettings(redis_url=redis_url), warmup=False)  # one Redis in both roles,
                                                                                 # as REDIS_URL alone gives
    client = create_app(settings).test_client()
    health = client.get("/health").get_json()
    assert health["cache"]["backend"] == "redis" and health["cache"]["reachable"] is True
    body = ls_request("predict")
    body["tasks"] = body["tasks"][:2]  # the same image twice: encoded once
    first, second = client.post("/predict", json=body).get_json()["results"]
    assert [r["value"]["rle"] for r in first["result"]] == [r["value"]["rle"] for r in second["result"]]
    metrics = client.get("/metrics?format=json").get_json()
    assert metrics["cache_hits"] == 1
    assert metrics["cache"]["misses"] == 1
