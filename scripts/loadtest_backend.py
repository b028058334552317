"""The backend under load and what it reads: the image server that plays Label Studio, starting the
backend (gunicorn or ``python -m backend``) on loopback, and its processes' memory (``scripts/loadtest.py``)."""
from __future__ import annotations

import io
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.conftest import stop  # noqa: E402  (stop a process group: TERM, then KILL)

SIZES = [(240, 320), (480, 640), (300, 300), (120, 480), (600, 400)]

# ---------------------------------------------------------------------------------------------
# the image server ("Label Studio")
# ---------------------------------------------------------------------------------------------
class Images:
    def __init__(self, count: int, seed: int = 0):
        self.count = count
        self.seed = seed
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def png(self, n: int) -> bytes:
        with self._lock:
            if n in self._cache:
                return self._cache[n]
        rng = np.random.default_rng(self.seed * 100003 + n)
        h, w = SIZES[n % len(SIZES)]
        blocks = rng.integers(0, 255, (h // 40 + 1, w // 40 + 1, 3), dtype=np.uint8)
        rgb = np.kron(blocks, np.ones((40, 40, 1), dtype=np.uint8))[:h, :w]
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        with self._lock:
            self._cache[n] = buf.getvalue()
        return self._cache[n]


def serve_images(images: Images) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            try:
                n = int(name.split(".")[0])
                if not 0 <= n < images.count:
                    raise ValueError
                data, status = images.png(n), 200
            except ValueError:
                data, status = b"not found", 404
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"loadtest: refusing to target {url}: only loopback addresses (127.0.0.1, ::1, localhost)")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def start_backend(args, images_url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASS_", "LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.pop("REDIS_URL", None)
    env.update(PYTHONPATH=str(REPO), CASS_ALLOW_UNAUTHENTICATED="true", LABEL_STUDIO_URL=images_url, LOG_LEVEL=args.log_level,
               CASS_CLIP_WEIGHTS=str(args.clip), CASS_DINO_WEIGHTS=str(args.dino))
    if args.torch_threads is not None:
        env["CASS_THREADS"] = str(args.torch_threads)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    if args.server == "gunicorn":
        # the Docker image's own command and settings (backend.http.gunicorn_conf: the deadline worker,
        # keep-alive 5 s), bound to loopback
        env.update(GUNICORN_BIND=f"127.0.0.1:{port}", WORKERS="1", THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "gunicorn", "-c", "python:backend.http.gunicorn_conf", "backend._wsgi:app"]
    else:
        cmd = [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"loadtest: the backend exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop(proc)
    sys.exit(f"loadtest: the backend did not answer /health within {args.start_timeout:g}s")
