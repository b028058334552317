"""Predictor (no label-studio-ml, fake engine): regions, scores, version, per-task failures, budget."""
from __future__ import annotations

import numpy as np
import pytest

from backend.fetch.images import ImageFetchError
from backend.controls.label_parse import parse_label_config
from backend.controls.labels import NothingRule
from backend.controls.brush_rle import rle_to_mask
from backend.http.health import report
from backend.predict.loading import NoCache, make_feature_cache
from backend.predict.predictor import Predictor
from tests.backend_fixtures import BRUSH_CONFIG, FakeEngine, label_set_version, png_bytes, three_band_image

IMAGES = {
    "bands.png": png_bytes(three_band_image(6, 9)),
    "red.png": png_bytes(np.full((4, 5, 3), (200, 10, 10), np.uint8)),
    "dim.png": png_bytes(np.full((4, 5, 3), (60, 10, 10), np.uint8)),
    "broken.png": b"\x89PNG\r\n\x1a\n truncated",
}


def fetch(url, task_id):
    if url not in IMAGES:
        raise ImageFetchError(f"{url} answered HTTP 404")
    return IMAGES[url]


def task(task_id, image):
    return {"id": task_id, "data": {"image": image}}


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def targets():
    return parse_label_config(BRUSH_CONFIG)


def test_one_region_per_label_present_with_masks_at_the_original_size(engine, targets):
    (pred,) = Predictor(engine).predict([task(1, "bands.png")], targets, fetch)
    assert pred["model_version"] == label_set_version(engine, BRUSH_CONFIG)
    assert [r["value"]["brushlabels"] for r in pred["result"]] == [["red thing"], ["green thing"], ["blue thing"]]
    expected = three_band_image(6, 9).argmax(axis=2)
    for index, region in enumerate(pred["result"]):
        assert (region["original_width"], region["original_height"]) == (9, 6)
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert np.array_equal(rle_to_mask(region["value"]["rle"], 6, 9), expected == index)
        assert region["score"] == pytest.approx(230 / 255, abs=1e-4)  # mean probability inside the mask
    assert pred["score"] == pytest.approx(230 / 255, abs=1e-4)


def test_prediction_score_is_the_pixel_weighted_mean(engine, targets):
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[:, :1, 0] = 255  # 2 red pixels at p=1.0
    rgb[:, 1:, 1] = 51   # 6 green pixels at p=0.2
    (pred,) = Predictor(engine).predict([task(1, "mixed.png")], targets, lambda url, task_id: png_bytes(rgb))
    assert [r["score"] for r in pred["result"]] == pytest.approx([1.0, 0.2], abs=1e-4)
    assert pred["score"] == pytest.approx((2 * 1.0 + 6 * 0.2) / 8, abs=1e-4)


def test_a_bad_task_never_loses_the_others(engine, targets, caplog):
    tasks = [task(1, "red.png"), task(2, "missing.png"), task(3, "broken.png"), {"id": 4, "data": {}},
             "not a task", task(6, "bands.png")]
    out = Predictor(engine).predict(tasks, targets, fetch)
    assert len(out) == 6
    assert [("result" in o) for o in out] == [True, False, False, False, False, True]
    assert out[1] == {"task": 2, "error": "ImageFetchError: missing.png answered HTTP 404",
                      "model_version": label_set_version(engine, BRUSH_CONFIG)}
    assert out[2]["error"].startswith("ImageError: image bytes") and out[2]["task"] == 3
    assert "TaskDataError: task 4 has no data field 'image'" in out[3]["error"]
    assert "a task must be a JSON object" in out[4]["error"]
    assert len(out[5]["result"]) == 3
    assert "task 2: no prediction: missing.png answered HTTP 404" in caplog.text


def test_unexpected_engine_errors_are_per_task_too(targets, caplog):
    class Exploding(FakeEngine):
        def encode(self, image):
            if image == IMAGES["red.png"]:
                raise RuntimeError("expected 4 dims, got 3")
            return super().encode(image)

    engine = Exploding()
    out = Predictor(engine).predict([task(1, "red.png"), task(2, "bands.png")], targets, fetch)
    assert out[0]["error"] == "RuntimeError: expected 4 dims, got 3"
    assert len(out[1]["result"]) == 3
    assert "Traceback" in caplog.text  # a bug-like failure is logged with its traceback


