"""End to end: a real Label Studio 1.23.2 project with BrushLabels + PolygonLabels + a smart
RectangleLabels, this backend on the tiny weights. Every stored polygon is valid (points within 0-100,
labels of the config) and, per label, the rasterised polygons match the brush mask of the same
prediction (IoU >= AREA_IOU); Label Studio's interactive-annotating API answers a smart rectangle with
only the new region.

Run: ``python -m pytest -m e2e tests/e2e/test_polygons.py -s``
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.controls.polygon import rasterize
from backend.controls.brush_rle import rle_to_mask
from tests.e2e.test_label_studio import LS, encoded

pytestmark = pytest.mark.e2e

#: per label: IoU of the union of its rasterised polygons (tolerance 1 px, no minimum area) with the
#: brush mask of the same prediction. The polygons run through boundary-pixel centres and are
#: simplified by 1 px, so small, ragged regions of the random tiny weights lose some pixels.
AREA_IOU = 0.8
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="cat"/><Label value="dog"/><Label value="grass"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image" cass_tolerance="1" cass_min_area="0">
    <Label value="cat"/><Label value="dog"/><Label value="grass"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="cat"/></RectangleLabels>
</View>"""
LABELS = {"cat", "dog", "grass"}


def picture(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (96, 64), (120, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 40, 96, 64), fill=(40, 150, 50))
    d.ellipse((30, 10, 70, 50), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    d.ellipse((42, 22, 58, 38), fill=(20, 20, 20))  # something inside: holes are likely
    return encoded(img, "PNG")


def test_polygon_project(label_studio, backend):
    ls = LS(label_studio)
    pid = ls("POST", "/api/projects", json={"title": "CASS polygons", "label_config": CONFIG})["id"]
    files = {f"p{i}.png": (f"p{i}.png", picture(i), "image/png") for i in range(2)}
    ls("POST", f"/api/projects/{pid}/import", files=files)
    tasks = ls("GET", "/api/tasks", params={"project": pid, "page_size": 100})["tasks"]
    assert len(tasks) == 2
    ml = ls("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "CASS", "is_interactive": True})
    assert ml["readable_state"] == "Connected", ml
    ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
       json={"selectedItems": {"all": False, "included": [t["id"] for t in tasks]}})
    for task in tasks:
        (prediction,) = ls("GET", "/api/predictions", params={"task": task["id"]})
        brush = {}
        polygons = {}
        for region in prediction["result"]:
            h, w = region["original_height"], region["original_width"]
            assert (h, w) == (64, 96)
            if region["type"] == "brushlabels":
                (label,) = region["value"]["brushlabels"]
                brush[label] = rle_to_mask(region["value"]["rle"], h, w)
            else:
                assert (region["type"], region["from_name"], region["to_name"]) == ("polygonlabels", "poly", "image")
                points = np.array(region["value"]["points"], dtype=float)
                assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 2
                assert (points >= 0).all() and (points <= 100).all()
                (label,) = region["value"]["polygonlabels"]
                assert label in LABELS and 0 < region["score"] <= 1
                polygons.setdefault(label, np.zeros((h, w), bool))
                polygons[label] |= rasterize(points, w, h)
        assert brush and set(brush) == set(polygons), (sorted(brush), sorted(polygons))
        for label, mask in brush.items():
            iou = (mask & polygons[label]).sum() / (mask | polygons[label]).sum()
            print(f"task {task['id']} {label}: brush {int(mask.sum())} px, polygons "
                  f"{int(polygons[label].sum())} px, IoU {iou:.3f}")
            assert iou >= AREA_IOU, (label, iou)

    # a smart rectangle through Label Studio's interactive-annotating API (what the editor calls)
    context = {"result": [{"original_width": 96, "original_height": 64, "image_rotation": 0,
                           "value": {"x": 25, "y": 10, "width": 50, "height": 70, "rotation": 0,
                                     "rectanglelabels": ["cat"]},
                           "is_positive": True, "id": "smart1", "from_name": "box", "to_name": "image",
                           "type": "rectanglelabels", "origin": "manual"}]}
    answer = ls("POST", f"/api/ml/{ml['id']}/interactive-annotating", json={"task": tasks[0]["id"],
                                                                            "context": context})
    data = answer["data"]
    assert "errors" not in data, data
    for region in data["result"]:  # only the new "cat" region (or none if the tiny weights give none)
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"]
        mask = rle_to_mask(region["value"]["rle"], 64, 96)
        assert not mask[:, :24].any() and not mask[:, 73:].any()  # inside the rectangle only
