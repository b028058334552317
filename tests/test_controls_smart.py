"""Interactive refinement (smart RectangleLabels / KeyPointLabels) on the FAKE engine of
tests/backend_fixtures.py (colour = class): rectangle crops, keypoint regions, negative points, the
crop's features cached under its own key, clear errors for bad contexts, and the /predict route."""
from __future__ import annotations

import numpy as np
import pytest

from backend.controls import parse_controls
from backend.controls.smart import ContextError, Refiner, parse_context
from backend.controls.brush_rle import rle_to_mask
from backend.predict.predictor import Predictor
from tests.backend_fixtures import FakeEngine, png_bytes

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="red"/><Label value="green"/><Label value="blue"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="outline"/></PolygonLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="red"/><Label value="green"/><Label value="outline"/>
  </RectangleLabels>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="red"/><Label value="green"/><Label value="blue"/>
  </KeyPointLabels>
</View>"""
H, W = 40, 60


def picture() -> np.ndarray:
    """Left third red, middle green, right blue; a blue square inside the red band."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :20, 0] = 230
    rgb[:, 20:40, 1] = 230
    rgb[:, 40:, 2] = 230
    rgb[5:15, 5:15] = (0, 0, 230)
    return rgb


class FakeDictCache:
    """A FAKE feature cache: a dict keyed by the image bytes (counts computes)."""

    def __init__(self):
        self.store, self.computes = {}, 0

    def get_or_compute(self, image_bytes, fingerprint, compute):
        key = (image_bytes, fingerprint)
        if key in self.store:
            return self.store[key], True
        self.computes += 1
        self.store[key] = compute()
        return self.store[key], False


@pytest.fixture
def setup():
    engine = FakeEngine()
    cache = FakeDictCache()
    refiner = Refiner(Predictor(engine, cache))
    image = png_bytes(picture())
    fetch = lambda url, task_id: image  # noqa: E731
    return refiner, parse_controls(CONFIG), fetch, engine, cache


