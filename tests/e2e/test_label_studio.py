"""End to end: a real Label Studio 1.23.2, this backend (tiny weights), predictions stored in LS.

Run: ``scripts/install_label_studio.sh && python -m pytest -m e2e tests/e2e -s``
"""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from backend.regions import rle_to_mask

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" predicted_values="kitten" background="#f80"/>
    <Label value="dog"/>
    <Label value="grass" predicted_values="lawn, meadow"/>
  </BrushLabels>
</View>"""
LABELS = {"cat", "dog", "grass"}


def encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def test_images():
    """name -> (bytes, displayed (height, width)): RGB, EXIF-rotated JPEG, grayscale."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    rotated = Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 32 wide, 48 tall
    gray = Image.fromarray(np.tile(np.linspace(0, 255, 33, dtype=np.uint8), (21, 1)))
    return {
        "noise.png": (encoded(rgb, "PNG"), (30, 40)),
        "rotated.jpg": (encoded(rotated, "JPEG", exif=exif.tobytes()), (48, 32)),
        "gray.png": (encoded(gray, "PNG"), (21, 33)),
    }


test_images.__test__ = False  # a helper, not a test


class LS:
    def __init__(self, service):
        self.url = service.url
        self.session = requests.Session()
        self.session.headers.update(service.headers)

    def __call__(self, method: str, path: str, expect=(200, 201), **kwargs):
        resp = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert resp.status_code in expect, f"{method} {path} -> {resp.status_code}: {resp.text[:500]}"
        return resp.json() if resp.content else None


def test_predictions_are_stored_for_every_good_task_and_the_broken_ones_are_skipped(label_studio, backend):
    ls = LS(label_studio)
    images = test_images()
    project = ls("POST", "/api/projects", json={"title": "CASS e2e", "label_config": CONFIG})
    pid = project["id"]

    # uploads (two good images and one that is not an image at all)
    # (one form field per file: Label Studio reads one file per field name)
    files = {name: (name, data, "image/png" if name.endswith(".png") else "image/jpeg")
             for name, (data, _) in images.items() if name != "gray.png"}
    files["broken.png"] = ("broken.png", b"\x89PNG\r\n\x1a\n this is not really a png", "image/png")
    ls("POST", f"/api/projects/{pid}/import", files=files)
    # a local file served by Label Studio, and an upload URL that does not exist
    local_dir = label_studio.files / "local"
    local_dir.mkdir(exist_ok=True)
    (local_dir / "gray.png").write_bytes(images["gray.png"][0])
    ls("POST", "/api/storages/localfiles", json={"project": pid, "path": str(local_dir), "title": "local",
                                                 "use_blob_urls": True})
    ls("POST", f"/api/projects/{pid}/import", json=[{"image": "/data/local-files/?d=local/gray.png"},
                                                    {"image": f"/data/upload/{pid}/missing.png"}])
    tasks = ls("GET", "/api/tasks", params={"project": pid, "page_size": 100})["tasks"]
    by_name = {}
    for task in tasks:
        ref = task["data"]["image"]
        name = next((n for n in ("noise.png", "rotated.jpg", "gray.png", "broken.png", "missing.png")
                     if ref.endswith(n)), None)
        assert name, ref
        by_name[name] = task["id"]
    assert len(by_name) == 5

    # connect the backend: Label Studio calls /health and /setup
    ml = ls("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "CASS"})
    assert ml["readable_state"] == "Connected", ml
    version = requests.post(f"{backend.url}/setup", json={"project": f"{pid}.0", "schema": CONFIG},
                            timeout=10).json()["model_version"]
    assert ml["model_version"] == version and version.startswith("cass-default-clip.")

    # retrieve predictions for every task through the data manager action (one /predict call)
    ids = sorted(by_name.values())
    t0 = time.monotonic()
    action = ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": False, "included": ids}})
    elapsed = time.monotonic() - t0

    stored = {}
    for name, task_id in by_name.items():
        stored[name] = ls("GET", "/api/predictions", params={"task": task_id})
    good = ("noise.png", "rotated.jpg", "gray.png")
    for name in good:
        assert len(stored[name]) == 1, (name, stored[name], action)
        (prediction,) = stored[name]
        assert prediction["model_version"] == version
        assert 0 < prediction["score"] <= 1
        height, width = images[name][1]
        assert prediction["result"], f"{name}: no region at all"
        union = np.zeros((height, width), bool)
        for region in prediction["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
            assert (region["original_height"], region["original_width"]) == (height, width), name
            (label,) = region["value"]["brushlabels"]
            assert label in LABELS
            mask = rle_to_mask(region["value"]["rle"], height, width)  # decodes to the image size
            assert mask.any() and not (mask & union).any()
            union |= mask
            assert 0 < region["score"] <= 1
        assert union.all(), f"{name}: without a threshold every pixel gets a label"
    assert stored["broken.png"] == [] and stored["missing.png"] == []

    # the version is stable: retrieving again (and after an annotation webhook) adds no duplicates
    first = stored["noise.png"][0]
    ls("POST", f"/api/tasks/{by_name['noise.png']}/annotations",
       json={"result": [{**r, "id": f"a{i}"} for i, r in enumerate(first["result"])]})
    ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
       json={"selectedItems": {"all": False, "included": ids}})
    for name in good:
        predictions = ls("GET", "/api/predictions", params={"task": by_name[name]})
        assert [p["model_version"] for p in predictions] == [version], name
    assert ls("GET", f"/api/ml/{ml['id']}")["model_version"] == version

    log = backend.log.read_text(errors="replace")
    assert f"task {by_name['broken.png']}: no prediction: " in log
    # (Label Studio 1.23.2 answers a missing upload with HTTP 500, not 404)
    assert f"task {by_name['missing.png']}: no prediction: {label_studio.url}/data/upload/{pid}/missing.png " \
           f"answered HTTP" in log
    label_studio_log = label_studio.log.read_text(errors="replace")
    assert "ML backend returns an incorrect prediction, it should be a dict with the 'result' field" in \
        label_studio_log  # how Label Studio 1.23.2 logs the error entry of a skipped task
    print(f"\ne2e summary: {len(ids)} tasks, {sum(len(stored[n]) for n in stored)} predictions stored, "
          f"{len(ids) - len(good)} broken tasks skipped; retrieve action {elapsed:.1f}s; "
          f"Label Studio up in {label_studio.started_s:.0f}s, backend up in {backend.started_s:.0f}s; "
          f"action said {action}")
