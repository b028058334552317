"""Issue 21 "Connection-level deadlines": 20 connections dripping header bytes must neither stop
``/health`` from answering nor be kept open past the header deadline, in both served configurations:
the Docker image's gunicorn (``-c python:backend.http.gunicorn_conf``) and ``python -m backend``'s
werkzeug server (:func:`backend.http.deadlines.serve_werkzeug`). Real server processes on 127.0.0.1
with the fake engine (tests/gunicorn_app.py); every loop is bounded and the servers are stopped."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.redis_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
HEADER_S = 2.0
BODY_IDLE_S = 2.0
DRIPPERS = 20
DRIP_FOR_S = 12.0  # each dripper gives up after this (the deadline must close it long before)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASS_", "LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.update(PYTHONPATH=str(REPO), LOG_LEVEL="WARNING", CASS_HEADER_TIMEOUT_S=str(HEADER_S),
               CASS_BODY_IDLE_S=str(BODY_IDLE_S),
               CASS_WARMUP="false", THREADS="20")
    env.pop("REDIS_URL", None)
    return env


GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:backend.http.gunicorn_conf", "tests.gunicorn_app:app"]
WERKZEUG = [sys.executable, "-c", "import os; from tests.gunicorn_app import app; "
            "from backend.http.deadlines import serve_werkzeug; "
            "serve_werkzeug(app, '127.0.0.1', int(os.environ['PORT']))"]


@pytest.fixture(params=["gunicorn", "werkzeug"])
def server(request, tmp_path):
    if request.param == "gunicorn":
        pytest.importorskip("gunicorn")
    port = free_port()
    env = _env()
    env.update(PORT=str(port), GUNICORN_BIND=f"127.0.0.1:{port}")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(GUNICORN if request.param == "gunicorn" else WERKZEUG, cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "server did not start:\n" + log.read_text()
            time.sleep(0.3)
        yield port, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _drip(port: int, closed_after: list, started: threading.Barrier) -> None:
    """Open a connection and send a header byte every 0.2 s until the server closes it (bounded)."""
    t0 = time.monotonic()  # closed_after counts from the connect
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started.wait(10)
    sock.settimeout(0.2)
    try:
        while time.monotonic() - t0 < DRIP_FOR_S:
            sock.sendall(b"X")  # one more byte of an unfinished header line
            try:
                if sock.recv(1024) == b"":
                    break  # closed by the server
            except socket.timeout:
                pass  # still open, nothing sent back
        else:
            return  # still open after DRIP_FOR_S: closed_after gets nothing for this one
    except OSError:
        pass  # reset by the server
    finally:
        sock.close()
    closed_after.append(time.monotonic() - t0)


def test_dripping_headers_do_not_block_health_and_are_cut_at_the_deadline(server):
    port, url = server
    closed_after: list[float] = []
    started = threading.Barrier(DRIPPERS + 1)
    threads = [threading.Thread(target=_drip, args=(port, closed_after, started), daemon=True)
               for _ in range(DRIPPERS)]
    for thread in threads:
        thread.start()
    started.wait(10)
    time.sleep(0.5)  # every dripper is connected and holding whatever the server gave it
    t0 = time.monotonic()
    health = requests.get(f"{url}/health", timeout=HEADER_S + 6)
    health_s = time.monotonic() - t0
    for thread in threads:
        thread.join(DRIP_FOR_S + 5)
    print(f'{{"health_s": {health_s:.2f}, "closed": {len(closed_after)}, '
          f'"closed_after_s_max": {max(closed_after, default=-1):.2f}}}')
    assert health.status_code == 200
    assert health_s < HEADER_S + 3
    assert len(closed_after) == DRIPPERS, f"{DRIPPERS - len(closed_after)} dripping connections were never closed"
    assert max(closed_after) < HEADER_S + 3


def test_a_stalled_body_is_cut_after_the_idle_timeout(server):
    port, url = server
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_IDLE_S + 8) as sock:
        sock.sendall(b"POST /setup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"project\": ")  # then nothing more
        try:
            while sock.recv(4096):
                pass  # an error answer, if any, then the close
        except OSError:
            pass
    elapsed = time.monotonic() - t0
    print(f'{{"body_stall_closed_after_s": {elapsed:.2f}}}')
    assert elapsed < BODY_IDLE_S + 4
    assert requests.get(f"{url}/health", timeout=5).status_code == 200



def _will_close(port: int, path: str) -> bool:
    """GET ``path`` asking for keep-alive; whether the answer says the connection ends with it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "keep-alive"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        resp.read()
        return resp.will_close
    finally:
        conn.close()


def test_an_answer_with_connection_close_closes_the_connection(server, request):
    """Both servers honour an answer's ``Connection: close`` (the busy 503 sends it, so a client waiting
    its Retry-After never reuses a connection the server's keep-alive timeout is about to close). The
    Werkzeug server speaks HTTP/1.0 and closes after every answer anyway; gunicorn keeps connections
    alive and dropped the app's header before :class:`backend.http.gworker.DeadlineThreadWorker`."""
    port, _ = server
    assert _will_close(port, "/_test/closing")
    assert _will_close(port, "/health") is (request.node.callspec.params["server"] == "werkzeug")
