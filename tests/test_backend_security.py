"""Security of the HTTP edge and of image fetching: basic auth, allowed hosts and schemes, private
addresses, local files, body limits, the Label Studio token's scope, secrets kept out of logs and
answers, no debug mode. Only loopback addresses are ever contacted."""
from __future__ import annotations

import base64
import hmac
import io
import logging
import os
import socket
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.http import edge as security
from backend.config import Settings
from backend.fetch.images import FetchPolicy, ImageFetcher, ImageFetchError, policy_from_settings
from backend.http.mlbackend import CASSManager
from backend.predict.predictor import Predictor
from tests.backend_fixtures import (label_studio, LEGACY_TOKEN, FakeEngine, cloud_server, ls_request,
                                    png_bytes, three_band_image)

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

PNG = png_bytes(three_band_image(6, 9))
UPLOAD = "/data/upload/1/63a93ce6-a.png"  # the path in the recorded /predict body
USER, PASSWORD = "label-studio", "s3cret-Pässword"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ls():
    with label_studio({UPLOAD: PNG}) as server:
        yield server


@pytest.fixture
def other():
    """Another image host on loopback (not Label Studio)."""
    server = cloud_server({"/img.png": PNG})
    yield server
    server.close()


def app_client(ls, **settings):
    base = dict(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, fetch_timeout_s=5.0)
    base.update(settings)
    return create_app(Settings(**base), Predictor(FakeEngine())).test_client()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def predict_one(client, ref: str, **kwargs):
    body = ls_request("predict")
    body["tasks"] = [{"id": 1, "data": {"image": ref}}]
    resp = client.post("/predict", json=body, **kwargs)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["results"][0]


# ---------------------------------------------------------------------------------------------
# basic auth
# ---------------------------------------------------------------------------------------------
ENDPOINTS = [("GET", "/", None), ("POST", "/setup", "setup"), ("POST", "/predict", "predict"),
             ("POST", "/webhook", "webhook_annotation_created"), ("GET", "/metrics", None),
             ("POST", "/versions", {"project": "1.1"}), ("GET", "/is_training?project=1.1", None)]


