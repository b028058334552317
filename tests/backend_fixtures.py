"""Helpers for the backend tests: a fake engine, image bytes, a fake Label Studio HTTP server, and
the request bodies a real Label Studio 1.23.2 sent (``tests/data/label_studio_1.23.2``)."""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from cass.features import Segmentation
from cass.images import load_image
from cass.presets import TextParams

LS_REQUESTS = Path(__file__).resolve().parent / "data" / "label_studio_1.23.2"

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="red thing" predicted_values="tomato, fire truck" background="#f00"/>
    <Label value="green thing"/>
    <Label value="blue thing"/>
  </BrushLabels>
</View>"""


def ls_request(name: str) -> dict:
    """A request body recorded from Label Studio 1.23.2 (fresh copy)."""
    return copy.deepcopy(json.loads((LS_REQUESTS / f"{name}.json").read_text()))


def png_bytes(rgb: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    img = Image.fromarray(rgb) if mode is None else Image.fromarray(rgb, mode=mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def random_uploads(paths, height: int, width: int, seed: int) -> dict[str, bytes]:
    """``path -> PNG bytes`` of a random ``height x width`` RGB image per path (one generator seeded
    with ``seed``, drawn in the order of ``paths``): the uploads of a :func:`label_studio`."""
    rng = np.random.default_rng(seed)
    return {path: png_bytes(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for path in paths}


def three_band_image(height: int = 6, width: int = 9, value: int = 230) -> np.ndarray:
    """Left third pure red, middle green, right blue (at ``value`` brightness)."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    rgb[:, :third, 0] = value
    rgb[:, third:2 * third, 1] = value
    rgb[:, 2 * third:, 2] = value
    return rgb


@dataclass
class FakeFeatures:
    rgb: np.ndarray

    @property
    def original_size(self):
        return self.rgb.shape[:2]


@dataclass
class FakeEngine:
    """Stands in for :class:`cass.CASS`: decodes for real (``cass.load_image``), then labels each
    pixel with class ``argmax(R, G, B) % n_classes`` at probability ``max(R, G, B) / 255``; pixels
    under ``prob_thd`` go to the vocabulary's background class, or -1 without one."""

    model_version: str = "cass-fake-clip.00000000-dino.00000000"
    fingerprint: str = "fake-fingerprint"
    preset: object = field(default_factory=lambda: SimpleNamespace(name="fake", text=TextParams()))
    encodes: int = 0
    segments: list = field(default_factory=list)

    def encode(self, image):
        self.encodes += 1
        return FakeFeatures(load_image(image))

    def segment(self, features, vocabulary, *, params=None):
        params = params or self.preset.text
        self.segments.append((vocabulary, params))
        rgb = features.rgb.astype(np.float32)
        n = len(vocabulary)
        labels = (rgb.argmax(axis=2) % n).astype(np.int32)
        prob = rgb.max(axis=2) / 255.0
        low = prob < params.prob_thd
        labels[low] = -1 if vocabulary.background is None else vocabulary.background
        counts = np.array([(labels == c).sum() for c in range(n)], dtype=np.int64)
        scores = np.array([prob[labels == c].mean() if counts[c] else 0.0 for c in range(n)], dtype=np.float32)
        return Segmentation(labels=labels, scores=scores, pixel_counts=counts, class_names=vocabulary.names)


