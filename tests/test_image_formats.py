"""Image formats and header-only size checks (issue 9 item 5): only allow-listed formats are decoded,
and the size check never decodes (an ICO's opener decodes its bitmap inside ``Image.open``)."""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from cass.imageformat import ALLOWED_TEXT, header_size, sniff_format, webp_size
from cass.images import ImageError, load_image
from tests.backend_fixtures import png_bytes


def crafted_ico(side: int = 13000) -> bytes:
    """An ICO holding one PNG of ``side`` x ``side`` 1-bit pixels (small file, huge bitmap)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    png = buf.getvalue()
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


@pytest.fixture(scope="module")
def ico() -> bytes:
    return crafted_ico()


def test_crafted_ico_is_small_but_declares_a_huge_bitmap(ico):
    assert len(ico) < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
        try:  # what the size check used to do: Image.open decodes the ICO's bitmap here
            calls = []
            original = ImageFile.ImageFile.load
            ImageFile.ImageFile.load = lambda self, *a: calls.append(1) or original(self, *a)
            try:
                with Image.open(io.BytesIO(crafted_ico(600))) as img:
                    assert img.size == (600, 600)
            finally:
                ImageFile.ImageFile.load = original
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    assert calls, "Pillow's ICO opener no longer decodes in open(): the test premise changed"


class DecoderSpy:
    """Unit-test spy (a fake in the sense of the rules): records every Pillow decode."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = ImageFile.ImageFile.load
        spy = self

        def load(img, *args):
            spy.calls.append(img.format)
            return original(img, *args)
        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_header_size_refuses_ico_without_calling_any_decoder(ico, monkeypatch):
    spy = DecoderSpy(monkeypatch)
    with pytest.raises(ImageError, match=r"is in ICO format, which is not decoded here: allowed formats are "
                                         r"PNG, JPEG, WebP, GIF, BMP, TIFF"):
        header_size(ico)
    assert spy.calls == []


def test_load_image_refuses_ico_without_calling_any_decoder(ico, monkeypatch):
    spy = DecoderSpy(monkeypatch)
    with pytest.raises(ImageError, match="in ICO format, which is not decoded"):
        load_image(ico)
    assert spy.calls == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_allowed_formats_report_their_size_without_decoding(fmt, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    data = png_bytes(rgb, fmt=fmt)
    spy = DecoderSpy(monkeypatch)
    assert header_size(data) == (fmt, 53, 37)
    assert spy.calls == []
    assert sniff_format(data[:64]) == fmt
    assert load_image(data).shape == (37, 53, 3)


@pytest.mark.parametrize("lossless", [False, True])
def test_webp_size_is_read_from_the_first_chunk(lossless):
    buf = io.BytesIO()
    Image.new("RGB", (301, 17)).save(buf, "WEBP", lossless=lossless)
    assert webp_size(buf.getvalue()[:30]) == (301, 17)
    buf = io.BytesIO()
    Image.new("RGBA", (40, 9), (1, 2, 3, 100)).save(buf, "WEBP", lossless=lossless, exif=b"Exif\x00\x00")
    assert webp_size(buf.getvalue()[:30]) == (40, 9)


def test_other_formats_are_refused_naming_the_format_and_the_allow_list():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    with pytest.raises(ImageError, match=r"in PNM format, which is not decoded here"):
        load_image(buf.getvalue())
    with pytest.raises(ImageError, match=r"not a readable image \(unknown or unsupported format\); allowed "
                                         r"formats are " + ALLOWED_TEXT):
        load_image(b"hello, this is text")


def test_crafted_ico_through_the_app_is_a_task_error_and_never_decoded(ico, monkeypatch):
    """Real sockets: the ICO is served by a Label Studio stand-in on loopback and fetched by the app."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from backend.http.app import create_app
    from backend.config import Settings
    from backend.fetch.images import LabelStudioAuth
    from backend.predict.predictor import Predictor
    from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request

    ls = FakeLabelStudio()
    try:
        ls.add_upload("/data/upload/1/big.ico", ico, content_type="image/x-icon")
        settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                            warmup_queue=0)
        client = create_app(settings, Predictor(FakeEngine())).test_client()
        body = ls_request("predict")
        body["tasks"] = body["tasks"][:1]
        body["tasks"][0]["data"]["image"] = "/data/upload/1/big.ico"
        spy = DecoderSpy(monkeypatch)
        resp = client.post("/predict", json=body)
    finally:
        ls.close()
        LabelStudioAuth._access.clear()
    assert resp.status_code == 200
    (result,) = resp.get_json()["results"]
    assert result["result"] == [] and result["model_version"].startswith("error: ImageError: ")
    assert result["error"].startswith("ImageError: the image is in ICO format, which is not decoded here: "
                                      "allowed formats are PNG, JPEG, WebP, GIF, BMP, TIFF")
    assert spy.calls == []
