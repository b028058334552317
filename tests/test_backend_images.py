"""Fetching task images: Label Studio uploads/local files/cloud presign with the right credentials
(and never on another host), plain URLs, data URIs, limits; decoding of awkward image formats."""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from backend.fetch.images import (FetchPolicy, ImageFetcher, ImageFetchError, LabelStudioAuth, show_url)
from cass.images import ImageError, load_image
from tests.backend_fixtures import (label_studio, ACCESS_TOKEN, _jwt, LEGACY_TOKEN, PERSONAL_TOKEN,
                                    cloud_server, png_bytes, three_band_image)

PNG = png_bytes(three_band_image())


@pytest.fixture
def cloud():
    server = cloud_server({"/bucket/photo.png": PNG})
    yield server
    server.close()


@pytest.fixture
def ls(cloud):
    with label_studio({"/data/upload/3/abc-photo.png": PNG}, cloud) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_access_tokens():
    LabelStudioAuth._access.clear()
    yield
    LabelStudioAuth._access.clear()


def fetcher(ls, key=LEGACY_TOKEN, **policy) -> ImageFetcher:
    return ImageFetcher(FetchPolicy(**policy), LabelStudioAuth(ls.url, key) if ls else None)


def test_upload_with_legacy_token(ls):
    assert fetcher(ls).fetch("/data/upload/3/abc-photo.png") == PNG
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"


def test_upload_with_personal_access_token_is_exchanged_once(ls):
    f = fetcher(ls, PERSONAL_TOKEN)
    assert f.fetch("/data/upload/3/abc-photo.png") == PNG
    assert fetcher(ls, PERSONAL_TOKEN).fetch(f"{ls.url}/data/upload/3/abc-photo.png") == PNG
    refreshes = [r for r in ls.requests if r["path"] == "/api/token/refresh/"]
    assert len(refreshes) == 1  # the access token is shared by the process
    uploads = [r for r in ls.requests if r["path"].startswith("/data/upload/")]
    assert [r["headers"]["Authorization"] for r in uploads] == [f"Bearer {ACCESS_TOKEN}"] * 2


def test_expired_access_token_is_exchanged_again_on_401(ls):
    """An access token that Label Studio revoked early (401) is exchanged once more."""
    exchange = ls.routes["/api/token/refresh/"]
    revoked = _jwt({"token_type": "access", "exp": 4102444800, "jti": "revoked"})
    answers = iter([(200, {"Content-Type": "application/json"}, json.dumps({"access": revoked}).encode())])
    ls.routes["/api/token/refresh/"] = lambda req: next(answers, None) or exchange(req)
    assert fetcher(ls, PERSONAL_TOKEN).fetch("/data/upload/3/abc-photo.png") == PNG
    assert [(r["path"], r["headers"].get("Authorization")) for r in ls.requests] == [
        ("/api/token/refresh/", None), ("/data/upload/3/abc-photo.png", f"Bearer {revoked}"),
        ("/api/token/refresh/", None), ("/data/upload/3/abc-photo.png", f"Bearer {ACCESS_TOKEN}")]


def test_refused_credentials_give_clear_errors(ls):
    with pytest.raises(ImageFetchError, match=r"answered HTTP 401; Label Studio needs credentials.*Personal "
                                              r"Access Token.*LABEL_STUDIO_API_KEY"):
        fetcher(ls, None).fetch("/data/upload/3/abc-photo.png")
    ls.legacy_enabled = False
    with pytest.raises(ImageFetchError, match="refused the legacy token.*use a personal access token"):
        fetcher(ls).fetch("/data/upload/3/abc-photo.png")
    with pytest.raises(ImageFetchError, match="refused the personal access token from LABEL_STUDIO_API_KEY"):
        fetcher(ls, PERSONAL_TOKEN[:-3] + "bad").fetch("/data/upload/3/abc-photo.png")


def test_local_files_through_label_studio(ls):
    ref = ls.add_local_file("photos/a.png", PNG)
    assert ref == "/data/local-files/?d=photos/a.png"
    assert fetcher(ls).fetch(ref) == PNG
    assert ls.requests[-1]["query"] == {"d": ["photos/a.png"]}


def test_cloud_uri_is_presigned_by_label_studio_and_the_token_stays_there(ls, cloud):
    ls.add_presign(12, "/bucket/photo.png")
    assert fetcher(ls).fetch("s3://my-bucket/photos/photo.png", task_id=12) == PNG
    presign = ls.requests[-1]
    assert presign["path"] == "/tasks/12/presign/"
    assert base64.urlsafe_b64decode(presign["query"]["fileuri"][0]).decode() == "s3://my-bucket/photos/photo.png"
    assert presign["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"
    (bucket,) = cloud.requests
    assert bucket["path"] == "/bucket/photo.png"
    assert "Authorization" not in bucket["headers"]  # another origin (port): no Label Studio token
    with pytest.raises(ImageFetchError, match="needs the task id"):
        fetcher(ls).fetch("gs://b/x.png")


def test_plain_urls_elsewhere_get_no_token(ls, cloud):
    assert fetcher(ls).fetch(f"{cloud.url}/bucket/photo.png") == PNG
    assert "Authorization" not in cloud.requests[-1]["headers"]


def test_redirect_back_to_label_studio_gets_the_token_again(ls, cloud):
    cloud.routes["/hop"] = lambda req: (302, {"Location": f"{ls.url}/data/upload/3/abc-photo.png"}, b"")
    assert fetcher(ls).fetch(f"{cloud.url}/hop") == PNG
    assert "Authorization" not in cloud.requests[-1]["headers"]
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}"


