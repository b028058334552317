"""PolygonLabels adapter: golden files on hand-made label maps, IoU of the rasterised polygons, keyhole
holes, payload size vs brush RLE, and the label-config parse of PolygonLabels / smart tools.

Golden files: ``tests/data/polygons/<case>.json`` (the regions without their random ids). Regenerate
with ``CASS_UPDATE_GOLDEN=1 python -m pytest tests/test_controls_polygon.py`` after a deliberate change.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from backend.controls import parse_controls, regions_for
from backend.controls.polygon import component_polygons, keyhole, rasterize
from backend.controls.labels import LabelConfigError
from backend.controls.brush_rle import brush_regions
from backend.controls.region_options import MinArea
from cass.features import Segmentation

GOLDEN = Path(__file__).resolve().parent / "data" / "polygons"
#: IoU of the rasterised polygons vs the class mask, per tolerance (px), for every case below.
MIN_IOU = {0.0: 0.999, 1.0: 0.95}

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image" cass_tolerance="{tol}" cass_min_area="1">
    <Label value="a"/><Label value="b"/>
  </PolygonLabels>
</View>"""


def _ring() -> np.ndarray:
    yy, xx = np.mgrid[:64, :80]
    d = np.hypot(yy - 31.5, xx - 39.5)
    labels = np.full((64, 80), -1, np.int32)
    labels[(d < 28) & (d >= 14)] = 0  # a ring of "a"
    labels[d < 8] = 1  # a disc of "b" inside its hole (and a gap of nothing between)
    return labels


def _touching() -> np.ndarray:
    labels = np.full((40, 60), -1, np.int32)
    labels[5:30, 5:30] = 0
    labels[10:35, 30:55] = 1  # shares the edge x = 29/30 with "a"
    return labels


def _line() -> np.ndarray:
    """One-pixel lines: no polygon (a pixel-centre polygon of a line has 2 points and no area, issue 22)."""
    labels = np.full((20, 30), -1, np.int32)
    labels[10, 3:27] = 0  # horizontal, one pixel high
    labels[np.arange(2, 18), np.arange(5, 21)] = 1  # diagonal, one pixel wide
    return labels


def _filling() -> np.ndarray:
    return np.zeros((30, 50), np.int32)


CASES = {"ring": _ring, "touching_blobs": _touching, "one_pixel_line": _line, "image_filling": _filling}


def segmentation(labels: np.ndarray) -> Segmentation:
    counts = np.array([(labels == c).sum() for c in range(2)], np.int64)
    return Segmentation(labels=labels, scores=np.array([0.75, 0.5], np.float32), pixel_counts=counts,
                        class_names=["a", "b"])


