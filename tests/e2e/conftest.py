"""A real Label Studio and this backend as subprocesses, for ``@pytest.mark.e2e`` tests.

Label Studio lives in its own venv (``$LS_VENV`` or ``/opt/ls-venv``), installed by
``scripts/install_label_studio.sh`` when missing. Each session gets a fresh data dir and free ports.

Label Studio runs as users run it: its defaults (legacy API tokens **off**, SSRF protection on) plus
only the settings docs/deployment.md tells users to set (``label_studio_api.DOCUMENTED_SETTINGS``)
and the offline ones (no calls to outside hosts). The admin user is created with a username and
password, the tests log in like the browser and the backend gets a personal access token created
through the API, as a user creates it in the UI.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.e2e.label_studio_api import (OFFLINE_SETTINGS, create_personal_access_token, documented_settings,
                                        legacy_tokens_enabled, login)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared"))
TINY_WEIGHTS = SHARED / "parity" / "weights"
LS_VENV = Path(os.environ.get("LS_VENV", "/opt/ls-venv"))
LS_VERSION = "1.23.2"
LS_START_TIMEOUT_S = float(os.environ.get("E2E_LS_START_TIMEOUT_S", 300))
BACKEND_START_TIMEOUT_S = float(os.environ.get("E2E_BACKEND_START_TIMEOUT_S", 300))
ADMIN_USER, ADMIN_PASSWORD = "admin@example.com", "adminpass123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}:\n{tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f}s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@dataclass
class Service:
    url: str
    proc: subprocess.Popen | None
    log: Path | None
    started_s: float
    files: Path | None = None  # Label Studio: LOCAL_FILES_DOCUMENT_ROOT
    headers: dict = field(default_factory=dict)  # Label Studio: the admin's logged-in browser session
    settings: dict = field(default_factory=dict)  # Label Studio: the non-default settings it runs with


@pytest.fixture(scope="session")
def label_studio_bin() -> Path:
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        script = REPO / "scripts" / "install_label_studio.sh"
        subprocess.run(["bash", str(script)], check=True, env={**os.environ, "LS_VENV": str(LS_VENV),
                                                                "LS_VERSION": LS_VERSION})
    if not exe.exists():
        pytest.fail(f"Label Studio is not installed in {LS_VENV} (scripts/install_label_studio.sh)")
    return exe


def label_studio_settings(files: Path, without: str | None = None) -> dict[str, str]:
    """The non-default environment of the test's Label Studio: the documented settings (less
    ``without``) and the offline ones. Nothing else: the data dir and the first user come from the
    command line and ``LABEL_STUDIO_USERNAME``/``_PASSWORD`` (see :func:`start_label_studio`)."""
    settings = {**documented_settings(str(files)), **OFFLINE_SETTINGS}
    if without is not None:
        if without not in settings:
            raise ValueError(f"{without!r} is not one of the test's Label Studio settings {sorted(settings)}")
        del settings[without]
    return settings


# variables of the outer environment that would change Label Studio's defaults
_LS_ENV_PREFIXES = ("LABEL_STUDIO_", "ML_", "SSRF_", "LOCAL_FILES_", "DJANGO_", "SENTRY_", "COLLECT_", "LATEST_")


def start_label_studio(exe: Path, root: Path, without: str | None = None, data_from: Path | None = None, *,
                       port: int | None = None,
                       settings: dict[str, str] | None = None) -> tuple[str, subprocess.Popen, Path, Path]:
    """Start Label Studio ``exe`` on 127.0.0.1 with a fresh data dir under ``root`` (admin user
    ``ADMIN_USER``/``ADMIN_PASSWORD``, local files under ``root/files``) and
    :func:`label_studio_settings` (less ``without``); not yet healthy. ``data_from``: a data dir to
    copy the database of (same users, tokens, projects; skips the migrations). Returns url, process,
    log, local-files root. ``port``: that port instead of a free one; ``settings``: these instead of
    :func:`label_studio_settings` (a user's own choice, e.g. only the README's)."""
    data, files = root / "data", root / "files"
    files.mkdir(parents=True)
    if data_from is None:
        data.mkdir()
    else:  # its secret key (signs the tokens) and media, then a consistent copy of the live database
        shutil.copytree(data_from, data, ignore=shutil.ignore_patterns("label_studio.sqlite3*"))
        with sqlite3.connect(data_from / "label_studio.sqlite3") as src, \
                sqlite3.connect(data / "label_studio.sqlite3") as dst:
            src.backup(dst)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LS_ENV_PREFIXES)}
    env.update(label_studio_settings(files, without) if settings is None else settings, LABEL_STUDIO_USERNAME=ADMIN_USER,
               LABEL_STUDIO_PASSWORD=ADMIN_PASSWORD)
    log = root / "label_studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data)],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return url, proc, log, files


def running_label_studio(exe: Path, root: Path, without: str | None = None,
                         data_from: Path | None = None) -> Service:
    """:func:`start_label_studio`, healthy and logged in (``headers``); the caller stops ``.proc``."""
    url, proc, log, files = start_label_studio(exe, root, without, data_from)
    try:
        started = wait_until_healthy(f"{url}/health", proc, log, LS_START_TIMEOUT_S, "Label Studio")
        headers = login(url, ADMIN_USER, ADMIN_PASSWORD)
    except BaseException:
        stop(proc)
        raise
    return Service(url, proc, log, started, files, headers, label_studio_settings(files, without))


@pytest.fixture(scope="session")
def label_studio(label_studio_bin, tmp_path_factory):
    """A fresh Label Studio on 127.0.0.1 (see the module docstring); ``headers`` are the admin's
    logged-in session (cookie + CSRF token, as the browser sends them)."""
    service = running_label_studio(label_studio_bin, tmp_path_factory.mktemp("label_studio"))
    try:
        assert not legacy_tokens_enabled(service.url, service.headers), \
            "legacy tokens must be off, as on a default Label Studio 1.23.2"
        yield service
    finally:
        stop(service.proc)


@pytest.fixture(scope="session")
def personal_access_token(label_studio) -> str:
    """A personal access token of the admin, created through the API as the UI does."""
    return create_personal_access_token(label_studio.url, label_studio.headers)


class _ImageHandler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")  # the editor loads images crossOrigin
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def image_server(tmp_path_factory):
    """A plain image web server on 127.0.0.1 (files in ``.files``), for tasks with a plain URL."""
    root = tmp_path_factory.mktemp("image_server")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_ImageHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Service(f"http://127.0.0.1:{server.server_address[1]}", None, None, 0.0, root)
    finally:
        server.shutdown()
        server.server_close()


def start_backend(root: Path, ls_url: str, token: str,
                  extra_env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen, Path]:
    """Start ``python -m backend`` on the tiny weights (new session, log in ``root``); not yet healthy."""
    clip, dino = TINY_WEIGHTS / "clip_tiny.safetensors", TINY_WEIGHTS / "dino_tiny.safetensors"
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "CASS_CLIP_WEIGHTS": str(clip), "CASS_DINO_WEIGHTS": str(dino),
        "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token,
        "CASS_THREADS": os.environ.get("CASS_THREADS", "2"), "LOG_LEVEL": "INFO", "CASS_ALLOW_UNAUTHENTICATED": "true",
        **(extra_env or {}),
    }
    env.pop("REDIS_URL", None)
    log = root / "backend.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return f"http://127.0.0.1:{port}", proc, log


def backend_env_for(image_server: Service) -> dict[str, str]:
    """The backend settings docs/deployment.md gives for images on another local web server."""
    return {"CASS_ALLOWED_HOSTS": image_server.url.split("//", 1)[1]}


def require_tiny_weights() -> None:
    if not (TINY_WEIGHTS / "clip_tiny.safetensors").is_file() or not (TINY_WEIGHTS / "dino_tiny.safetensors").is_file():
        pytest.skip(f"tiny weights not found under {TINY_WEIGHTS}")


def running_backend(root: Path, ls_url: str, token: str, extra_env: dict[str, str] | None = None) -> Service:
    """:func:`start_backend`, healthy; the caller stops ``.proc``."""
    url, proc, log = start_backend(root, ls_url, token, extra_env)
    try:
        started = wait_until_healthy(f"{url}/health", proc, log, BACKEND_START_TIMEOUT_S, "the backend")
    except BaseException:
        stop(proc)
        raise
    return Service(url, proc, log, started)


@pytest.fixture(scope="session")
def backend(label_studio, personal_access_token, image_server, tmp_path_factory):
    """``python -m backend`` on the tiny weights, reading images from the Label Studio above (with
    the personal access token) and from ``image_server``."""
    require_tiny_weights()
    root = tmp_path_factory.mktemp("backend")
    service = running_backend(root, label_studio.url, personal_access_token, backend_env_for(image_server))
    try:
        yield service
    finally:
        stop(service.proc)
        shutil.copy(service.log, root / "backend.final.log")
