"""End to end: the project memory against a real Label Studio 1.23.2 and this backend (tiny weights).

A project with ``cass_memory="true"`` on its BrushLabels: retrieve predictions for two tasks, submit a
corrected annotation for the first through the API; Label Studio's ANNOTATION_CREATED webhook stores
its memory entry; the backend's ``/setup`` reports ``<version>-mem.<digest>``; retrieving predictions
for the second task stores a new prediction with that version and other masks; deleting the
annotation brings the plain version and the first masks back.

Run: ``python -m pytest -m e2e tests/e2e/test_memory.py -s``
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from backend.controls.brush_rle import mask_to_rle
from tests.e2e.conftest import REPO, require_tiny_weights, running_backend, stop, tail
from tests.e2e.label_studio_api import wait_for
from tests.e2e.test_label_studio import LS, encoded

pytestmark = pytest.mark.e2e

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image" cass_memory="true"><Label value="cat"/><Label value="dog"/>
<Label value="grass"/></BrushLabels></View>"""
H, W = 48, 64


def picture(shift: int) -> bytes:
    img = Image.new("RGB", (W, H), (120, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 32, W, H), fill=(40, 150, 50))
    d.ellipse((10 + shift, 6, 38 + shift, 34), fill=(200, 120, 40))
    return encoded(img, "PNG")


@pytest.fixture
def memory_backend(label_studio, personal_access_token, tmp_path):
    require_tiny_weights()
    preset = json.loads((REPO / "cass" / "presets" / "default.json").read_text())
    preset["name"] = "e2e-fast"
    preset["image"].update({"short_side": 224, "slide_crop": 224, "slide_stride": 224})
    (tmp_path / "fast.json").write_text(json.dumps(preset))
    service = running_backend(tmp_path, label_studio.url, personal_access_token,
                              {"CASS_PRESET": str(tmp_path / "fast.json"), "CASS_WARMUP": "false"})
    try:
        yield service
    finally:
        stop(service.proc)


def test_a_corrected_annotation_changes_the_version_and_other_predictions_and_deleting_reverts(
        label_studio, memory_backend):
    ls = LS(label_studio)
    backend = memory_backend.url
    pid = ls("POST", "/api/projects", json={"title": "CASS memory", "label_config": CONFIG})["id"]
    ls("POST", f"/api/projects/{pid}/import", files={"a.png": ("a.png", picture(0), "image/png"),
                                                     "b.png": ("b.png", picture(18), "image/png")})
    tasks = sorted(ls("GET", "/api/tasks", params={"project": pid, "page_size": 10})["tasks"], key=lambda t: t["id"])
    a, b = tasks
    ml = ls("POST", "/api/ml", json={"url": backend, "project": pid, "title": "CASS"})
    assert ml["readable_state"] == "Connected", ml

    def setup_version() -> str:
        body = {"project": str(pid), "schema": CONFIG, "hostname": label_studio.url, "access_token": ""}
        return requests.post(f"{backend}/setup", json=body, timeout=30).json()["model_version"]

    def retrieve(task_id: int) -> dict:
        ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
           json={"selectedItems": {"all": False, "included": [task_id]}})
        return ls("GET", "/api/predictions", params={"task": task_id})

    def masks(prediction: dict) -> list:
        return sorted((r["value"]["brushlabels"][0], tuple(r["value"]["rle"])) for r in prediction["result"])

    plain = setup_version()
    assert "-mem." not in plain
    retrieve(a["id"])
    (before,) = retrieve(b["id"])
    assert before["model_version"] == plain

    # a corrected annotation of task a: dog where the disc is, grass below
    dog = np.zeros((H, W), bool)
    dog[6:34, 10:38] = True
    grass = np.zeros((H, W), bool)
    grass[32:, :] = True
    grass &= ~dog
    result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W,
               "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(m), "brushlabels": [label]}}
              for label, m in (("dog", dog), ("grass", grass))]
    ann = ls("POST", f"/api/tasks/{a['id']}/annotations", json={"result": result, "task": a["id"]})
    version = wait_for(lambda: (v := setup_version()) != plain and v, 90,
                       f"ANNOTATION_CREATED in the memory\n{tail(memory_backend.log)}")
    assert version.startswith(plain + "-mem.")

    stored = retrieve(b["id"])
    new = [p for p in stored if p["model_version"] == version]
    assert new, f"no prediction with {version} stored for task {b['id']}: {[p['model_version'] for p in stored]}"
    assert masks(new[-1]) != masks(before), "the memory should change the other task's masks"

    ls("DELETE", f"/api/annotations/{ann['id']}", expect=(200, 204))
    wait_for(lambda: setup_version() == plain, 90, f"ANNOTATIONS_DELETED in the memory\n{tail(memory_backend.log)}")
    # Label Studio keeps one prediction per task and model version (the plain one is `before`); the
    # backend itself answers the plain version and the first masks again
    again = retrieve(b["id"])
    assert any(p["model_version"] == plain and masks(p) == masks(before) for p in again)
    task_b = ls("GET", f"/api/tasks/{b['id']}")
    direct = requests.post(f"{backend}/predict", json={"tasks": [task_b], "project": str(pid), "label_config": CONFIG,
                                                       "params": {}}, timeout=300).json()["results"][0]
    latest = {"model_version": direct["model_version"], "result": direct["result"]}
    assert latest["model_version"] == plain and masks(latest) == masks(before)
    print(f"e2e memory: project {pid}; plain {plain}; after the annotation {version}; task {b['id']} "
          f"re-predicted with it ({len(new[-1]['result'])} regions, other masks), deleted -> {latest['model_version']}")
