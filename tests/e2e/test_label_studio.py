"""End to end: a real Label Studio 1.23.2 as users run it, this backend (tiny weights), predictions
stored in Label Studio.

Label Studio has its defaults plus only the settings docs/deployment.md tells users to set (legacy
tokens off); the backend reads uploads with a personal access token made through the API. The model
is connected through the API as the UI does it (a 403 fails), its webhook must exist, tasks are
imported after connecting (uploads, a local file, a plain URL) so the ``TASKS_CREATED`` webhook warms
the feature cache, and the predictions the retrieval stores are validated. Removing any one required
setting makes this path fail: ``test_the_path_fails_without_each_required_setting``.

Run: ``scripts/install_label_studio.sh && python -m pytest -m e2e tests/e2e -s``
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from PIL import Image

from backend.controls.brush_rle import rle_to_mask
from tests.e2e.conftest import (backend_env_for, require_tiny_weights, running_backend, running_label_studio,
                                stop)

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


@dataclass
class PathResult:
    """What :func:`user_path` saw: task ids by image name, stored predictions, the model version."""
    pid: int
    by_name: dict
    stored: dict
    version: str
    ml_id: int
    retrieve_s: float
    action: dict
    warmup: dict


GOOD = ("noise.png", "rotated.jpg", "gray.png", "plain.png")
BROKEN = ("broken.png", "missing.png")


def metrics(backend) -> dict:
    resp = requests.get(f"{backend.url}/metrics", params={"format": "json"}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()


def wait_for_warmup(backend, done: int, timeout_s: float = 180) -> dict:
    """Poll the backend's warm-up counters until ``done`` images are warmed (computed or found)."""
    deadline = time.monotonic() + timeout_s
    while True:
        warm = metrics(backend)["warmup"] or {}
        finished = warm.get("computed", 0) + warm.get("hits", 0) + warm.get("failed", 0)
        if finished >= done and not warm.get("queued") and not warm.get("in_progress"):
            return warm
        assert time.monotonic() < deadline, f"warm-up did not finish {done} images in {timeout_s:.0f}s: {warm}"
        time.sleep(0.5)


def user_path(label_studio, backend, image_server, title: str = "CASS e2e", config: str = CONFIG,
              labels: set = LABELS) -> PathResult:
    """What a user does: project, connect the model (UI's API call), import tasks, retrieve
    predictions. Asserts every step (the first failing one raises ``AssertionError``)."""
    ls = LS(label_studio)
    images = test_images()
    pid = ls("POST", "/api/projects", json={"title": title, "label_config": config})["id"]

    # connect the backend as the UI's "Connect Model" does: Label Studio checks the URL, calls /health
    # and /setup, and registers <url>/webhook for the project
    ml = ls("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "CASS", "auth_method": "NONE",
                                     "is_interactive": False})
    assert ml["readable_state"] == "Connected", ml
    hooks = ls("GET", "/api/webhooks", params={"project": pid})
    assert [h["url"] for h in hooks] == [f"{backend.url}/webhook"], hooks
    version = requests.post(f"{backend.url}/setup", json={"project": f"{pid}.0", "schema": config},
                            timeout=10).json()["model_version"]
    assert ml["model_version"] == version and version.startswith("cass-default-clip."), (ml, version)
    warm_before = metrics(backend)["warmup"] or {}

    # import after connecting (the TASKS_CREATED webhook warms the feature cache):
    # uploads (two good images and one that is not an image; one form field per file)
    files = {name: (name, data, "image/png" if name.endswith(".png") else "image/jpeg")
             for name, (data, _) in images.items() if name in ("noise.png", "rotated.jpg")}
    files["broken.png"] = ("broken.png", b"\x89PNG\r\n\x1a\n this is not really a png", "image/png")
    ls("POST", f"/api/projects/{pid}/import", files=files)
    # a local file served by Label Studio, a plain URL on another web server, a missing upload
    local_dir = label_studio.files / f"local{pid}"
    local_dir.mkdir(exist_ok=True)
    (local_dir / "gray.png").write_bytes(images["gray.png"][0])
    ls("POST", "/api/storages/localfiles", json={"project": pid, "path": str(local_dir), "title": "local",
                                                 "use_blob_urls": True})
    (image_server.files / "plain.png").write_bytes(images["noise.png"][0])
    ls("POST", f"/api/projects/{pid}/import", json=[{"image": f"/data/local-files/?d=local{pid}/gray.png"},
                                                    {"image": f"{image_server.url}/plain.png"},
                                                    {"image": f"/data/upload/{pid}/missing.png"}])
    tasks = ls("GET", "/api/tasks", params={"project": pid, "page_size": 100})["tasks"]
    by_name = {}
    for task in tasks:
        ref = task["data"]["image"]
        name = next((n for n in GOOD + BROKEN if ref.endswith(n)), None)
        assert name, ref
        by_name[name] = task["id"]
    assert len(by_name) == 6, by_name

    # the webhook warmed the cache: every good image (the noise picture twice: upload and plain URL)
    warm = wait_for_warmup(backend, warm_before.get("computed", 0) + warm_before.get("hits", 0)
                           + warm_before.get("failed", 0) + len(by_name))
    assert warm["submitted"] - warm_before.get("submitted", 0) == len(by_name), (warm_before, warm)
    assert (warm.get("computed", 0) + warm.get("hits", 0)) - (warm_before.get("computed", 0)
                                                              + warm_before.get("hits", 0)) == len(GOOD), warm
    hits_before = metrics(backend)["cache"]["hits"]

    # retrieve predictions for every task through the data manager action (one /predict call)
    ids = sorted(by_name.values())
    t0 = time.monotonic()
    action = ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": False, "included": ids}})
    elapsed = time.monotonic() - t0
    assert metrics(backend)["cache"]["hits"] - hits_before >= len(GOOD), "the retrieval missed the warmed cache"

    stored = {name: ls("GET", "/api/predictions", params={"task": task_id}) for name, task_id in by_name.items()}
    for name in GOOD:
        assert len(stored[name]) == 1, (name, stored[name], action)
        validate(stored[name][0], images["noise.png" if name == "plain.png" else name][1], version, name, labels)
    for name in BROKEN:  # stored as visible errors: no regions, score 0, the reason in model_version
        (error,) = stored[name]
        assert error["result"] == [] and error["score"] == 0 and error["model_version"].startswith("error: "), error
    return PathResult(pid, by_name, stored, version, ml["id"], elapsed, action, warm)


