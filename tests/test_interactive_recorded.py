"""Replays the interactive ``/predict`` bodies Label Studio 1.23.2's editor sent when an annotator drew
a smart rectangle and a smart keypoint (recorded by ``scripts/ui_check.py --project polygon`` through a
recording proxy, stored in ``tests/data/label_studio_1.23.2/predict_interactive_*.json``; no tokens in
them) through the backend's ``/predict`` route, on the FAKE engine of tests/backend_fixtures.py
(colour = class) and its FAKE Label Studio serving the task's image.

The answer must be what Label Studio's interactive mode takes: one prediction holding only the new
regions, on the project's PolygonLabels control (``from_name`` poly, ``to_name`` image, ``type``
polygonlabels), with the smart region's label, points in percent within 0-100.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.controls.polygon import rasterize

DATA = Path(__file__).parent / "data" / "label_studio_1.23.2"
W, H = 320, 240


def scene() -> bytes:
    """The picture of the recording (scripts/ui_check.py's scene): sky, ground, an ellipse. On the
    FAKE engine (argmax of R, G, B over cat/dog/grass): ellipse = cat, ground = dog, sky = grass."""
    img = Image.new("RGB", (W, H), (120, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 150, 320, 240), fill=(40, 150, 50))
    d.ellipse((110, 60, 210, 180), fill=(230, 140, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def recorded(name: str) -> dict:
    return json.loads((DATA / f"predict_interactive_{name}.json").read_text())


@pytest.fixture
def client():
    from backend.config import Settings
    from backend.fetch.images import LabelStudioAuth
    from backend.predict.predictor import Predictor
    from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from backend.http.app import create_app
    ls = FakeLabelStudio()
    for name in ("rectangle", "keypoint", "negative_keypoint"):
        ls.add_upload(recorded(name)["tasks"][0]["data"]["image"], scene())
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0)
    yield create_app(settings, Predictor(FakeEngine())).test_client()
    ls.close()
    LabelStudioAuth._access.clear()


def test_the_recordings_are_what_the_editor_sent():
    for name, kind in (("rectangle", "rectanglelabels"), ("keypoint", "keypointlabels")):
        body = recorded(name)
        assert len(body["tasks"]) == 1 and "access_token" not in json.dumps(body)
        (item,) = body["params"]["context"]["result"]  # only the newest smart region, not all so far
        assert item["type"] == kind and item["to_name"] == "image"
        assert (item["original_width"], item["original_height"]) == (W, H)


def polygons(resp, label: str) -> np.ndarray:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (prediction,) = resp.get_json()["results"]
    mask = np.zeros((H, W), bool)
    assert prediction["result"], "no region answered"
    for region in prediction["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == ("poly", "image", "polygonlabels")
        assert region["value"]["polygonlabels"] == [label]
        assert (region["original_width"], region["original_height"]) == (W, H)
        points = np.array(region["value"]["points"], float)
        assert points.ndim == 2 and points.shape[1] == 2 and ((points >= 0) & (points <= 100)).all()
        mask |= rasterize(points, W, H)
    return mask


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_recorded_smart_rectangle_answers_its_label_inside_the_box(client):
    body = recorded("rectangle")
    value = body["params"]["context"]["result"][0]["value"]
    mask = polygons(client.post("/predict", json=body), value["rectanglelabels"][0])
    x0, x1 = int(value["x"] / 100 * W), int(np.ceil((value["x"] + value["width"]) / 100 * W))
    y0, y1 = int(value["y"] / 100 * H), int(np.ceil((value["y"] + value["height"]) / 100 * H))
    outside = mask.copy()
    outside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = False  # polygons run through pixel centres
    assert not outside.any() and mask[y0:y1, x0:x1].mean() > 0.8  # the box lies in the ellipse (cat)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_recorded_smart_keypoint_answers_the_region_under_it(client):
    body = recorded("keypoint")
    value = body["params"]["context"]["result"][0]["value"]
    mask = polygons(client.post("/predict", json=body), value["keypointlabels"][0])
    x, y = int(value["x"] / 100 * W), int(value["y"] / 100 * H)
    assert mask[y, x]  # the sky under the point, given the point's label
    assert not mask[200:, :].any() and not mask[110:130, 150:170].any()  # not the ground, not the ellipse


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_recorded_negative_keypoint_comes_with_the_positive_one_and_removes_nothing_outside(client):
    body = recorded("negative_keypoint")
    positive, negative = body["params"]["context"]["result"]  # the editor re-sent the first keypoint
    assert positive["is_positive"] is True and negative["is_positive"] is False
    mask = polygons(client.post("/predict", json=body), "dog")
    at = lambda v: (int(v["y"] / 100 * H), int(v["x"] / 100 * W))  # noqa: E731
    assert mask[at(positive["value"])] and not mask[at(negative["value"])]  # the sky; the ground stays out
    assert not mask[200:, :].any()
