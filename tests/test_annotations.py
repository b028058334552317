"""backend.corrections.annotations: Label Studio annotation results -> per-label bool masks at the original size."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.corrections.annotations import AnnotationError, annotation_masks, result_size
from backend.controls import parse_controls
from backend.controls.polygon import to_percent
from backend.controls.brush_rle import mask_to_rle

LS = Path(__file__).resolve().parent / "data" / "label_studio_1.23.2"
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
<PolygonLabels name="poly" toName="image"><Label value="tree"/></PolygonLabels>
<Choices name="ok" toName="image"><Choice value="yes"/></Choices>
</View>"""


@pytest.fixture(scope="module")
def controls():
    return parse_controls(CONFIG)


def brush(mask, label="cat", rid="r1", from_name="tag"):
    h, w = mask.shape
    return {"id": rid, "from_name": from_name, "to_name": "image", "type": "brushlabels",
            "original_width": w, "original_height": h,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def polygon(points_px, w, h, label="tree", rid="p1"):
    return {"id": rid, "from_name": "poly", "to_name": "image", "type": "polygonlabels",
            "original_width": w, "original_height": h,
            "value": {"points": to_percent(np.asarray(points_px), w, h), "polygonlabels": [label]}}


def test_brush_rle_round_trips_at_the_original_size(controls):
    rng = np.random.default_rng(0)
    cat = rng.random((37, 53)) > 0.5
    masks = annotation_masks([brush(cat)], controls)
    assert set(masks) == {"cat"}
    assert masks["cat"].dtype == bool and masks["cat"].shape == (37, 53)
    assert np.array_equal(masks["cat"], cat)


def test_regions_of_one_label_are_or_ed_and_polygons_rasterised(controls):
    a = np.zeros((20, 30), bool)
    a[:5] = True
    b = np.zeros((20, 30), bool)
    b[:, :4] = True
    square = [[10, 10], [19, 10], [19, 17], [10, 17]]  # pixel centres, boundary included
    masks = annotation_masks([brush(a, rid="a"), brush(b, rid="b"), polygon(square, 30, 20),
                              {"id": "c", "from_name": "ok", "to_name": "image", "type": "choices",
                               "value": {"choices": ["yes"]}}], controls)
    assert set(masks) == {"cat", "tree"}
    assert np.array_equal(masks["cat"], a | b)
    expected = np.zeros((20, 30), bool)
    expected[10:18, 10:20] = True
    assert np.array_equal(masks["tree"], expected)
    assert result_size([brush(a)]) == (20, 30)


def test_empty_result_gives_no_masks(controls):
    assert annotation_masks([], controls) == {}
    assert result_size([]) is None


@pytest.mark.parametrize("change, message", [
    (lambda r: r["value"].update(brushlabels=["horse"]), "label(s) 'horse' are not labels of control 'tag'"),
    (lambda r: r.update(from_name="other"), "from_name 'other', which is not an output control"),
    (lambda r: r["value"].update(rle=[0, 0, 0, 32, 7, 0]), "value.rle: the RLE declares 32 values, expected 6x5x4 = 120"),
    (lambda r: r["value"].update(rle="abc"), "value.rle must be a non-empty list of integers"),
    (lambda r: r.update(original_width=0), "original_width must be a positive whole number"),
    (lambda r: r.update(type="polygonlabels"), "type 'polygonlabels' but control 'tag' makes 'brushlabels'"),
    (lambda r: r.pop("value"), "has no 'value' object"),
    (lambda r: r["value"].update(format="png"), "only 'rle' is supported"),
])
def test_malformed_regions_name_the_region(controls, change, message):
    region = brush(np.ones((6, 5), bool), rid="bad1")
    good = brush(np.ones((6, 5), bool), rid="good")
    change(region)
    with pytest.raises(AnnotationError) as err:
        annotation_masks([good, region], controls)
    assert "result[1] (id 'bad1')" in str(err.value) and message in str(err.value)


def test_bad_polygon_points_and_disagreeing_sizes(controls):
    bad = polygon([[1, 1], [2, 2], [3, 1]], 10, 10)
    bad["value"]["points"] = [[1, 2], [3]]
    with pytest.raises(AnnotationError, match=r"result\[0\] \(id 'p1'\): value.points must be a list"):
        annotation_masks([bad], controls)
    with pytest.raises(AnnotationError, match=r"result\[1\] .* is 8x10 .* but result\[0\] .* is 6x5"):
        annotation_masks([brush(np.ones((6, 5), bool)), brush(np.ones((8, 10), bool), rid="x")], controls)
    with pytest.raises(AnnotationError, match="must be a list of regions"):
        annotation_masks({"cat": 1}, controls)


def test_recorded_label_studio_payload_with_an_invalid_rle_is_refused(controls):
    """The recorded ANNOTATION_CREATED of the first session carries an RLE a test made up; Label Studio
    stored it unchecked. It must fail clearly, not decode to garbage."""
    data = json.loads((LS / "webhook_annotation_created.json").read_text())
    project_controls = parse_controls(data["project"]["label_config"])
    with pytest.raises(AnnotationError, match=r"result\[0\]: value.rle does not decode to a 2x4 brush mask"):
        annotation_masks(data["annotation"]["result"], project_controls)