def validate(prediction: dict, size: tuple[int, int], version: str, name: str, labels: set = LABELS) -> None:
    """A stored prediction: this version, regions that tile the image with known labels."""
    assert prediction["model_version"] == version
    assert 0 < prediction["score"] <= 1
    height, width = size
    assert prediction["result"], f"{name}: no region at all"
    union = np.zeros((height, width), bool)
    for region in prediction["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert (region["original_height"], region["original_width"]) == (height, width), name
        (label,) = region["value"]["brushlabels"]
        assert label in labels
        mask = rle_to_mask(region["value"]["rle"], height, width)  # decodes to the image size
        assert mask.any() and not (mask & union).any()
        union |= mask
        assert 0 < region["score"] <= 1
    assert union.all(), f"{name}: without a threshold every pixel gets a label"


def test_predictions_are_stored_for_every_good_task_and_the_broken_ones_are_skipped(label_studio, backend,
                                                                                    image_server):
    assert "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN" not in label_studio.settings
    run = user_path(label_studio, backend, image_server)
    ls, by_name, version = LS(label_studio), run.by_name, run.version

    # the version is stable: retrieving again (and after an annotation webhook) adds no duplicates
    first = run.stored["noise.png"][0]
    ls("POST", f"/api/tasks/{by_name['noise.png']}/annotations",
       json={"result": [{**r, "id": f"a{i}"} for i, r in enumerate(first["result"])]})
    ids = sorted(by_name.values())
    ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": run.pid},
       json={"selectedItems": {"all": False, "included": ids}})
    for name in GOOD:
        predictions = ls("GET", "/api/predictions", params={"task": by_name[name]})
        assert [p["model_version"] for p in predictions] == [version], name
    assert ls("GET", f"/api/ml/{run.ml_id}")["model_version"] == version

    log = backend.log.read_text(errors="replace")
    assert f"task {by_name['broken.png']}: no prediction: " in log
    # (Label Studio 1.23.2 answers a missing upload with HTTP 500, not 404)
    assert f"task {by_name['missing.png']}: no prediction: {label_studio.url}/data/upload/{run.pid}/missing.png " \
           f"answered HTTP" in log
    print(f"\ne2e summary: {len(ids)} tasks, {sum(len(run.stored[n]) for n in run.stored)} predictions stored, "
          f"{len(BROKEN)} broken tasks skipped; warm-up {run.warmup}; retrieve action {run.retrieve_s:.1f}s; "
          f"Label Studio up in {label_studio.started_s:.0f}s, backend up in {backend.started_s:.0f}s; "
          f"action said {run.action}")


# each setting Label Studio needs for this path, and where the path breaks without it
REQUIRED = [
    ("ML_BLOCK_LOCAL_IP", "POST /api/ml -> 403"),                        # the model URL is on loopback
    ("SSRF_PROTECTION_ENABLED", "POST /api/ml -> 403"),                  # its webhook URL is too
    ("LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED", "POST /api/storages/localfiles -> 400"),
]


@pytest.mark.parametrize("setting, failure", REQUIRED, ids=[s for s, _ in REQUIRED])
def test_the_path_fails_without_each_required_setting(setting, failure, label_studio, label_studio_bin,
                                                      personal_access_token, image_server, tmp_path):
    """Label Studio started without ``setting`` (a copy of the session's database: same admin, same
    token): the user path stops where the docs say it does."""
    require_tiny_weights()
    other = running_label_studio(label_studio_bin, tmp_path / "ls", without=setting,
                                 data_from=label_studio.files.parent / "data")
    be = None
    try:
        be = running_backend(tmp_path, other.url, personal_access_token, backend_env_for(image_server))
        with pytest.raises(AssertionError) as failed:
            user_path(other, be, image_server, title=f"without {setting}")
        assert failure in str(failed.value), failed.value
        print(f"\nwithout {setting}: {str(failed.value).splitlines()[0][:300]}")
    finally:
        if be is not None:
            stop(be.proc)
        stop(other.proc)
