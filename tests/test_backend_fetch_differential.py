"""Issue 9 item 1: the host that is checked, the host the Label Studio token is scoped to and the host
connected to come from one parse. Real sockets on loopback: a fake Label Studio on 127.0.0.1 and a
recorder (an attacker's host) on 127.0.0.2; the token must never reach the recorder, whether the
crafted URL comes in a task, through a Label Studio redirect, or through ``TASKS_CREATED`` warm-up."""
from __future__ import annotations

import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.fetch.images import FetchPolicy, ImageFetcher, ImageFetchError, LabelStudioAuth
from backend.http.mlbackend import CASSManager
from backend.predict.predictor import Predictor
from backend.fetch.urls import URLRefused, normal_host, parse_http_url
from tests.backend_fixtures import (label_studio, LEGACY_TOKEN, PERSONAL_TOKEN, FakeEngine, FakeLabelStudio, ls_request,
                                    png_bytes, three_band_image)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PNG = png_bytes(three_band_image(6, 9))
UPLOAD = "/data/upload/1/a.png"


class Recorder:
    """An HTTP server on 127.0.0.2 that records every request's headers and answers a PNG."""

    def __init__(self, host: str = "127.0.0.2"):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def tokens(self) -> list[str]:
        return [r["headers"].get("Authorization") for r in self.requests if r["headers"].get("Authorization")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ls():
    with label_studio({UPLOAD: PNG}) as server:
        yield server


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def policy(ls, *allowed: str) -> FetchPolicy:
    """The backend's policy: Label Studio trusted, ``allowed`` in CASS_ALLOWED_HOSTS."""
    return FetchPolicy(allowed_hosts=allowed, trusted_hosts=(urlsplit(ls.url).netloc,))


def crafted(recorder: Recorder, ls: FakeLabelStudio) -> str:
    """The URL of issue 9: urlsplit reads Label Studio's host, urllib3 connects to the recorder."""
    ls_netloc = urlsplit(ls.url).netloc
    return f"http://127.0.0.2:{recorder.port}\\@{ls_netloc}{UPLOAD}"


@pytest.mark.parametrize("key", [LEGACY_TOKEN, PERSONAL_TOKEN])
def test_backslash_userinfo_url_is_refused_and_the_token_stays_home(ls, recorder, key):
    fetcher = ImageFetcher(policy(ls), LabelStudioAuth(ls.url, key))
    with pytest.raises(ImageFetchError, match="backslash"):
        fetcher.fetch(crafted(recorder, ls))
    assert recorder.requests == []


@pytest.mark.parametrize("template", [
    "http://127.0.0.2:{port}@{ls}/x.png",            # user info that is the recorder's host:port
    "http://{ls}@127.0.0.2:{port}/x.png",            # Label Studio as user info
    "http://127.0.0.2:{port}\t@{ls}/x.png",          # control character in the authority
    "http://127.0.0.2:{port} @{ls}/x.png",           # whitespace in the authority
    "http://127.0.0.2:{port}%5C@{ls}/x.png",         # percent-encoded backslash
    "http://127.0.0.2:+{port}/x.png",                # a port with a sign
    "http://127.0.0.2:{port}#@{ls}/x.png",           # fragment before '@'
    "http://127.0.0.2:{port}?@{ls}/x.png",           # query before '@'
])
def test_ambiguous_authorities_are_refused_with_a_clear_error(ls, recorder, template):
    url = template.format(port=recorder.port, ls=urlsplit(ls.url).netloc)
    fetcher = ImageFetcher(policy(ls), LabelStudioAuth(ls.url, LEGACY_TOKEN))
    try:
        data = fetcher.fetch(url)
    except ImageFetchError as exc:
        assert str(exc).startswith("refusing to fetch") or "not in CASS_ALLOWED_HOSTS" in str(exc), exc
    else:  # only a URL whose one reading is Label Studio's own may be fetched
        assert data == PNG and parse_http_url(url).origin == LabelStudioAuth(ls.url, None).origin
    assert recorder.tokens() == []


def test_a_label_studio_redirect_to_a_crafted_url_gets_no_token(ls, recorder):
    ls.routes["/data/upload/1/moved.png"] = lambda req: (302, {"Location": crafted(recorder, ls)}, b"")
    fetcher = ImageFetcher(policy(ls), LabelStudioAuth(ls.url, LEGACY_TOKEN))
    with pytest.raises(ImageFetchError, match="backslash"):
        fetcher.fetch("/data/upload/1/moved.png")
    assert recorder.requests == []


def test_a_redirect_to_an_allowed_other_host_gets_no_token_and_errors_name_it(ls, recorder):
    ls.routes["/data/upload/1/moved.png"] = lambda req: (
        302, {"Location": f"http://127.0.0.2:{recorder.port}/missing.png"}, b"")
    fetcher = ImageFetcher(policy(ls, f"127.0.0.2:{recorder.port}"),
                           LabelStudioAuth(ls.url, LEGACY_TOKEN))
    assert fetcher.fetch("/data/upload/1/moved.png") == PNG
    assert len(recorder.requests) == 1 and recorder.tokens() == []
    recorder.close()  # now unreachable: the error names the host actually contacted
    with pytest.raises(ImageFetchError, match=rf"could not fetch http://127\.0\.0\.2:{recorder.port}/missing"):
        fetcher.fetch("/data/upload/1/moved.png")


def app(ls, **kw):
    base = dict(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, fetch_timeout_s=5.0)
    return create_app(Settings(**{**base, **kw}), Predictor(FakeEngine())).test_client()


def test_predict_with_a_crafted_url_is_an_error_entry_and_no_token_leaves(ls, recorder):
    body = ls_request("predict")
    body["tasks"] = [{"id": 1, "data": {"image": crafted(recorder, ls)}}]
    resp = app(ls).post("/predict", json=body)
    assert resp.status_code == 200
    result = resp.get_json()["results"][0]
    assert "backslash" in str(result) and "Traceback" not in str(result)
    assert recorder.requests == []


def test_tasks_created_warm_up_with_a_crafted_url_sends_no_token(ls, recorder):
    client = app(ls, warmup_queue=10)
    assert client.post("/setup", json=ls_request("setup")).status_code == 200
    body = ls_request("webhook_tasks_created")
    ls.add_tasks(1, [{"id": body["tasks"][0]["id"], "data": {"image": crafted(recorder, ls)}}])  # Label Studio's task
    resp = client.post("/webhook", json=body)
    assert resp.status_code == 201 and resp.get_json()["warmup"]["queued"] == 1, resp.get_json()
    warmer = CASSManager.pipeline().warmer
    assert warmer.join(10)
    assert recorder.requests == []
    warmer.close(timeout=0)


# ---------------------------------------------------------------------------------------------
# property: whatever the URL, the host approved is the host connected to
# ---------------------------------------------------------------------------------------------
PIECES = st.sampled_from(["\\", "@", ":", "/", "?", "#", "%", "%5C", "%40", "%2e", "[", "]", "::1", "+", "-",
                          " ", "\t", "\r\n", "\x00", "\x7f", "é", "user:pw@", "127.0.0.1", "127.0.0.2",
                          "2130706433", "0x7f.1", "0177.0.0.1", "[::ffff:127.0.0.1]", "[fe80::1%25eth0]",
                          "example.com", "EXAMPLE.com.", "xn--bcher-kva.de", ":80", ":0", ":65536", ":+80",
                          ":８０", ":18080", "%31%32%37.0.0.1"])
URLS = st.builds(lambda scheme, parts, path: scheme + "".join(parts) + path,
                 st.sampled_from(["http://", "https://", "HTTP://", "http:/", "http:\\\\", "http://\\"]),
                 st.lists(PIECES, min_size=1, max_size=6), st.sampled_from(["", "/x.png", "/a?b=c@d", "\\x"]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(URLS)
def test_approved_host_is_the_connected_host(url):
    """For every URL the strict parse accepts, the request goes out on a connection pool to exactly
    the approved host and port, and every parser (urllib3's, urllib's) reads that same host from the
    URL given and from the request's rebuilt URL."""
    try:
        approved = parse_http_url(url)
    except URLRefused as exc:
        assert str(exc).startswith("refusing to fetch")
        return
    from backend.fetch.transport import Deadline, Transport

    with Transport(Deadline(1.0)) as transport:
        pool = transport.pool(approved)
        assert (pool.scheme, normal_host(pool.host), pool.port) == approved.origin
    for text in (url, approved.url):
        via_urllib3, via_urllib = parse_url(text), urlsplit(text)
        assert normal_host(via_urllib3.host or "") == approved.host  # same address, canonical form
        assert normal_host(via_urllib.hostname or "") == approved.host
        assert (via_urllib3.port or approved.port, via_urllib.port or approved.port) == (approved.port,) * 2
        assert via_urllib3.auth is None and via_urllib.username is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["\\", "@", "%5C", " ", "\t", ":", "+", "#", "?", "/", "%40", "user@"]),
                max_size=3))
def test_no_generated_url_takes_the_token_to_the_recorder(ls, recorder, junk):
    """Real sockets: URLs mixing the recorder's and Label Studio's authorities with junk between them."""
    ls_netloc = urlsplit(ls.url).netloc
    url = f"http://127.0.0.2:{recorder.port}{''.join(junk)}@{ls_netloc}{UPLOAD}"
    fetcher = ImageFetcher(policy(ls, f"127.0.0.2:{recorder.port}"),
                           LabelStudioAuth(ls.url, LEGACY_TOKEN))
    before = len(ls.requests)
    try:
        fetcher.fetch(url)
    except ImageFetchError:
        pass
    assert recorder.tokens() == []
    if len(ls.requests) > before:  # the request reached Label Studio: the approved host was Label Studio's
        assert parse_http_url(url).origin == fetcher.label_studio.origin