# ---------------------------------------------------------------------------------------------
# a fake Label Studio (and a second host standing in for a cloud bucket)
# ---------------------------------------------------------------------------------------------
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def _jwt(payload: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2lnbmF0dXJl"


PERSONAL_TOKEN = _jwt({"token_type": "refresh", "exp": 4102444800, "jti": "pat"})
ACCESS_TOKEN = _jwt({"token_type": "access", "exp": 4102444800, "jti": "access"})


class _Server:
    """A threaded HTTP server with a table of ``path -> handler(request) -> (status, headers, body)``
    that records every request (path, headers)."""

    def __init__(self):
        self.routes = {}
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                       "headers": dict(self.headers), "body": body}
                outer.requests.append(req)
                handler = outer.routes.get(parts.path) or outer.routes.get(parts.path.rstrip("/"))
                if handler is None:
                    status, headers, data = 404, {}, b"not found"
                else:
                    status, headers, data = handler(req)
                self.send_response(status)
                omit_length = headers.pop("X-Omit-Length", None)  # HTTP/1.0: body ends at close
                for k, v in headers.items():
                    self.send_header(k, v)
                if not omit_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (size limit, timeout)

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeLabelStudio(_Server):
    """Serves ``/data/upload/...`` and ``/data/local-files/`` with Label Studio's auth rules
    (``Token <legacy>`` or ``Bearer <access>``, a personal access token itself is refused), the
    ``/api/token/refresh/`` exchange, and ``/tasks/<id>/presign/`` redirecting to ``cloud``."""

    def __init__(self, cloud: _Server | None = None):
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.cloud = cloud
        self.legacy_enabled = True
        self.routes["/api/token/refresh/"] = self._refresh

    def add_upload(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[path] = data
        self.routes[path.split("?")[0]] = lambda req: self._serve(req, path, content_type)
        return path

    def add_local_file(self, name: str, data: bytes) -> str:
        self.files["local:" + name] = data
        self.routes["/data/local-files/"] = self._local
        return f"/data/local-files/?d={name}"

    def add_api(self, path: str, obj) -> None:
        """Serve ``obj`` as JSON at ``path`` (``/api/annotations/7``; with or without the final
        slash) to an authorized caller; :meth:`forget` makes it a 404 again."""
        def serve(req):
            if not self.authorized(req):
                return 401, {"Content-Type": "application/json"}, b'{"detail": "Authentication credentials were not provided."}'
            return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()
        self.routes[path.rstrip("/")] = serve

    def forget(self, path: str) -> None:
        self.routes.pop(path.rstrip("/"), None)

    def add_annotation_event(self, data: dict) -> None:
        """Serve the annotation, task and project a webhook payload names, as Label Studio would
        (``GET /api/annotations/<id>``, ``/api/tasks/<id>``, ``/api/projects/<id>``)."""
        annotation, task, project = data.get("annotation") or {}, data.get("task") or {}, data["project"]
        if annotation:
            self.add_api(f"/api/annotations/{annotation['id']}", annotation)
        if task:
            self.add_api(f"/api/tasks/{task['id']}", task)
        self.add_api(f"/api/projects/{project['id']}", project)

    def add_tasks(self, project: int, tasks: list[dict]) -> None:
        """Serve ``tasks`` as ``project``'s at ``GET /api/tasks?project=..`` (with ``selectedItems``
        ``{"all": false, "included": [ids]}`` and ``page``/``page_size``, as Label Studio 1.23.2)."""
        self.project_tasks = {**getattr(self, "project_tasks", {}),
                              int(project): [*getattr(self, "project_tasks", {}).get(int(project), []), *tasks]}

        def serve(req):
            if not self.authorized(req):
                return 401, {"Content-Type": "application/json"}, b'{"detail": "Authentication credentials were not provided."}'
            q = {k: v[0] for k, v in req["query"].items()}
            found = self.project_tasks.get(int(q.get("project", -1)), [])
            if "selectedItems" in q:
                included = set(json.loads(q["selectedItems"]).get("included") or [])
                found = [t for t in found if t["id"] in included]
            size, page = int(q.get("page_size", 100)), int(q.get("page", 1))
            if page > 1 and (page - 1) * size >= len(found):
                return 404, {"Content-Type": "application/json"}, b'{"detail": "Invalid page."}'
            body = {"tasks": [{**t, "project": int(q["project"])} for t in found[(page - 1) * size:page * size]],
                    "total": len(found)}
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        self.routes["/api/tasks"] = serve

    def add_presign(self, task_id: int, cloud_path: str) -> None:
        self.routes[f"/tasks/{task_id}/presign/"] = lambda req: self._presign(req, cloud_path)

    def authorized(self, req) -> bool:
        auth = req["headers"].get("Authorization", "")
        return (auth == f"Token {LEGACY_TOKEN}" and self.legacy_enabled) or auth == f"Bearer {ACCESS_TOKEN}"

    def _serve(self, req, path, content_type):
        if not self.authorized(req):
            return 401, {"Content-Type": "application/json"}, b'{"detail": "Authentication credentials were not provided."}'
        return 200, {"Content-Type": content_type}, self.files[path]

    def _local(self, req):
        if not self.authorized(req):
            return 401, {"Content-Type": "application/json"}, b"{}"
        data = self.files.get("local:" + req["query"].get("d", [""])[0])
        return (200, {"Content-Type": "image/png"}, data) if data is not None else (404, {}, b"")

    def _refresh(self, req):
        body = json.loads(req["body"] or b"{}")
        if body.get("refresh") != PERSONAL_TOKEN:
            return 401, {"Content-Type": "application/json"}, b'{"detail": "Token is invalid"}'
        return 200, {"Content-Type": "application/json"}, json.dumps({"access": ACCESS_TOKEN}).encode()

    def _presign(self, req, cloud_path):
        if not self.authorized(req):
            return 401, {}, b""
        fileuri = base64.urlsafe_b64decode(req["query"]["fileuri"][0]).decode()
        return 303, {"Location": f"{self.cloud.url}{cloud_path}?X-Amz-Signature=secret&uri={fileuri}"}, b""


def cloud_server(files: dict[str, bytes]) -> _Server:
    server = _Server()
    for path, data in files.items():
        server.routes[path] = lambda req, data=data: (200, {"Content-Type": "image/png"}, data)
    return server


@contextlib.contextmanager
def label_studio(uploads: dict[str, bytes] | None = None, cloud: _Server | None = None) -> Iterator[FakeLabelStudio]:
    """A running :class:`FakeLabelStudio` serving ``uploads`` (path -> PNG bytes); on exit it is
    closed and the process-wide state it leaves behind is cleared (the Label Studio access tokens
    and the download health of ``/health``). Each test file's ``ls`` fixture is this, with its files."""
    from backend.fetch.images import DOWNLOADS, LabelStudioAuth

    server = FakeLabelStudio(cloud)
    try:
        for path, data in (uploads or {}).items():
            server.add_upload(path, data)
        yield server
    finally:
        server.close()
        LabelStudioAuth._access.clear()
        DOWNLOADS.clear()


def label_set_version(engine, config: str) -> str:
    """The ``model_version`` that ``/setup`` and ``/predict`` answer for ``config`` without project
    memory: the engine's version plus the label set's digest (``backend.predict.version``)."""
    from backend.controls.config import parse_controls
    from backend.predict.version import model_version

    return model_version(engine.model_version, parse_controls(config))