def target(tol: float = 1.0):
    return parse_controls(CONFIG.format(tol=tol)).outputs[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def rasterised(regions, name, h, w) -> np.ndarray:
    out = np.zeros((h, w), bool)
    for r in regions:
        if r["value"]["polygonlabels"] == [name]:
            out |= rasterize(r["value"]["points"], w, h)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_file(case):
    labels = CASES[case]()
    regions, _, _ = regions_for(segmentation(labels), target(1.0))
    got = [{k: v for k, v in r.items() if k != "id"} for r in regions]
    path = GOLDEN / f"{case}.json"
    if os.environ.get("CASS_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(path.read_text())


@pytest.mark.parametrize("tol", sorted(MIN_IOU))
@pytest.mark.parametrize("case", sorted(CASES))
def test_rasterised_polygons_give_back_the_map(case, tol):
    labels = CASES[case]()
    h, w = labels.shape
    regions, score_sum, pixels = regions_for(segmentation(labels), target(tol))
    for r in regions:
        pts = np.array(r["value"]["points"])
        assert r["type"] == "polygonlabels" and r["value"]["closed"] is True
        assert (pts >= 0).all() and (pts <= 100).all() and len(pts) >= 2
        assert r["original_width"] == w and r["original_height"] == h
    if case == "one_pixel_line":
        assert regions == [] and pixels == 0 and score_sum == 0
        return
    for index, name in enumerate(["a", "b"]):
        mask = labels == index
        if mask.any():
            assert iou(rasterised(regions, name, h, w), mask) >= MIN_IOU[tol], (case, name)
    assert pixels == int((labels >= 0).sum())
    assert score_sum == pytest.approx(0.75 * (labels == 0).sum() + 0.5 * (labels == 1).sum(), rel=1e-5)


def test_ring_is_one_region_whose_hole_stays_empty():
    labels = _ring()
    regions, _, _ = regions_for(segmentation(labels), target(1.0))
    rings = [r for r in regions if r["value"]["polygonlabels"] == ["a"]]
    assert len(rings) == 1  # the hole is a keyhole seam of the one polygon, not its own region
    filled = rasterize(rings[0]["value"]["points"], 80, 64)
    assert not filled[31, 39] and not filled[31, 46]  # the hole's centre, and the gap around "b"
    assert filled[31, 39 + 20]


def test_keyhole_splices_the_hole_at_the_closest_vertices():
    outer = np.array([[0, 0], [0, 10], [10, 10], [10, 0]])
    hole = np.array([[3, 3], [6, 3], [6, 6], [3, 6]])
    out = keyhole(outer, hole)
    assert len(out) == len(outer) + len(hole) + 2
    assert out[0].tolist() == [0, 0] and out[1].tolist() == [3, 3] and out[5].tolist() == [3, 3]


def test_min_area_drops_small_components_and_bad_input_is_named():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:18, 10:18] = True  # 64 px
    assert [n for _, n in component_polygons(mask, 1.0, 16)] == [64]
    assert component_polygons(np.zeros((4, 4), bool)) == []
    with pytest.raises(ValueError, match="2-D"):
        component_polygons(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        component_polygons(mask, -1.0)


def test_polygon_payload_is_smaller_than_brush_rle_for_blobs():
    labels = np.full((1080, 1920), -1, np.int32)
    yy, xx = np.mgrid[:1080, :1920]
    labels[np.hypot(yy - 500, xx - 700) < 300] = 0
    labels[(yy > 600) & (xx > 1100)] = 1
    seg = segmentation(labels)
    poly, _, _ = regions_for(seg, target(1.0))
    brush, _, _ = brush_regions(seg, parse_controls(CONFIG.replace("PolygonLabels", "BrushLabels")
                                                    .format(tol=1)).outputs[0])
    assert len(json.dumps(poly)) * 10 < len(json.dumps(brush))


def test_parse_polygon_and_brush_and_smart_tools():
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
      <PolygonLabels name="poly" toName="image" cass_tolerance="2.5"><Label value="cat"/></PolygonLabels>
      <RectangleLabels name="box" toName="image" smart="true"><Label value="cat"/></RectangleLabels>
      <KeyPointLabels name="kp" toName="image" smart="true"><Label value="dog"/></KeyPointLabels>
      <RectangleLabels name="plain" toName="image"><Label value="cat"/></RectangleLabels>
    </View>"""
    controls = parse_controls(config)
    assert [(t.from_name, getattr(t, "kind", "brush")) for t in controls.outputs] == \
        [("brush", "brush"), ("poly", "polygon")]
    assert controls.outputs[1].tolerance_px == 2.5 and controls.outputs[1].min_area == MinArea(16.0)
    assert [(s.from_name, s.kind, s.labels) for s in controls.smart] == \
        [("box", "rectangle", ("cat",)), ("kp", "keypoint", ("dog",))]
    assert controls.output_for("image", "dog").from_name == "brush"


@pytest.mark.parametrize("config, message", [
    ('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i" cass_tolerance="x">'
     '<Label value="a"/></PolygonLabels></View>', r"<PolygonLabels name='p'> cass_tolerance = 'x' is not a number"),
    ('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i" cass_min_area="-2">'
     '<Label value="a"/></PolygonLabels></View>', r"cass_min_area = '-2' must be >= 0"),
    ('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i"></PolygonLabels></View>',
     r"<PolygonLabels name='p'> has no <Label> children"),
    ('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i"><Label value="a"/>'
     '</PolygonLabels><RectangleLabels name="r" toName="i" smart="true"><Label value="zebra"/>'
     '</RectangleLabels></View>', r"label\(s\) 'zebra' are not labels of a <BrushLabels>/<PolygonLabels>"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" smart="true">'
     '<Label value="a"/></RectangleLabels></View>', r"no <BrushLabels> control .* and no <PolygonLabels>"),
])
def test_bad_polygon_configs_are_named(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_controls(config)