@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_basic_auth_guards_every_endpoint_but_health(ls, method, path, body, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    client = app_client(ls, basic_auth_user=USER, basic_auth_pass=PASSWORD)
    payload = ls_request(body) if isinstance(body, str) else body
    for headers in ({}, basic(USER, "wrong"), basic("other", PASSWORD), {"Authorization": "Bearer " + PASSWORD}):
        resp = client.open(path, method=method, json=payload, headers=headers)
        assert resp.status_code == 401, (headers, resp.status_code)
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="CASS ML backend"')
        assert "authentication required" in resp.get_json()["error"]
    assert f"refused {method} {path.split('?')[0]}" in caplog.text
    resp = client.open(path, method=method, json=payload, headers=basic(USER, PASSWORD))
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    assert PASSWORD not in caplog.text


def test_health_is_open_with_basic_auth_on(ls):
    client = app_client(ls, basic_auth_user=USER, basic_auth_pass=PASSWORD)
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.get_json()["status"] == "UP"


def test_without_basic_auth_settings_nothing_asks_for_credentials(ls):
    client = app_client(ls)
    assert client.post("/setup", json=ls_request("setup")).status_code == 200


def test_credentials_are_compared_in_constant_time(monkeypatch):
    """Both the user and the password go through hmac.compare_digest on equal-length digests, even when the
    user is already wrong (no early exit that would tell a wrong user from a wrong password by timing)."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    from werkzeug.datastructures import Authorization

    assert not security.credentials_match(Authorization("basic", {"username": "x", "password": "y"}), USER, PASSWORD)
    assert calls == [(32, 32), (32, 32)]
    calls.clear()
    assert not security.credentials_match(None, USER, PASSWORD)
    assert len(calls) == 2
    assert security.credentials_match(Authorization("basic", {"username": USER, "password": PASSWORD}), USER, PASSWORD)


# ---------------------------------------------------------------------------------------------
# which hosts and schemes images come from
# ---------------------------------------------------------------------------------------------
def test_only_label_studio_and_allowed_hosts_are_fetched(ls, other, caplog):
    host = other.url.split("//")[1]
    entry = predict_one(app_client(ls), f"{other.url}/img.png")
    assert f"host {host} is not Label Studio's and not in CASS_ALLOWED_HOSTS" in entry["error"]
    assert "add '127.0.0.1' to CASS_ALLOWED_HOSTS" in entry["error"]
    assert other.requests == []  # refused before connecting
    assert "error" not in predict_one(app_client(ls), UPLOAD)  # Label Studio (on loopback) is always allowed
    assert "error" not in predict_one(app_client(ls, allowed_hosts=(host,)), f"{other.url}/img.png")
    assert "Authorization" not in other.requests[-1]["headers"]  # an allowed host never gets the LS token


def test_a_redirect_to_a_host_that_is_not_allowed_is_refused(ls, other):
    ls.routes["/data/upload/1/hop.png"] = lambda req: (302, {"Location": f"{other.url}/img.png"}, b"")
    entry = predict_one(app_client(ls), "/data/upload/1/hop.png")
    assert "not in CASS_ALLOWED_HOSTS" in entry["error"]
    assert other.requests == []


def test_private_addresses_only_through_exact_entries_or_the_setting(other):
    host, port = other.url.split("//")[1].split(":")

    def fetch(**policy):
        return ImageFetcher(FetchPolicy(**policy)).fetch(f"http://localhost:{port}/img.png")

    with pytest.raises(ImageFetchError, match=r"it is on a loopback address \((127\.0\.0\.1|::1)\).*"
                                              r"CASS_ALLOW_PRIVATE_HOSTS=true"):
        fetch(allowed_hosts=("*",), allow_private=False)
    with pytest.raises(ImageFetchError, match="loopback address"):
        fetch(allowed_hosts=(f"*:{port}",), allow_private=False)  # matched by a wildcard only
    assert other.requests == []
    assert fetch(allowed_hosts=("*",), allow_private=True) == PNG
    assert fetch(allowed_hosts=(f"localhost:{port}",), allow_private=False) == PNG  # named exactly
    assert fetch(allowed_hosts=("localhost",), allow_private=False) == PNG  # any port of it


def test_the_connected_address_is_checked_too(other):
    """A name that resolved to a public address at the check but connects to a private one (DNS
    rebinding) is refused on the socket's actual peer address, before the body is read."""
    port = int(other.url.rsplit(":", 1)[1])

    def public_resolver(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    policy = FetchPolicy(allowed_hosts=("*",), allow_private=False, resolver=public_resolver)
    with pytest.raises(ImageFetchError, match=r"on a loopback address \(127\.0\.0\.1\)"):
        ImageFetcher(policy).fetch(f"http://127.0.0.1:{port}/img.png")


def test_backend_policy_from_settings():
    settings = Settings(allowed_hosts=("minio:9000", "*.example.com"), allow_private_hosts=False,
                        max_image_pixels=1_000_000, local_files_root=None)
    policy = policy_from_settings(settings, "http://127.0.0.1:8080")
    assert policy.trusted_hosts == ("127.0.0.1:8080",) and policy.allowed_hosts == ("minio:9000", "*.example.com")
    assert (policy.allow_private, policy.max_pixels, policy.local_files_root) == (False, 1_000_000, None)
    policy.check_url("http://127.0.0.1:8080/data/upload/1/a.png")  # Label Studio, on loopback
    with pytest.raises(ImageFetchError, match="not Label Studio's and not in CASS_ALLOWED_HOSTS"):
        policy.check_url("http://127.0.0.1:8081/a.png")  # another port of the same host
    with pytest.raises(ImageFetchError, match="not in CASS_ALLOWED_HOSTS"):
        policy.check_url("http://example.com/a.png")  # *.example.com is subdomains only
    with pytest.raises(ImageFetchError, match="scheme 'ftp'"):
        policy.check_url("ftp://minio:9000/a.png")


def test_file_urls_only_below_the_local_files_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a b.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    off = ImageFetcher(FetchPolicy())
    with pytest.raises(ImageFetchError, match="file:// URLs are off"):
        off.fetch(f"file://{root}/sub/a%20b.png")
    on = ImageFetcher(FetchPolicy(local_files_root=str(root), max_bytes=len(PNG)))
    assert on.fetch(f"file://{root}/sub/a%20b.png") == PNG
    for url, fragment in [(f"file://{root}/../secret.png", "outside CASS_LOCAL_FILES_ROOT"),
                          (f"file://{root}/escape.png", "outside CASS_LOCAL_FILES_ROOT"),
                          (f"file://{root}/sub/missing.png", "could not read"),
                          (f"file://{root}/sub", "is not a regular file"),
                          (f"file://otherhost{root}/sub/a%20b.png", "names no host")]:
        with pytest.raises(ImageFetchError, match=fragment):
            on.fetch(url)
    with pytest.raises(ImageFetchError, match="over the limit"):
        ImageFetcher(FetchPolicy(local_files_root=str(root), max_bytes=10)).fetch(f"file://{root}/sub/a%20b.png")
    with pytest.raises(ImageFetchError, match="scheme 'file'"):  # never as a redirect target
        FetchPolicy(local_files_root=str(root)).check_url(f"file://{root}/sub/a%20b.png")


def test_file_urls_through_the_app(ls, tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    assert "file:// URLs are off" in predict_one(app_client(ls), f"file://{tmp_path}/a.png")["error"]
    assert "error" not in predict_one(app_client(ls, local_files_root=str(tmp_path)), f"file://{tmp_path}/a.png")


# ---------------------------------------------------------------------------------------------
# the Label Studio token goes to Label Studio only
# ---------------------------------------------------------------------------------------------
def test_token_only_on_label_studios_origin(ls, other):
    ls.add_presign(1, "/img.png")
    ls.cloud = other
    client = app_client(ls, allowed_hosts=(other.url.split("//")[1],))
    assert "error" not in predict_one(client, "s3://bucket/img.png")  # presigned by LS, fetched from "the bucket"
    assert "error" not in predict_one(client, f"{other.url}/img.png")
    assert [r["headers"].get("Authorization") for r in other.requests] == [None, None]
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"


# ---------------------------------------------------------------------------------------------
# request and image size limits
# ---------------------------------------------------------------------------------------------
def test_request_bodies_over_the_limit_are_413(ls, caplog):
    client = app_client(ls, max_request_bytes=2000)
    body = ls_request("predict")
    body["tasks"] = [{"id": i, "data": {"image": UPLOAD}} for i in range(100)]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 413
    assert "is over the limit of 2000 bytes for /predict (CASS_MAX_REQUEST_MB)" in resp.get_json()["error"]
    chunked = client.post("/predict", input_stream=io.BytesIO(b"{" + b" " * 5000 + b"}"),
                          headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert "refused POST /predict" in caplog.text
    small = ls_request("predict")
    small["tasks"] = small["tasks"][:1]
    assert client.post("/predict", json=small).status_code == 200


def test_chunked_body_within_the_limit_is_read(ls):
    client = app_client(ls)
    body = ls_request("setup")
    import json

    resp = client.post("/setup", input_stream=io.BytesIO(json.dumps(body).encode()),
                       headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    assert resp.status_code == 200 and "model_version" in resp.get_json()


def test_images_over_the_size_limit(ls):
    ls.add_upload("/data/upload/1/big.png", PNG + b"\x00" * 5000)
    entry = predict_one(app_client(ls, max_image_bytes=1000), "/data/upload/1/big.png")
    assert "over the limit of 1000 bytes (CASS_MAX_IMAGE_MB)" in entry["error"]


# ---------------------------------------------------------------------------------------------
# secrets stay out of logs and answers; no debug mode
# ---------------------------------------------------------------------------------------------
def test_no_secrets_in_logs_or_answers(ls, other, caplog):
    caplog.set_level(logging.DEBUG)
    ls.cloud = other  # the presign redirect goes to a host that is not allowed: its URL is in the error
    ls.add_presign(1, "/bucket/photo.png")
    client = app_client(ls, basic_auth_user=USER, basic_auth_pass=PASSWORD,
                        redis_url="redis://:redis-Passw0rd@127.0.0.1:1/0")
    auth = basic(USER, PASSWORD)
    secrets = [PASSWORD, auth["Authorization"].split()[1], LEGACY_TOKEN, "setup-access-token-123",
               "X-Amz-Signature=secret", "redis-Passw0rd"]
    setup = ls_request("setup")
    setup["access_token"] = "setup-access-token-123"
    answers = [client.post("/setup", json=setup, headers=auth)]
    body = ls_request("predict")
    body["tasks"] = [{"id": 1, "data": {"image": "s3://bucket/photo.png"}}]  # presign -> missing bucket host
    answers.append(client.post("/predict", json=body, headers=auth))
    answers.append(client.get("/health"))
    answers.append(client.get("/metrics", headers=auth))
    answers.append(client.post("/predict", json=body, headers=basic(USER, "not-" + PASSWORD)))
    text = caplog.text + "".join(a.get_data(as_text=True) for a in answers)
    assert "/bucket/photo.png?... is not Label Studio's" in text or "/bucket/photo.png?...: host" in text
    assert "POST /predict" in caplog.text or "task 1" in caplog.text  # something was logged at DEBUG
    for secret in secrets:
        assert secret not in text, secret
    assert PASSWORD not in repr(client.application.extensions["cass_security"]["settings"])
    settings = Settings(label_studio_url="http://ls:8080", label_studio_api_key=LEGACY_TOKEN, basic_auth_user=USER,
                        basic_auth_pass=PASSWORD, redis_url="redis://:pw@h/0")
    assert LEGACY_TOKEN not in repr(settings) and PASSWORD not in repr(settings) and ":pw@" not in repr(settings)


def test_no_debug_mode_and_no_tracebacks_in_answers(ls, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("FLASK_ENV", "development")
    client = app_client(ls)
    assert client.application.debug is False

    def explode(*args, **kwargs):
        raise RuntimeError("internal state")

    monkeypatch.setattr(CASSManager, "predict", classmethod(explode))
    resp = client.post("/predict", json=ls_request("predict"))
    assert resp.status_code == 500  # a bug (not a bad task): the whole request fails, without internals
    text = resp.get_data(as_text=True)
    assert "RuntimeError: internal state" in resp.get_json()["detail"]
    assert "Traceback" not in text and "traceback" not in text and ".py" not in text
    resp = client.post("/setup", json={**ls_request("setup"), "schema": "<View>"})
    assert resp.status_code == 400 and "traceback" not in resp.get_data(as_text=True).lower()


def test_python_m_backend_never_starts_the_debugger(monkeypatch, tiny_weights):
    import backend.http.deadlines as deadlines
    from backend.__main__ import main

    seen = {}
    # the server of python -m backend is werkzeug's make_server (no debugger, no reloader exist there)
    monkeypatch.setattr(deadlines, "serve_werkzeug", lambda app, host, port, **k: seen.update(app=app, port=port))
    clip, dino = tiny_weights
    for name in list(os.environ):
        if name.startswith(("CASS_", "LABEL_STUDIO_", "BASIC_AUTH_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CASS_CLIP_WEIGHTS", str(clip))
    monkeypatch.setenv("CASS_DINO_WEIGHTS", str(dino))
    monkeypatch.setenv("CASS_WARMUP", "0")
    monkeypatch.setenv("CASS_ALLOW_UNAUTHENTICATED", "true")  # no BASIC_AUTH_* here (backend.startup)
    monkeypatch.setenv("FLASK_DEBUG", "1")
    levels = {name: logging.getLogger(name).level for name in ("", "label_studio_ml")}
    try:
        assert main(["--port", "1"]) == 0
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert seen["port"] == 1 and seen["app"].debug is False


def test_production_image_runs_gunicorn_without_debug_or_reload():
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = [line for line in dockerfile.splitlines() if line.startswith("CMD")]
    assert cmd and "gunicorn" in cmd[0]
    for flag in ("--reload", "--debug", "FLASK_DEBUG", "FLASK_ENV", "--log-level debug"):
        assert flag not in dockerfile, flag
