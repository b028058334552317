"""Errors where Label Studio 1.23.2 shows them (issue 22).

* ``/setup`` refusing a config: Label Studio's connector (``ml/api_connector.py`` ``_request``) calls
  ``raise_for_status()`` and keeps only ``str(HTTPError)`` -- ``"400 Client Error: <reason phrase>
  for url: ..."`` -- never the body, and *Connect Model* shows that string. So the reason must be in
  the HTTP reason phrase: checked over a real socket with ``requests``, as Label Studio does.
* a task whose image answers 401: a stored prediction with no regions, score 0 and the reason in its
  ``model_version`` (Label Studio drops an entry without ``result`` silently).
* user errors: one WARNING line in the backend log, no traceback.
"""
from __future__ import annotations

import logging
import threading
import warnings

import pytest
import requests
from werkzeug.serving import make_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.predict.errors import one_line, visible_error
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, label_studio, ls_request, png_bytes, three_band_image

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

UPLOAD = "/data/upload/1/good.png"
RECT_CONFIG = ("<View><Image name='image' value='$image'/><RectangleLabels name='box' toName='image'>"
               "<Label value='cat'/></RectangleLabels></View>")
BRUSH_CONFIG = ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>"
                "<Label value='red thing'/><Label value='green thing'/></BrushLabels></View>")


@pytest.fixture
def ls():
    with label_studio({UPLOAD: png_bytes(three_band_image(6, 9))}) as server:
        yield server


@pytest.fixture
def app(ls):
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0)
    return create_app(settings, Predictor(FakeEngine()))


@pytest.fixture
def served(app):
    """The app on a real socket (werkzeug), so that ``requests`` sees the status line as LS does."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def label_studio_error_string(url: str, body: dict) -> str:
    """What Label Studio 1.23.2 keeps of a failing answer (ml/api_connector.py MLApi._request)."""
    resp = requests.post(url, json=body, timeout=10)
    try:
        resp.raise_for_status()
    except requests.exceptions.RequestException as exc:
        return str(exc)
    raise AssertionError(f"{url} answered {resp.status_code}: {resp.text[:200]}")


def test_setup_refusal_puts_the_problem_and_the_fix_in_what_label_studio_shows(served, caplog):
    body = ls_request("setup")
    body["schema"] = RECT_CONFIG
    with caplog.at_level(logging.INFO):
        shown = label_studio_error_string(f"{served}/setup", body)
    assert shown.startswith("400 Client Error: LabelConfigError: the label config has no <BrushLabels> control "
                            "(found: <RectangleLabels name='box'>)"), shown
    assert "add e.g. <BrushLabels" in shown and "BAD REQUEST" not in shown, shown
    assert shown.endswith(f"for url: {served}/setup")
    # the backend log: one WARNING line, no traceback (label-studio-ml logged one at ERROR)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage() and "Traceback" not in caplog.text
    assert "POST /setup refused (HTTP 400): LabelConfigError: the label config has no <BrushLabels>" in \
        record.getMessage()


def test_setup_refusal_body_keeps_status_detail_and_error(app):
    body = ls_request("setup")
    body["schema"] = RECT_CONFIG
    resp = app.test_client().post("/setup", json=body)
    assert resp.status_code == 400
    data = resp.get_json()
    assert data["status"] == 400 and data["detail"] == data["error"]
    assert data["detail"].startswith("LabelConfigError: the label config has no <BrushLabels> control")
    assert resp.status.startswith("400 LabelConfigError: the label config has no <BrushLabels>")
    assert "traceback" not in resp.get_data(as_text=True)


def test_bad_context_of_a_smart_tool_is_in_the_reason_phrase(served):
    body = ls_request("predict")
    body["label_config"] = BRUSH_CONFIG
    body["tasks"] = [{"id": 1, "data": {"image": UPLOAD}}, {"id": 2, "data": {"image": UPLOAD}}]
    body.setdefault("params", {})["context"] = {"result": [{"type": "rectanglelabels"}]}
    shown = label_studio_error_string(f"{served}/predict", body)
    assert shown.startswith("400 Client Error: ContextError: an interactive request (with 'context') holds one "
                            "task, got 2"), shown


def test_reason_phrase_is_one_printable_line():
    assert one_line("a\nb\r\n\tc \u00e9\u2014d") == "a b c ??d"
    assert one_line("x" * 50, 10) == "xxxxxxx..."


def test_a_task_whose_image_answers_401_is_a_visible_error_prediction(ls, caplog):
    ls.add_upload("/data/upload/1/secret.png", png_bytes(three_band_image(6, 9)))
    # a backend without LABEL_STUDIO_API_KEY and a /setup without a token: Label Studio answers 401
    settings = Settings(label_studio_url=ls.url, warmup=False, warmup_queue=0)
    client = create_app(settings, Predictor(FakeEngine())).test_client()
    body = ls_request("predict")
    body["label_config"] = BRUSH_CONFIG
    body["tasks"] = [{"id": 7, "data": {"image": "/data/upload/1/secret.png"}}]
    with caplog.at_level(logging.INFO):
        resp = client.post("/predict", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (entry,) = resp.get_json()["results"]
    # what Label Studio 1.23.2 keeps of an entry: result, score, model_version (ml/models.py)
    assert entry["result"] == [] and entry["score"] == 0.0
    assert entry["model_version"].startswith("error: ImageFetchError: "), entry
    assert "answered HTTP 401" in entry["model_version"] and "LABEL_STUDIO_API_KEY" in entry["model_version"]
    assert entry["model_version"].endswith(f"({resp.get_json()['model_version']})")
    assert "answered HTTP 401" in entry["error"] and entry["task"] == 7
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "backend.http.app"]  # (start: no LS key)
    assert [r.getMessage().split(":")[0] for r in lines] == ["task 7"], [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and "Traceback" not in caplog.text


def test_retry_later_errors_stay_without_result():
    skipped = {"task": 1, "error": "not predicted: the batch used its time budget", "model_version": "v"}
    assert visible_error(skipped) is skipped
    failed = {"task": 2, "error": "ImageError: image bytes could not be decoded", "model_version": "v"}
    assert visible_error(failed) == {**failed, "result": [], "score": 0.0,
                                     "model_version": "error: ImageError: image bytes could not be decoded (v)"}
    ok = {"result": [{"x": 1}], "score": 0.5, "model_version": "v"}
    assert visible_error(ok) is ok
