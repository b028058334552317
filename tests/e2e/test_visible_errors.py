"""End to end (issue 22): errors where Label Studio 1.23.2 shows them.

* *Connect Model* on a RectangleLabels-only project: Label Studio refuses the connection with a
  message (``ml/serializers.py`` ``_validate_setup``: ``"... Reason: <str(HTTPError)>. ..."``) that
  names the problem (no <BrushLabels>) and the fix (add one) -- the backend's HTTP reason phrase;
  the backend logs it as one WARNING line, no traceback.
* a backend without ``LABEL_STUDIO_API_KEY``: an upload answers 401 and the task gets a stored error
  prediction (no regions, score 0, the reason in ``model_version``) instead of nothing.

Run: ``scripts/install_label_studio.sh && python -m pytest -m e2e tests/e2e/test_visible_errors.py -s``
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import backend_env_for, require_tiny_weights, running_backend, stop
from tests.e2e.test_label_studio import LS

pytestmark = pytest.mark.e2e

RECT_ONLY = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="cat"/></RectangleLabels>
</View>"""
BRUSH = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="grass"/></BrushLabels>
</View>"""


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_connect_model_on_a_rectangle_only_project_names_the_problem_and_the_fix(label_studio, backend):
    ls = LS(label_studio)
    pid = ls("POST", "/api/projects", json={"title": "rectangles only", "label_config": RECT_ONLY})["id"]
    before = backend.log.read_text(errors="replace")
    # what the UI's Connect Model sends; Label Studio answers 400 with the message the UI shows
    answer = ls("POST", "/api/ml", expect=(400,), json={"url": backend.url, "project": pid, "title": "CASS",
                                                          "auth_method": "NONE", "is_interactive": False})
    shown = str(answer)
    assert "no <BrushLabels> control" in shown and "RectangleLabels" in shown, shown   # the problem
    assert "add e.g. <BrushLabels" in shown, shown                                      # the fix
    assert "BAD REQUEST" not in shown, shown
    new = backend.log.read_text(errors="replace")[len(before):]
    refused = [line for line in new.splitlines() if "POST /setup refused (HTTP 400)" in line]
    assert len(refused) >= 1 and all("WARNING" in line for line in refused), new[-2000:]
    assert "Traceback" not in new, new[-2000:]


def test_a_task_whose_upload_answers_401_gets_a_visible_error_prediction(label_studio, image_server, tmp_path):
    require_tiny_weights()
    # no LABEL_STUDIO_API_KEY: the backend reads uploads with /setup's legacy token, off by default
    be = running_backend(tmp_path, label_studio.url, "", backend_env_for(image_server))
    try:
        assert be.log.read_text(errors="replace").count("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both "
                                                        "set") == 1
        ls = LS(label_studio)
        pid = ls("POST", "/api/projects", json={"title": "401", "label_config": BRUSH})["id"]
        ml = ls("POST", "/api/ml", json={"url": be.url, "project": pid, "title": "CASS", "auth_method": "NONE",
                                         "is_interactive": False})
        assert ml["readable_state"] == "Connected", ml
        ls("POST", f"/api/projects/{pid}/import", files={"a.png": ("a.png", png(), "image/png")})
        (task,) = ls("GET", "/api/tasks", params={"project": pid})["tasks"]
        ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
           json={"selectedItems": {"all": False, "included": [task["id"]]}})
        (prediction,) = ls("GET", "/api/predictions", params={"task": task["id"]})
        assert prediction["result"] == [] and prediction["score"] == 0, prediction
        assert prediction["model_version"].startswith("error: ImageFetchError: "), prediction
        assert "answered HTTP 401" in prediction["model_version"], prediction
        log = be.log.read_text(errors="replace")
        assert f"task {task['id']}: no prediction: " in log and "Traceback" not in log
    finally:
        stop(be.proc)
