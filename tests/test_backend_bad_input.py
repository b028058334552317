"""Bad input through the app (Flask test client, fake Label Studio on loopback): each case gets a clear,
specific answer and log line, and the rest of the batch is predicted (docs/security.md has the table).

Per-task problems are error entries in an HTTP 200 (Label Studio stores the other tasks); problems
of the whole request (body, label config) are HTTP 400 naming what is wrong.
"""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.controls.brush_rle import rle_to_mask
from backend.predict.predictor import Predictor
from tests.backend_fixtures import (label_studio, LEGACY_TOKEN, FakeEngine, ls_request, png_bytes,
                                    three_band_image)

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

GOOD = "/data/upload/1/good.png"
CONFIG = ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>"
          "<Label value='red thing'/><Label value='green thing'/><Label value='blue thing'/></BrushLabels></View>")


@pytest.fixture
def ls():
    with label_studio({GOOD: png_bytes(three_band_image(6, 9))}) as server:
        yield server


@pytest.fixture
def engine():
    return FakeEngine()


def make_client(ls, engine, **settings):
    base = dict(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, fetch_timeout_s=1.0)
    base.update(settings)
    return create_app(Settings(**base), Predictor(engine)).test_client()


@pytest.fixture
def client(ls, engine):
    return make_client(ls, engine)


def predict(client, images, config=CONFIG):
    """``/predict`` with one task per image reference (ids 1..n), the good image first and last."""
    body = ls_request("predict")
    body["label_config"] = config
    refs = [GOOD, *images, GOOD]
    body["tasks"] = [{"id": i, "data": {"image": ref}} for i, ref in enumerate(refs, 1)]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    results = resp.get_json()["results"]
    assert len(results) == len(refs)
    for good in (results[0], results[-1]):  # the rest of the work goes on
        assert [r["value"]["brushlabels"] for r in good["result"]] == [["red thing"], ["green thing"], ["blue thing"]]
    return results[1:-1]


def assert_task_error(entry, task_id, fragment, caplog):
    # stored by Label Studio as a visible error: no regions, score 0, the reason in model_version
    assert entry["result"] == [] and entry["score"] == 0.0, entry
    assert entry["model_version"].startswith("error: "), entry
    assert entry["task"] == task_id
    assert fragment in entry["error"], entry["error"]
    assert f"task {task_id}: no prediction: " in caplog.text
    assert fragment in caplog.text


def huge_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    ihdr = bytes(data[16:29])
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def frames(fmt: str, colors) -> bytes:
    imgs = [Image.new("RGB", (9, 6), c) for c in colors]
    buf = io.BytesIO()
    imgs[0].save(buf, fmt, save_all=True, append_images=imgs[1:], **({"duration": 100} if fmt == "GIF" else {}))
    return buf.getvalue()


def noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, data, content_type, fragment", [
    ("empty", b"", "image/png", "returned an empty body"),
    ("truncated-png", png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300],
     "image/png", "could not be decoded (truncated or corrupt?)"),
    ("truncated-jpeg", noisy_jpeg()[:400], "image/jpeg", "could not be decoded (truncated or corrupt?)"),
    ("text", b"just some text, not pixels", "image/png", "is not a readable image"),
    ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf", "is not a readable image"),
    ("html", b"<html><body>login</body></html>", "text/html; charset=utf-8", "returned text/html instead of an image"),
    ("bomb", huge_png(12000, 10000), "image/png",
     "the image is 12000x10000 = 120.0 megapixels, over the limit of 40 MP (CASS_MAX_IMAGE_MP"),
    ("huge-bomb", huge_png(30000, 30000), "image/png",
     "the image declares 900.0 megapixels, over the limit of 40 MP (CASS_MAX_IMAGE_MP"),
])
def test_bad_files_are_per_task_errors(ls, client, engine, caplog, name, data, content_type, fragment):
    ref = ls.add_upload(f"/data/upload/1/{name}", data, content_type)
    (entry,) = predict(client, [ref])
    assert_task_error(entry, 2, fragment, caplog)
    if name.endswith("bomb"):
        assert engine.encodes == 2  # the two good tasks: the bomb is refused from its header, never decoded