def rect(label, x, y, w, h, positive=True):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "is_positive": positive,
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def point(label, x, y, positive=True):
    return {"from_name": "point", "to_name": "image", "type": "keypointlabels", "is_positive": positive,
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def masks(answer):
    out = {}
    for r in answer["result"]:
        assert r["type"] == "brushlabels" and r["from_name"] == "tag"
        out[r["value"]["brushlabels"][0]] = rle_to_mask(r["value"]["rle"], H, W)
    return out


TASK = {"id": 1, "data": {"image": "/data/upload/1/x.png"}}


def test_rectangle_answers_its_label_inside_the_box_with_the_others_competing(setup):
    refiner, controls, fetch, engine, cache = setup
    # x 10%..60% (px 6..36), y 25%..75% (px 10..30): red band, part of the blue square, green band
    answer = refiner.answer(TASK, controls, {"result": [rect("green", 10, 25, 50, 50)]}, fetch)
    got = masks(answer)
    expected = np.zeros((H, W), bool)
    expected[10:30, 20:36] = True  # only the green pixels of the box
    assert list(got) == ["green"] and np.array_equal(got["green"], expected)
    assert answer["model_version"] == engine.model_version and 0 < answer["score"] <= 1


def test_a_new_rectangle_is_answered_from_the_whole_image_and_its_crop_encoded_in_the_background(setup):
    refiner, controls, fetch, engine, cache = setup
    context = {"result": [rect("red", 0, 0, 50, 50)]}
    first = masks(refiner.answer(TASK, controls, context, fetch))
    expected = np.zeros((H, W), bool)
    expected[:20, :20] = True
    expected[5:15, 5:15] = False  # the blue square inside the red band
    assert np.array_equal(first["red"], expected)
    assert refiner.crops.wait(10)
    # the whole image (answered from) and, in the background, the crop under its own key
    assert engine.encodes == 2 and cache.computes == 2
    assert fetch(None, None) in {k for k, _ in cache.store}
    segments = len(engine.segments)
    again = masks(refiner.answer(TASK, controls, context, fetch))  # now from the crop's features
    assert np.array_equal(again["red"], expected)
    assert engine.encodes == 2 and len(engine.segments) == segments + 1  # no encode, one crop segment
    refiner.answer(TASK, controls, {"result": [rect("red", 0, 0, 40, 50)]}, fetch)
    assert refiner.crops.wait(10) and engine.encodes == 3  # another crop: another key


def test_the_crop_path_is_used_only_once_its_background_encode_finished(setup):
    refiner, controls, fetch, engine, cache = setup
    gate = __import__("threading").Event()
    real_encode = engine.encode

    def slow_encode(data):  # the FAKE engine's crop encode waits for the gate
        if data != fetch(None, None):
            assert gate.wait(10)
        return real_encode(data)

    engine.encode = slow_encode
    context = {"result": [rect("green", 10, 25, 50, 50)]}
    refiner.answer(TASK, controls, context, fetch)
    segments = len(engine.segments)
    refiner.answer(TASK, controls, context, fetch)  # crop still encoding: the whole image's map again
    assert len(engine.segments) == segments  # (the label map is cached: no segment at all)
    gate.set()
    assert refiner.crops.wait(10) and engine.encodes == 2


def test_keypoint_on_its_label_answers_the_connected_region(setup):
    refiner, controls, fetch, engine, _ = setup
    got = masks(refiner.answer(TASK, controls, {"result": [point("blue", 10 / W * 100, 10 / H * 100)]}, fetch))
    expected = np.zeros((H, W), bool)
    expected[5:15, 5:15] = True  # the square only, not the blue band it does not touch
    assert np.array_equal(got["blue"], expected)
    refiner.answer(TASK, controls, {"result": [point("blue", 50, 50)]}, fetch)
    assert engine.encodes == 1 and len(engine.segments) == 1  # the label map was reused


def test_keypoint_on_another_class_gives_that_region_the_label(setup):
    refiner, controls, fetch, _, _ = setup
    got = masks(refiner.answer(TASK, controls, {"result": [point("green", 10 / W * 100, 10 / H * 100)]}, fetch))
    expected = np.zeros((H, W), bool)
    expected[5:15, 5:15] = True  # the blue square, restricted to "green"
    assert list(got) == ["green"] and np.array_equal(got["green"], expected)


def test_negative_keypoint_removes_its_region(setup):
    refiner, controls, fetch, _, _ = setup
    context = {"result": [rect("red", 0, 0, 50, 100), point("red", 10 / W * 100, 10 / H * 100, positive=False)]}
    got = masks(refiner.answer(TASK, controls, context, fetch))
    expected = np.zeros((H, W), bool)
    expected[:, :20] = True
    expected[5:15, 5:15] = False  # the blue square: never red
    assert np.array_equal(got["red"], expected)
    context = {"result": [point("red", 1, 90), point("red", 1, 90, positive=False)]}
    assert refiner.answer(TASK, controls, context, fetch)["result"] == []
    context = {"result": [rect("red", 0, 0, 100, 100), rect("red", 0, 0, 100, 50, positive=False)]}
    got = masks(refiner.answer(TASK, controls, context, fetch))
    assert not got["red"][:20].any() and got["red"][20:, :20].all()


def test_rectangle_with_a_polygon_label_answers_polygons(setup):
    refiner, controls, fetch, _, _ = setup
    answer = refiner.answer(TASK, controls, {"result": [rect("outline", 0, 0, 100, 100)]}, fetch)
    assert answer["result"] and {r["type"] for r in answer["result"]} == {"polygonlabels"}
    assert {r["from_name"] for r in answer["result"]} == {"poly"}


@pytest.mark.parametrize("context, message", [
    ([], "must be an object"),
    ({"result": []}, "non-empty list"),
    ({"result": [{"type": "polygonlabels"}]}, r"type 'polygonlabels'; expected one of"),
    ({"result": [dict(rect("red", 0, 0, 5, 5), from_name="nope")]}, r"from_name 'nope' is not a smart tool"),
    ({"result": [rect("blue", 0, 0, 5, 5)]}, r"label 'blue' is not a label of 'box'"),
    ({"result": [rect("red", "a", 0, 5, 5)]}, r"value.x must be a number"),
    ({"result": [rect("red", 0, 0, 0, 5)]}, "the rectangle has no area"),
    ({"result": [dict(rect("red", 0, 0, 5, 5), value={"x": 1, "y": 1, "width": 1, "height": 1,
                                                     "rectanglelabels": []})]}, "exactly one label"),
])
def test_bad_contexts_are_named(context, message):
    with pytest.raises(ContextError, match=message):
        parse_context(context, parse_controls(CONFIG))


def test_a_box_outside_the_image_is_named(setup):
    refiner, controls, fetch, _, _ = setup
    with pytest.raises(ContextError, match="lies outside the image"):
        refiner.answer(TASK, controls, {"result": [rect("red", 120, 0, 5, 5)]}, fetch)


# ---------------------------------------------------------------------------------------------
# the /predict route (Flask test client, FAKE engine and FAKE Label Studio of backend_fixtures)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def client():
    import warnings

    from backend.config import Settings
    from backend.fetch.images import LabelStudioAuth
    from tests.backend_fixtures import LEGACY_TOKEN, FakeLabelStudio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from backend.http.app import create_app
    ls = FakeLabelStudio()
    ls.add_upload(TASK["data"]["image"], png_bytes(picture()))
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0)
    yield create_app(settings, Predictor(FakeEngine())).test_client()
    ls.close()
    LabelStudioAuth._access.clear()


def interactive_body(context) -> dict:
    """The shape of Label Studio 1.23.2's interactive ``/predict`` (ml/models.py interactive_annotating:
    one task, ``params.context``)."""
    return {"tasks": [TASK], "project": "1.1764547200", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": context}}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_predict_route_answers_one_prediction_with_only_the_new_regions(client):
    resp = client.post("/predict", json=interactive_body({"result": [rect("green", 10, 25, 50, 50)]}))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    results = resp.get_json()["results"]
    assert len(results) == 1 and [r["value"]["brushlabels"] for r in results[0]["result"]] == [["green"]]
    plain = client.post("/predict", json=interactive_body({}))  # no smart regions: a normal prediction
    assert {r["from_name"] for r in plain.get_json()["results"][0]["result"]} == {"tag", "poly"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_predict_route_bad_context_is_a_400_naming_it(client):
    resp = client.post("/predict", json=interactive_body({"result": [rect("blue", 0, 0, 5, 5)]}))
    assert resp.status_code == 400
    assert "ContextError: context.result[0]: label 'blue' is not a label of 'box'" in resp.get_json()["detail"]
    body = interactive_body({"result": [rect("red", 0, 0, 5, 5)]})
    body["tasks"] = [TASK, TASK]
    assert client.post("/predict", json=body).status_code == 400


def test_the_image_is_decoded_once_for_later_smart_regions(setup, monkeypatch):
    import backend.controls.smart_maps as smart_maps

    refiner, controls, fetch, _, _ = setup
    decodes = []
    real = smart_maps.load_image
    monkeypatch.setattr(smart_maps, "load_image", lambda data: decodes.append(1) or real(data))
    refiner.answer(TASK, controls, {"result": [rect("green", 10, 25, 50, 50)]}, fetch)
    refiner.answer(TASK, controls, {"result": [point("blue", 50, 50)]}, fetch)
    assert len(decodes) == 1
