"""Issue 9 items 2 and 6, issue 10 item 2: one wall-clock deadline over connect + headers + body
(real dripping sockets), no credentials or signatures in any log line (DEBUG included), and a 401 from
Label Studio that says which token was used and how to make a personal access token."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from backend.fetch.images import DOWNLOADS, FetchPolicy, ImageFetcher, ImageFetchError, LabelStudioAuth
from backend.ops.logs import install_redaction, redact
from tests.backend_fixtures import (LEGACY_TOKEN, FakeLabelStudio, cloud_server, png_bytes, three_band_image)

PNG = png_bytes(three_band_image(6, 9))


class Dripper:
    """A raw socket server on loopback: sends ``head`` at once, then ``drip`` one byte per ``every`` s."""

    def __init__(self, head: bytes, drip: bytes, every: float = 0.2):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.head, self.drip, self.every = head, drip, every
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.recv(65536)
            conn.sendall(self.head)
            for byte in self.drip:
                time.sleep(self.every)
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        self.sock.close()


TIMEOUT = 1.5


@pytest.mark.parametrize("case", ["headers", "body", "redirect then headers"])
def test_a_dripping_server_is_cut_at_the_deadline(case):
    if case == "headers":  # the status line, then one header byte every 0.2 s (for ~20 s)
        server = Dripper(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 100 + b"\r\n\r\n")
    else:  # complete headers, then the body byte by byte
        server = Dripper(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n", b"b" * 100)
    url = f"http://127.0.0.1:{server.port}/slow.png"
    redirector = None
    if case == "redirect then headers":
        server.close()
        server = Dripper(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 100 + b"\r\n\r\n")
        redirector = cloud_server({})
        redirector.routes["/r"] = lambda req: (302, {"Location": f"http://127.0.0.1:{server.port}/x"}, b"")
        url = f"{redirector.url}/r"
    t0 = time.monotonic()
    try:
        with pytest.raises(ImageFetchError) as info:
            ImageFetcher(FetchPolicy(timeout_s=TIMEOUT)).fetch(url)
    finally:
        server.close()
        if redirector is not None:
            redirector.close()
    elapsed = time.monotonic() - t0
    message = str(info.value)
    print(json.dumps({"case": case, "timeout_s": TIMEOUT, "elapsed_s": round(elapsed, 2), "error": message}))
    assert message.startswith("timed out after "), message
    stated = float(message.split("timed out after ")[1].split("s", 1)[0])
    assert TIMEOUT <= stated <= elapsed  # the error states the real elapsed time
    assert "CASS_FETCH_TIMEOUT_S=1.5s" in message
    assert elapsed < TIMEOUT + 1.0  # cut at the deadline, not after the ~20 s drip


# ---------------------------------------------------------------------------------------------
# no secrets in logs
# ---------------------------------------------------------------------------------------------
SECRETS = ["AKIAEXAMPLE%2F20261201", "deadbeefsignature", "goog-sig-123", "azure-sig-456", "tok-789"]


def test_redact_removes_queries_and_credentials():
    line = ('GET /bucket/a.png?X-Amz-Credential=AKIAEXAMPLE%2F20261201&X-Amz-Signature=deadbeefsignature HTTP/1.1 '
            'https://storage.googleapis.com/b/o?X-Goog-Signature=goog-sig-123 sv=1&sig=azure-sig-456 '
            f'token=tok-789 Authorization: Token {LEGACY_TOKEN} "Authorization": "Bearer eyJabc.def.ghi" '
            'http://user:pw@host/x')
    out = redact(line)
    for secret in SECRETS + [LEGACY_TOKEN, "eyJabc.def.ghi", "user:pw"]:
        assert secret not in out, (secret, out)
    assert "/bucket/a.png?" in out and "storage.googleapis.com/b/o" in out


def test_no_signature_or_token_in_any_log_line_at_debug(caplog):
    install_redaction()
    cloud = cloud_server({"/bucket/a.png": PNG})
    ls = FakeLabelStudio(cloud)
    ls.add_presign(7, "/bucket/a.png")
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("urllib3").setLevel(logging.DEBUG)
            fetcher = ImageFetcher(FetchPolicy(trusted_hosts=(ls.url.split("//")[1],)),
                                   LabelStudioAuth(ls.url, LEGACY_TOKEN))
            assert fetcher.fetch("s3://bucket/a.png", task_id=7) == PNG
            logging.getLogger("test").debug("presigned %s", f"{cloud.url}/bucket/a.png?X-Amz-Signature=secret")
    finally:
        ls.close()
        cloud.close()
        DOWNLOADS.clear()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "urllib3" in {r.name.split(".")[0] for r in caplog.records}  # urllib3 did log at DEBUG
    assert "X-Amz-Signature=secret" not in text and "secret" not in text and LEGACY_TOKEN not in text
    assert "fileuri=" not in text


# ---------------------------------------------------------------------------------------------
# issue 10 item 2: a 401 from Label Studio says which token and how to make a PAT
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, says", [("LABEL_STUDIO_API_KEY", "legacy token from LABEL_STUDIO_API_KEY"),
                                          ("/setup", "the token Label Studio sent with /setup")])
def test_a_401_names_the_token_and_how_to_make_a_personal_access_token(source, says):
    ls = FakeLabelStudio()
    ls.add_upload("/data/upload/1/a.png", PNG)
    ls.legacy_enabled = False  # Label Studio 1.23.2's default for new organisations
    try:
        fetcher = ImageFetcher(FetchPolicy(trusted_hosts=(ls.url.split("//")[1],)),
                               LabelStudioAuth(ls.url, LEGACY_TOKEN, source=source))
        with pytest.raises(ImageFetchError) as info:
            fetcher.fetch("/data/upload/1/a.png")
    finally:
        ls.close()
        DOWNLOADS.clear()
    message = str(info.value)
    assert "answered HTTP 401" in message and says in message
    assert "legacy tokens may be disabled for the organization" in message
    assert "Account & Settings -> Personal Access Token" in message and "LABEL_STUDIO_API_KEY" in message
    assert LEGACY_TOKEN not in message
