"""Checksum-verified weight downloads, against a real HTTP server on loopback serving a small file."""
from __future__ import annotations

import hashlib
import http.server
import logging
import threading

import pytest

from cass import weights


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.bin").write_bytes(b"tiny weights" * 1000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256((root / "w.bin").read_bytes()).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def _registry(url: str, sha256: str | None) -> dict:
    return {"test": {"url": url, "filename": "w.bin", "description": "test weights", "sha256": sha256}}


def test_pinned_digest_matches_and_file_is_kept(server, tmp_path, monkeypatch):
    base, digest = server
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    got = weights.resolve("test", _registry(f"{base}/w.bin", digest), "CLIP")
    assert got.path.read_bytes() == b"tiny weights" * 1000
    assert not list((tmp_path / "models").glob("*.part"))


def test_wrong_digest_keeps_nothing_and_names_both_digests(server, tmp_path, monkeypatch):
    base, digest = server
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve("test", _registry(f"{base}/w.bin", "0" * 64), "CLIP")
    assert "checksum mismatch" in str(err.value) and digest in str(err.value)
    assert not list((tmp_path / "models").iterdir())


def test_unpinned_source_downloads_with_a_warning(server, tmp_path, monkeypatch, caplog):
    base, digest = server
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    with caplog.at_level(logging.WARNING, logger="cass.weights"):
        weights.resolve("test", _registry(f"{base}/w.bin", None), "DINO")
    assert "no published checksum" in caplog.text and digest in caplog.text


def test_missing_file_on_server_is_a_clear_error(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(weights.WeightsError, match="404"):
        weights.resolve("test", _registry(f"{base}/missing.bin", None), "DINO")
    assert not list((tmp_path / "models").glob("*"))


def test_official_sources_pin_the_published_openai_digests():
    for entry in (weights.CLIP_SOURCES["openai"], weights.GLOBAL_CLIP_SOURCES["openai-vit-l-14"]):
        assert entry["sha256"] == entry["url"].split("/")[-2] and len(entry["sha256"]) == 64
