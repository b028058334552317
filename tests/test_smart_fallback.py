"""A smart rectangle always answers (issue 22): when its label wins nowhere in the box, the box's
most label-like part -- the label's probability relative to the best other class, thresholded inside
the box (Otsu) -- with a lower score and the fallback said in the region (``meta.text`` shown by
Label Studio's region details, and ``"cass": {"fallback": "relative"}``)."""
from __future__ import annotations

import numpy as np

from backend.controls import parse_controls
from backend.controls.brush_rle import rle_to_mask
from backend.controls.smart import Refiner
from backend.predict.predictor import Predictor
from cass.features import Segmentation
from tests.backend_fixtures import FakeEngine, png_bytes

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="red"/><Label value="green"/><Label value="blue"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="red"/><Label value="green"/>
  </RectangleLabels>
</View>"""
H, W = 40, 60


class ProbEngine(FakeEngine):
    """The FAKE engine with per-class probabilities ``channel / sum of channels`` (argmax as before)."""

    def segment(self, features, vocabulary, *, params=None, return_probs=False):
        seg = super().segment(features, vocabulary, params=params)
        if not return_probs:
            return seg
        rgb = features.rgb.astype(np.float32) + 1.0
        probs = np.moveaxis(rgb / rgb.sum(axis=2, keepdims=True), 2, 0)[:len(vocabulary)]
        return Segmentation(seg.labels, seg.scores, seg.pixel_counts, seg.class_names, probs=probs.astype(np.float32))


def picture() -> np.ndarray:
    """All red; a greenish-red square (still red: R > G) at rows 10..20, columns 10..20."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, 0] = 230
    rgb[10:20, 10:20, 1] = 170
    return rgb


def rect(label, x, y, w, h):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "is_positive": True,
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


TASK = {"id": 1, "data": {"image": "/data/upload/1/x.png"}}


def answer(label, box=(5, 10, 50, 50)):
    engine = ProbEngine()
    refiner = Refiner(Predictor(engine))
    image = png_bytes(picture())
    return refiner.answer(TASK, parse_controls(CONFIG), {"result": [rect(label, *box)]}, lambda url, tid: image)


def test_a_label_that_wins_nowhere_gets_the_box_s_most_label_like_region():
    # box: columns 3..33, rows 4..24: all red, the greenish square inside it
    out = answer("green")
    assert len(out["result"]) == 1, out
    (region,) = out["result"]
    assert region["value"]["brushlabels"] == ["green"]
    mask = rle_to_mask(region["value"]["rle"], H, W)
    expected = np.zeros((H, W), bool)
    expected[10:20, 10:20] = True
    assert np.array_equal(mask, expected)
    assert region["cass"] == {"fallback": "relative"}
    assert "wins nowhere" in region["meta"]["text"][0]
    assert 0 < region["score"] < 0.5  # the label's own probability there: lower than a winner's


def test_a_label_that_wins_keeps_the_plain_answer():
    out = answer("red")
    (region,) = out["result"]
    assert "cass" not in region and "meta" not in region
    assert rle_to_mask(region["value"]["rle"], H, W).sum() > 0
