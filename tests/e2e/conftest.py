"""A real Label Studio and this backend as subprocesses, for ``@pytest.mark.e2e`` tests.

Label Studio lives in its own venv (``$LS_VENV`` or ``/opt/ls-venv``), installed by
``scripts/install_label_studio.sh`` when missing. Each session gets a fresh data dir and free ports.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared"))
TINY_WEIGHTS = SHARED / "parity" / "weights"
LS_VENV = Path(os.environ.get("LS_VENV", "/opt/ls-venv"))
LS_VERSION = "1.23.2"
LEGACY_TOKEN = "e2e0123456789abcdef0123456789abcdef0123"
LS_START_TIMEOUT_S = float(os.environ.get("E2E_LS_START_TIMEOUT_S", 300))
BACKEND_START_TIMEOUT_S = float(os.environ.get("E2E_BACKEND_START_TIMEOUT_S", 300))


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
    proc: subprocess.Popen
    log: Path
    started_s: float
    files: Path | None = None  # Label Studio: LOCAL_FILES_DOCUMENT_ROOT
    headers: dict = field(default_factory=dict)  # Label Studio: the admin's API auth


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


ADMIN_USER, ADMIN_PASSWORD = "admin@example.com", "adminpass123"


def start_label_studio(exe: Path, root: Path) -> tuple[str, subprocess.Popen, Path, Path]:
    """Start Label Studio ``exe`` on 127.0.0.1 with a fresh data dir under ``root`` (admin user with
    the legacy token, local files under ``root/files``); not yet healthy. Returns url, process, log,
    local-files root."""
    data, files = root / "data", root / "files"
    data.mkdir()
    files.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": ADMIN_USER,
        "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD, "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files), "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false", "LABEL_STUDIO_HOST": url, "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
    }
    log = root / "label_studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data)],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return url, proc, log, files


@pytest.fixture(scope="session")
def label_studio(label_studio_bin, tmp_path_factory):
    """A fresh Label Studio on 127.0.0.1 (admin user with a legacy token, local files under ``files``)."""
    root = tmp_path_factory.mktemp("label_studio")
    url, proc, log, files = start_label_studio(label_studio_bin, root)
    try:
        started = wait_until_healthy(f"{url}/health", proc, log, LS_START_TIMEOUT_S, "Label Studio")
        yield Service(url, proc, log, started, files, {"Authorization": f"Token {LEGACY_TOKEN}"})
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def personal_access_token(label_studio) -> str:
    """A personal access token of the admin (the backend exchanges it for access tokens)."""
    resp = requests.post(f"{label_studio.url}/api/token/", headers=label_studio.headers, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["token"]


def start_backend(root: Path, ls_url: str, token: str) -> tuple[str, subprocess.Popen, Path]:
    """Start ``python -m backend`` on the tiny weights (new session, log in ``root``); not yet healthy."""
    clip, dino = TINY_WEIGHTS / "clip_tiny.safetensors", TINY_WEIGHTS / "dino_tiny.safetensors"
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "CASS_CLIP_WEIGHTS": str(clip), "CASS_DINO_WEIGHTS": str(dino),
        "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token,
        "CASS_THREADS": os.environ.get("CASS_THREADS", "2"), "LOG_LEVEL": "INFO",
    }
    env.pop("REDIS_URL", None)
    log = root / "backend.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return f"http://127.0.0.1:{port}", proc, log


@pytest.fixture(scope="session")
def backend(label_studio, personal_access_token, tmp_path_factory):
    """``python -m backend`` on the tiny weights, reading images from the Label Studio above."""
    if not (TINY_WEIGHTS / "clip_tiny.safetensors").is_file() or not (TINY_WEIGHTS / "dino_tiny.safetensors").is_file():
        pytest.skip(f"tiny weights not found under {TINY_WEIGHTS}")
    root = tmp_path_factory.mktemp("backend")
    url, proc, log = start_backend(root, label_studio.url, personal_access_token)
    try:
        started = wait_until_healthy(f"{url}/health", proc, log, BACKEND_START_TIMEOUT_S, "the backend")
        yield Service(url, proc, log, started)
    finally:
        stop(proc)
        shutil.copy(log, root / "backend.final.log")