def test_bomb_under_the_backend_limit_meets_the_decoders_guard(ls, engine, caplog):
    client = make_client(ls, engine, max_image_pixels=500_000_000)  # CASS_MAX_IMAGE_MP=500
    ref = ls.add_upload("/data/upload/1/bomb.png", huge_png(12000, 10000))  # over the decoder's 100 MP
    (entry,) = predict(client, [ref])
    assert_task_error(entry, 2, "Image size (120000000 pixels) exceeds limit of 89478485 pixels, could be "
                                "decompression bomb", caplog)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_animated_and_multi_page_images_use_the_first_frame(ls, client, fmt):
    ref = ls.add_upload(f"/data/upload/1/frames.{fmt.lower()}", frames(fmt, [(0, 0, 230), (230, 0, 0)]))
    (entry,) = predict(client, [ref])
    (region,) = entry["result"]  # all blue: the first frame, not the red second one
    assert region["value"]["brushlabels"] == ["blue thing"]
    assert (region["original_width"], region["original_height"]) == (9, 6)
    assert rle_to_mask(region["value"]["rle"], 6, 9).all()


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------
class DripServer:
    """Answers every request with headers and then one byte every 50 ms (a hung or crawling host)."""

    def __init__(self, *, send_headers: bool = True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.send_headers = send_headers
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        with conn:
            try:
                conn.recv(65536)
                if self.send_headers:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n")
                while not self.stop.wait(0.05):
                    if self.send_headers:
                        conn.sendall(b"\x00")
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("send_headers, fragment", [
    (False, "timed out after 1."),  # one deadline over connect + headers + body (backend.fetch.transport)
    (True, "timed out after 1."),
], ids=["hang", "drip"])
def test_a_host_that_hangs_or_drips_times_out(ls, engine, caplog, send_headers, fragment):
    slow = DripServer(send_headers=send_headers)
    try:
        client = make_client(ls, engine, allowed_hosts=(slow.url.split("//")[1],))
        t0 = time.monotonic()
        (entry,) = predict(client, [f"{slow.url}/slow.png"])
        elapsed = time.monotonic() - t0
    finally:
        slow.close()
    assert_task_error(entry, 2, fragment, caplog)
    assert "CASS_FETCH_TIMEOUT_S=1s" in entry["error"]
    assert elapsed < 30  # liveness guard only: without the deadline the drip would run for hours


def test_urls_that_404_loop_or_are_huge(ls, engine, caplog):
    ls.routes["/data/upload/1/loop"] = lambda req: (302, {"Location": "/data/upload/1/loop"}, b"")
    ls.routes["/data/upload/1/declared-huge"] = lambda req: (
        200, {"Content-Type": "image/png", "Content-Length": str(5 << 30), "X-Omit-Length": "1"}, b"")
    ls.routes["/data/upload/1/endless"] = lambda req: (
        200, {"Content-Type": "image/png", "X-Omit-Length": "1"}, b"\x89PNG" + b"\x00" * (3 << 20))
    client = make_client(ls, engine, max_image_bytes=1 << 20)
    missing, loop, declared, endless = predict(client, ["/data/upload/1/missing.png", "/data/upload/1/loop",
                                                        "/data/upload/1/declared-huge", "/data/upload/1/endless"])
    assert_task_error(missing, 2, "/data/upload/1/missing.png answered HTTP 404", caplog)
    assert_task_error(loop, 3, "too many redirects (> 5)", caplog)
    assert_task_error(declared, 4, "declared-huge is 5120 MiB, over the limit of 1 MiB (CASS_MAX_IMAGE_MB)", caplog)
    assert_task_error(endless, 5, "endless is over the limit of 1 MiB (CASS_MAX_IMAGE_MB)", caplog)


# ---------------------------------------------------------------------------------------------
# tasks and request bodies
# ---------------------------------------------------------------------------------------------
def test_tasks_without_the_image_field_or_data(client, caplog):
    body = ls_request("predict")
    body["label_config"] = CONFIG
    body["tasks"] = [{"id": 1, "data": {"image": GOOD}}, {"id": 2, "data": {"photo": GOOD}}, {"id": 3},
                     {"id": 4, "data": {"image": ""}}, {"id": 5, "data": {"image": GOOD}}]
    results = client.post("/predict", json=body).get_json()["results"]
    assert ["error" not in r for r in results] == [True, False, False, False, True]
    assert_task_error(results[1], 2, "task 2 has no data field 'image'", caplog)
    assert_task_error(results[2], 3, "task 3 has no 'data' object", caplog)
    assert_task_error(results[3], 4, "task 4 has no data field 'image'", caplog)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"data": "tasks=1", "content_type": "text/plain"}, "needs a JSON body with Content-Type: application/json (got text/plain)"),
    ({"data": "{not json", "content_type": "application/json"}, "is not valid JSON: Expecting property name"),
    ({"data": "", "content_type": "application/json"}, "has an empty body"),
    ({"json": [{"id": 1}]}, "must be a JSON object, got list"),
    ({"json": {"label_config": CONFIG}}, "has no 'tasks'"),
    ({"json": {"tasks": {"id": 1}, "label_config": CONFIG}}, "'tasks' must be a list"),
])
def test_predict_bodies_that_are_not_a_request_are_400(client, caplog, kwargs, fragment):
    resp = client.post("/predict", **kwargs)
    assert resp.status_code == 400
    body = resp.get_json()
    assert fragment in body["detail"]
    assert "traceback" not in resp.get_data(as_text=True).lower()
    assert fragment in caplog.text