def test_relative_urls_need_label_studio():
    with pytest.raises(ImageFetchError, match="set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        ImageFetcher(FetchPolicy()).fetch("/data/upload/1/x.png")


@pytest.mark.parametrize("ref, fragment", [
    ("", "empty image reference"),
    ("file:///etc/passwd", "file:// URLs are off"),
    ("photos/cat.png", "unsupported image reference"),
    ("ftp://example.com/a.png", "unsupported image reference"),
])
def test_unsupported_references(ref, fragment):
    with pytest.raises(ImageFetchError, match=fragment):
        ImageFetcher(FetchPolicy()).fetch(ref)


def test_redirect_to_a_refused_scheme_is_checked_by_the_policy(cloud):
    cloud.routes["/to-file"] = lambda req: (302, {"Location": "file:///etc/passwd"}, b"")
    with pytest.raises(ImageFetchError, match="refusing to fetch file:///etc/passwd: scheme 'file'"):
        ImageFetcher(FetchPolicy()).fetch(f"{cloud.url}/to-file")


def test_redirect_loops_stop(cloud):
    cloud.routes["/loop"] = lambda req: (302, {"Location": "/loop"}, b"")
    with pytest.raises(ImageFetchError, match=r"too many redirects \(> 5\)"):
        ImageFetcher(FetchPolicy()).fetch(f"{cloud.url}/loop")


def test_size_limit_by_header_and_by_stream(cloud):
    big = b"\x89PNG" + b"0" * 5000
    cloud.routes["/big.png"] = lambda req: (200, {"Content-Type": "image/png"}, big)
    with pytest.raises(ImageFetchError, match=r"is 5004 bytes, over the limit of 1000 bytes \(CASS_MAX_IMAGE_MB\)"):
        ImageFetcher(FetchPolicy(max_bytes=1000)).fetch(f"{cloud.url}/big.png")
    huge = b"0" * (4 * 2**20)  # no Content-Length: the limit stops the stream
    cloud.routes["/stream.png"] = lambda req: (200, {"Content-Type": "image/png", "X-Omit-Length": "1"}, huge)
    with pytest.raises(ImageFetchError, match=r"stream.png is over the limit of 3 MiB"):
        ImageFetcher(FetchPolicy(max_bytes=3 * 2**20)).fetch(f"{cloud.url}/stream.png")
    assert ImageFetcher(FetchPolicy(max_bytes=len(big))).fetch(f"{cloud.url}/big.png") == big


def test_timeout_is_a_clear_error(cloud):
    def slow(req):
        time.sleep(1.5)
        return 200, {"Content-Type": "image/png"}, PNG

    cloud.routes["/slow.png"] = slow
    # the answer would come after 1.5 s: a 0.5 s limit must stop the fetch with an error (no answer)
    with pytest.raises(ImageFetchError, match="timed out"):
        ImageFetcher(FetchPolicy(timeout_s=0.5)).fetch(f"{cloud.url}/slow.png?sig=secret")


def test_http_errors_html_pages_and_unreachable_hosts(cloud):
    cloud.routes["/login"] = lambda req: (200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>")
    with pytest.raises(ImageFetchError, match="answered HTTP 404"):
        ImageFetcher(FetchPolicy()).fetch(f"{cloud.url}/missing.png")
    with pytest.raises(ImageFetchError, match="returned text/html instead of an image"):
        ImageFetcher(FetchPolicy()).fetch(f"{cloud.url}/login")
    with pytest.raises(ImageFetchError, match="could not fetch http://127.0.0.1:9/x.png: connection failed"):
        ImageFetcher(FetchPolicy()).fetch("http://127.0.0.1:9/x.png")


def test_errors_never_show_query_strings_or_tokens(ls, cloud):
    ls.add_presign(5, "/bucket/missing.png")
    with pytest.raises(ImageFetchError) as info:
        fetcher(ls).fetch("s3://b/missing.png", task_id=5)
    message = str(info.value)
    assert "/bucket/missing.png?..." in message and "secret" not in message and LEGACY_TOKEN not in message
    assert show_url("https://user:pw@host:8443/p/a.png?X-Amz-Signature=s") == "https://<redacted>@host:8443/p/a.png?<redacted>"


def test_data_uris():
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert ImageFetcher(FetchPolicy()).fetch(uri) == PNG
    with pytest.raises(ImageFetchError, match="over the limit"):
        ImageFetcher(FetchPolicy(max_bytes=10)).fetch(uri)
    with pytest.raises(ImageFetchError, match="holds no bytes"):
        ImageFetcher(FetchPolicy()).fetch("data:image/png;base64,")


# ---------------------------------------------------------------------------------------------
# decoding (cass.load_image gets the fetched bytes): orientation and pixel formats
# ---------------------------------------------------------------------------------------------
def test_exif_orientation_is_applied():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3, 0] = 255  # left half red
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=100)
    out = load_image(buf.getvalue())
    assert out.shape == (6, 4, 3)  # displayed (and annotated in Label Studio) as portrait
    assert out[:3, :, 0].mean() > 200 and out[3:, :, 0].mean() < 60  # red ends up on top


@pytest.mark.parametrize("mode, array", [
    ("L", np.full((5, 7), 128, np.uint8)),
    (None, np.full((5, 7), 40000, np.uint16)),  # saved as a 16-bit grayscale PNG
    ("RGBA", np.dstack([np.full((5, 7, 3), 10, np.uint8), np.zeros((5, 7), np.uint8)])),
])
def test_grayscale_16_bit_and_rgba_become_rgb(mode, array):
    out = load_image(png_bytes(array, mode=mode))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    expected = {"L": 128, None: 40000 >> 8, "RGBA": 255}[mode]  # transparent -> white
    assert (out == expected).all()


def test_undecodable_bytes_are_an_image_error():
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"<html>not an image</html>")
    noisy = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(noisy[: len(noisy) // 2])
