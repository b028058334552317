"""A real ``redis-server`` for tests, on 127.0.0.1 and a free port, no persistence.

Import the fixtures into a test module (pytest picks up imported fixtures)::

    from tests.redis_fixtures import redis_server, redis_url, redis_server_fn  # noqa: F401

* ``redis_server`` (session): one server for the whole run; ``.url``, ``.client()``.
* ``redis_url`` (function): that server's URL with every database flushed before the test.
* ``redis_server_fn`` (function): a private server the test may ``kill()`` and ``start()`` again
  (same port).

The fixtures skip (with the reason) only when ``redis-server`` is not installed; CI installs it
(``apt-get install -y redis-server``). ``CASS_TEST_REDIS_SERVER`` may name the binary.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = os.environ.get("CASS_TEST_REDIS_SERVER") or shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed (apt-get install -y redis-server, or set "
               "CASS_TEST_REDIS_SERVER); the Redis variants of the cache tests need it")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server --port P --save "" --appendonly no --daemonize no`` as a child process."""

    def __init__(self, binary: str, workdir: str | os.PathLike):
        self.binary = binary
        self.workdir = Path(workdir)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5)

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        """Start on ``self.port`` (restart) or, the first time, on a free port (retrying on races)."""
        attempts = 1 if self.port is not None else 5
        last = ""
        for _ in range(attempts):
            port = self.port or free_port()
            log_path = self.workdir / f"redis-{port}.log"
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                    stdout=log_file, stderr=subprocess.STDOUT)
            if self._wait_ready(proc, port, timeout_s):
                self.port, self.proc = port, proc
                return self
            proc.kill()
            proc.wait()
            last = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start: {last}")

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown, no reply to in-flight commands)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _new_server(tmp: str | os.PathLike) -> RedisServer:
    if not REDIS_SERVER:
        pytest.skip(SKIP_REASON)
    return RedisServer(REDIS_SERVER, tmp).start()


@pytest.fixture(scope="session")
def redis_server():
    with tempfile.TemporaryDirectory(prefix="cass-redis-") as tmp:
        server = _new_server(tmp)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_server_fn(tmp_path):
    server = _new_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()