def test_setup_body_that_is_not_json_is_400(client):
    resp = client.post("/setup", data="schema=<View/>", content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 400 and "needs a JSON body" in resp.get_json()["detail"]


# ---------------------------------------------------------------------------------------------
# label configs
# ---------------------------------------------------------------------------------------------
def brush(labels: str, extra: str = "") -> str:
    return (f"<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'{extra}>{labels}"
            f"</BrushLabels></View>")


@pytest.mark.parametrize("config, fragment", [
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag'", "the label config could not be parsed"),
    ("<View><Image name='image' value='$image'/><Choices name='c' toName='image'><Choice value='a'/></Choices></View>",
     "has no <BrushLabels> control (found: <Choices name='c'>)"),
    (brush(""), "has no <Label> children"),
    (brush("<Label value=''/><Label value='  '/>"), "has no usable <Label>: <Label> #1 has an empty value"),
])
def test_unusable_label_configs_are_400_at_setup_and_predict(client, caplog, config, fragment):
    setup = ls_request("setup")
    setup["schema"] = config
    resp = client.post("/setup", json=setup)
    assert resp.status_code == 400 and fragment in resp.get_json()["detail"]
    body = ls_request("predict")
    body["label_config"] = config
    resp = client.post("/predict", json=body)
    assert resp.status_code == 400 and fragment in resp.get_json()["detail"]
    assert "traceback" not in resp.get_json().get("result", {})
    assert fragment in caplog.text


def test_duplicate_labels_are_one_label_and_logged(client, caplog):
    config = brush("<Label value='red thing' predicted_values='tomato'/><Label value='green thing'/>"
                   "<Label value='red thing' predicted_values='fire truck'/><Label value='blue thing'/>")
    (entry,) = predict(client, [GOOD], config=config)
    assert [r["value"]["brushlabels"] for r in entry["result"]] == [["red thing"], ["green thing"], ["blue thing"]]
    assert "label 'red thing' appears 2 times: predicted as one label with the prompts red thing, tomato, " \
           "fire truck" in caplog.text


def test_empty_label_values_are_ignored_and_logged(client, caplog):
    config = brush("<Label value='red thing'/><Label value=''/><Label value='green thing'/><Label value='blue thing'/>")
    (entry,) = predict(client, [GOOD], config=config)
    assert [r["value"]["brushlabels"] for r in entry["result"]] == [["red thing"], ["green thing"], ["blue thing"]]
    assert "<Label> #2 has an empty value: ignored (no prediction for it)" in caplog.text


def test_predicted_values_with_empty_items(client, engine):
    config = brush("<Label value='red thing' predicted_values=' , tomato,, ,'/><Label value='green thing'/>"
                   "<Label value='blue thing' predicted_values=','/>")
    predict(client, [GOOD], config=config)
    vocabulary = engine.segments[-1][0]
    assert [c.prompts for c in vocabulary.classes] == [("red thing", "tomato"), ("green thing",), ("blue thing",)]


# ---------------------------------------------------------------------------------------------
# the real (tiny-weight) engine: sizes and vocabularies a fake engine would not exercise
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_client(ls, model):
    # these tests are about labels and images, not the text budget (tests/test_predict_budget.py): 204
    # new prompts on the tiny weights can take over the default 30 s on a loaded machine
    return create_app(Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False),
                      Predictor(model, text_budget_s=600.0)).test_client()


def test_one_pixel_and_extreme_aspect_ratios_on_the_real_engine(ls, tiny_client, caplog):
    one = ls.add_upload("/data/upload/1/one.png", png_bytes(np.full((1, 1, 3), 200, np.uint8)))
    strip = ls.add_upload("/data/upload/1/strip.png", png_bytes(np.full((1, 5000, 3), 90, np.uint8)))
    config = brush("<Label value='cat'/><Label value='dog'/>")
    body = ls_request("predict")
    body["label_config"] = config
    body["tasks"] = [{"id": 1, "data": {"image": one}}, {"id": 2, "data": {"image": strip}}]
    first, second = tiny_client.post("/predict", json=body).get_json()["results"]
    (region,) = first["result"]  # one pixel: one label covers it
    assert (region["original_width"], region["original_height"]) == (1, 1)
    assert rle_to_mask(region["value"]["rle"], 1, 1).all()
    assert second["result"], second  # a 5000x1 strip is padded for inference, not refused (issue 9 item 9)
    for region in second["result"]:
        assert (region["original_width"], region["original_height"]) == (5000, 1)


def test_hundreds_of_unicode_and_very_long_labels_on_the_real_engine(ls, tiny_client):
    names = [f"label {i}" for i in range(200)] + ["猫 🐱", "Ünïcödé café", "ا ب ت", "x" * 2000]
    config = brush("".join(f"<Label value='{n}'/>" for n in names))
    body = ls_request("predict")
    body["label_config"] = config
    body["tasks"] = [{"id": 1, "data": {"image": GOOD}}]
    resp = tiny_client.post("/predict", json=body)
    assert resp.status_code == 200
    (prediction,) = resp.get_json()["results"]
    assert prediction["result"], prediction
    union = np.zeros((6, 9), bool)
    for region in prediction["result"]:
        assert region["value"]["brushlabels"][0] in names
        mask = rle_to_mask(region["value"]["rle"], 6, 9)
        assert not (mask & union).any()
        union |= mask
    assert union.all()  # no threshold: every pixel got one of the 204 labels
