#!/usr/bin/env python
"""Does the README's run command give predictions in a default Label Studio? (issue 22)

Reads the run command from README.md's *Set up and run* block (the ``LABEL_STUDIO_URL=...
.venv/bin/python -m backend ...`` line and its continuation) and runs it **as written** in ``--repo``
(a fresh clone whose ``.venv`` was made with the README's install command), with exactly two
substitutions: ``<your-personal-access-token>`` becomes a personal access token created through Label
Studio's API (as a user does in *Account & Settings*), and the weights are the tiny random ones
(``CASS_CLIP_WEIGHTS`` / ``CASS_DINO_WEIGHTS``: the official weights can't be downloaded where this
runs). Label Studio 1.23.2 runs with its defaults and only the settings the README names for a backend
on the same machine (``ML_BLOCK_LOCAL_IP=false``, ``SSRF_PROTECTION_ENABLED=false``), on port 8080 as
the command's ``LABEL_STUDIO_URL`` says (another free port, substituted, when 8080 is taken).

Then what a user does: a BrushLabels project, two uploaded images, *Connect Model* with the README's
address, *Retrieve Predictions* (the Data Manager action the UI sends). Prints one JSON line and exits
0 when every task has a stored prediction with regions, 1 when not, 2 when something failed before.

    python scripts/readme_check.py [--repo /tmp/fresh-clone] [--install gpu|cpu]

``--install``: run that README install line in ``--repo`` first (the clone must not have ``.venv``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import (  # noqa: E402  (the e2e helpers and Label Studio's settings)
    ADMIN_PASSWORD, ADMIN_USER, LS_VENV, TINY_WEIGHTS, start_label_studio, stop, tail, wait_until_healthy,
)
from tests.e2e.label_studio_api import OFFLINE_SETTINGS, create_personal_access_token, login  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="cat"/><Label value="dog"/><Label value="grass"/></BrushLabels></View>')
TOKEN_PLACEHOLDER = "<your-personal-access-token>"


def readme_commands(readme: Path) -> dict[str, str]:
    """``{"cpu": install, "gpu": install, "run": command}`` from the *Set up and run* bash block."""
    text = readme.read_text()
    section = text[text.index("## Set up and run"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        else:
            joined.append(line.strip())
    installs = [c for c in joined if "pip install" in c]
    runs = [c for c in joined if "-m backend" in c]
    if len(installs) != 2 or len(runs) != 1:
        raise SystemExit(f"README's 'Set up and run' block changed shape: {joined}")
    cpu = next(c for c in installs if "whl/cpu" in c)
    gpu = next(c for c in installs if c is not cpu)
    return {"cpu": cpu, "gpu": gpu, "run": runs[0]}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def user_path(ls_url: str, headers: dict, backend_url: str) -> dict:
    """Project, two uploads, Connect Model, Retrieve Predictions; what Label Studio stored."""
    s = requests.Session()
    s.headers.update(headers)

    def call(method, path, **kw):
        resp = s.request(method, ls_url + path, timeout=120, **kw)
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    pid = call("POST", "/api/projects", json={"title": "README check", "label_config": CONFIG})["id"]
    call("POST", f"/api/projects/{pid}/import",
         files={f"img{i}.png": (f"img{i}.png", png(i), "image/png") for i in range(2)})
    ml = call("POST", "/api/ml", json={"url": backend_url, "project": pid, "title": "CASS", "auth_method": "NONE",
                                       "is_interactive": False})
    ids = [t["id"] for t in call("GET", "/api/tasks", params={"project": pid})["tasks"]]
    started = time.monotonic()
    action = call("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                  json={"selectedItems": {"all": False, "included": ids}})
    retrieve_s = time.monotonic() - started
    stored = {t: call("GET", "/api/predictions", params={"task": t}) for t in ids}
    return {"connect": ml.get("readable_state"), "model_version": ml.get("model_version"), "tasks": len(ids),
            "retrieve_answer": action, "retrieve_s": round(retrieve_s, 1),
            "stored": {str(t): [{"model_version": p["model_version"], "regions": len(p["result"]),
                                 "labels": sorted({lab for r in p["result"] for k, v in r["value"].items()
                                                   if k.endswith("labels") for lab in v})} for p in ps]
                       for t, ps in stored.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="a clone with .venv (default: this one)")
    parser.add_argument("--install", choices=("cpu", "gpu"), help="run that README install line first")
    parser.add_argument("--keep-dir", action="store_true")
    args = parser.parse_args(argv)
    commands = readme_commands(args.repo / "README.md")
    report: dict = {"run_command": commands["run"]}
    root = Path(tempfile.mkdtemp(prefix="readme_check_"))
    procs: list[subprocess.Popen] = []
    try:
        if args.install:
            started = time.monotonic()
            subprocess.run(["bash", "-c", commands[args.install]], cwd=args.repo, check=True)
            report["install"] = {"command": commands[args.install], "seconds": round(time.monotonic() - started)}
        port = 8080 if port_free(8080) else int(socket.create_server(("127.0.0.1", 0)).getsockname()[1])
        readme_settings = {**OFFLINE_SETTINGS, "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
        ls_url, ls_proc, ls_log, _ = start_label_studio(LS_VENV / "bin" / "label-studio", root / "ls", port=port,
                                                        settings=readme_settings)
        procs.append(ls_proc)
        wait_until_healthy(f"{ls_url}/health", ls_proc, ls_log, 300, "Label Studio")
        headers = login(ls_url, ADMIN_USER, ADMIN_PASSWORD)
        token = create_personal_access_token(ls_url, headers)
        run = commands["run"].replace(TOKEN_PLACEHOLDER, shlex.quote(token))
        if port != 8080:
            run = run.replace("http://localhost:8080", f"http://localhost:{port}")
        m = re.search(r"--host\s+(\S+)\s+--port\s+(\d+)", run)
        backend_url = f"http://{m.group(1)}:{m.group(2)}" if m else "http://127.0.0.1:9090"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CASS_", "LABEL_STUDIO_", "BASIC_AUTH_", "REDIS_URL"))}
        env.update(CASS_CLIP_WEIGHTS=str(TINY_WEIGHTS / "clip_tiny.safetensors"),
                   CASS_DINO_WEIGHTS=str(TINY_WEIGHTS / "dino_tiny.safetensors"))
        report["substituted"] = ["the personal access token", "CASS_CLIP_WEIGHTS/CASS_DINO_WEIGHTS: tiny weights"] + \
            ([f"Label Studio on port {port} (8080 was taken)"] if port != 8080 else [])
        be_log = root / "backend.log"
        with open(be_log, "wb") as out:
            be = subprocess.Popen(["bash", "-c", run], cwd=args.repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(be)
        wait_until_healthy(f"{backend_url}/health", be, be_log, 300, "the backend")
        report["health_label_studio"] = requests.get(f"{backend_url}/health", timeout=30).json().get("label_studio")
        report.update(user_path(ls_url, headers, backend_url))
    except Exception as exc:  # report what failed, with the logs' tails
        report["error"] = f"{type(exc).__name__}: {exc}"
        for name in ("ls/label_studio.log", "backend.log"):
            if (root / name).exists():
                report[f"tail {name}"] = tail(root / name, 15)
        print(json.dumps(report))
        return 2
    finally:
        for proc in reversed(procs):
            stop(proc)
        if not args.keep_dir:
            subprocess.run(["rm", "-rf", str(root)])
    ok = report["connect"] == "Connected" and report["tasks"] > 0 and all(
        len(ps) == 1 and ps[0]["regions"] > 0 and ps[0]["model_version"] == report["model_version"]
        for ps in report["stored"].values())
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