def test_threshold_and_background_prompts_leave_pixels_unlabelled(engine):
    (plain,) = parse_label_config(BRUSH_CONFIG)
    (thresholded,) = parse_label_config(BRUSH_CONFIG, NothingRule(threshold=0.5))
    predictor = Predictor(engine)
    assert len(predictor.predict([task(1, "dim.png")], (plain,), fetch)[0]["result"]) == 1
    (pred,) = predictor.predict([task(1, "dim.png")], (thresholded,), fetch)
    assert pred["result"] == [] and pred["score"] == 0.0  # ran fine, found nothing: an empty prediction
    assert engine.segments[-1][1].prob_thd == 0.5

    (with_background,) = parse_label_config(BRUSH_CONFIG.replace(
        '<Label value="blue thing"/>', ""), NothingRule(background_prompts=("sky",)))
    (pred,) = predictor.predict([task(1, "bands.png")], (with_background,), fetch)
    # the fake engine gives blue pixels class 2 = the background class: no region for them
    assert [r["value"]["brushlabels"] for r in pred["result"]] == [["red thing"], ["green thing"]]


def test_each_image_is_fetched_and_encoded_once_per_task(engine):
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="objects" toName="image"><Label value="a"/><Label value="b"/></BrushLabels>
      <BrushLabels name="stuff" toName="image"><Label value="c"/></BrushLabels></View>"""
    calls = []

    def counting_fetch(url, task_id):
        calls.append((url, task_id))
        return fetch(url, task_id)

    (pred,) = Predictor(engine).predict([task(9, "bands.png")], parse_label_config(config), counting_fetch)
    assert calls == [("bands.png", 9)] and engine.encodes == 1
    assert {r["from_name"] for r in pred["result"]} == {"objects", "stuff"}


def test_cache_get_or_compute_is_the_encode_path(engine, targets):
    class RecordingCache(NoCache):
        def __init__(self):
            super().__init__()
            self.store = {}

        def get_or_compute(self, image_bytes, fingerprint, compute):
            key = (image_bytes, fingerprint)
            if key in self.store:
                return self.store[key], True
            self.store[key] = compute()
            return self.store[key], False

    predictor = Predictor(engine, RecordingCache())
    first = predictor.predict([task(1, "bands.png")], targets, fetch)
    second = predictor.predict([task(2, "bands.png")], targets, fetch)
    assert engine.encodes == 1
    assert [r["value"]["rle"] for r in first[0]["result"]] == [r["value"]["rle"] for r in second[0]["result"]]
    assert predictor.stats()["cache_hits"] == 1
    assert list(predictor.cache.store)[0][1] == engine.fingerprint


def test_time_budget_skips_the_rest_with_an_error_entry(engine, targets):
    now = [0.0]

    def clock():
        now[0] += 30.0  # every look at the clock: 30 s later
        return now[0]

    out = Predictor(engine, predict_budget_s=80, clock=clock).predict(
        [task(i, "red.png") for i in range(1, 5)], targets, fetch)
    assert ["result" in o for o in out] == [True, False, False, False]
    assert "time budget of 80s (CASS_PREDICT_BUDGET_S)" in out[1]["error"]
    assert {o["task"] for o in out[1:]} == {2, 3, 4}


def test_stats_and_health(engine, targets):
    predictor = Predictor(engine)
    predictor.predict([task(1, "bands.png"), task(2, "missing.png")], targets, fetch)
    stats = predictor.stats()
    assert {k: stats[k] for k in ("tasks", "predictions", "failed_tasks", "regions")} == {
        "tasks": 2, "predictions": 1, "failed_tasks": 1, "regions": 3}
    assert report(predictor)["model_version"] == engine.model_version


def test_make_feature_cache_uses_cass_cache_when_present():
    cache = make_feature_cache(None)
    for method in ("get_or_compute", "get_text", "set_text", "stats", "health"):
        assert callable(getattr(cache, method))
    assert not isinstance(cache, NoCache)


def test_predictions_pass_label_studios_own_validation(engine):
    """Label Studio validates stored predictions with the SDK's LabelInterface (behind a feature flag)."""
    from label_studio_sdk.label_interface import LabelInterface

    config = BRUSH_CONFIG.replace('toName="image">', 'toName="image" cass_background="sky">')
    (pred,) = Predictor(engine).predict([task(1, "bands.png")], parse_label_config(config), fetch)
    assert [r["value"]["brushlabels"] for r in pred["result"]] == [["red thing"], ["green thing"], ["blue thing"]]
    assert LabelInterface(config).validate_prediction(pred, return_errors=True) == []
