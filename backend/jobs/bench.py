"""``python -m backend.jobs.bench``: throughput of pre-annotation jobs with 1 and 2 workers.

A real Label Studio (``--label-studio URL --token PAT``, or one started like the e2e test), a real
redis-server (started here), ``N`` tasks of small PNG uploads on the tiny weights with 1 and then 2
``python -m backend worker`` processes (a fresh project and an empty feature cache each time), and
optionally the full-size random ViT-B/16 + ViT-B/8 for ``--full`` tasks with 1 worker. Prints one
JSON line: tasks/s per worker count (from enqueue to the job's end; worker start-up excluded), the
2-worker scaling ratio, duplicates found in Label Studio (must be 0), failed tasks, seconds from
enqueue to the first prediction visible in Label Studio.

``--full-size``: only the full-size random ViT-B/16 + ViT-B/8 (built by ``cass.bench``'s random
state dicts, the official layouts), ``--tasks`` 480x640 images (default 4) on 1 worker: images/s on
this CPU (or GPU with ``CASS_DEVICE``). Every line says its mode, the CPU, its load and the batch
setting (``CASS_JOB_BATCH``), since the figures mean little without them.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from backend.jobs.processes import start_workers, stop_workers
from backend.jobs.spec import MIN_CHUNK

REPO = Path(__file__).resolve().parents[1]


def png(seed: int, size=(24, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def access(url: str, pat: str) -> dict:
    resp = requests.post(f"{url}/api/token/refresh", json={"refresh": pat}, timeout=30)
    resp.raise_for_status()
    return {"Authorization": f"Bearer {resp.json()['access']}"}


def make_project(url: str, pat: str, n: int, seed: int, size) -> int:
    headers = access(url, pat)
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              '<Label value="cat"/><Label value="dog"/><Label value="grass"/></BrushLabels></View>')
    pid = requests.post(f"{url}/api/projects", json={"title": f"jobbench {seed}", "label_config": config},
                        headers=headers, timeout=60).json()["id"]
    for start in range(0, n, 25):
        files = {f"b{seed}_{i}.png": (f"b{seed}_{i}.png", png(seed * 100000 + i, size), "image/png")
                 for i in range(start, min(n, start + 25))}
        requests.post(f"{url}/api/projects/{pid}/import", files=files, headers=headers,
                      timeout=300).raise_for_status()
    return pid


def phase(args, redis_url: str, workers: int, n: int, seed: int, env_extra: dict, size) -> dict:
    import redis

    from backend.labelstudio.client import Projects
    from backend.jobs.queue import Jobs
    from backend.jobs.spec import JobSpec

    conn = redis.Redis.from_url(redis_url)
    conn.flushall()
    pid = make_project(args.label_studio, args.token, n, seed, size)
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "LABEL_STUDIO_URL": args.label_studio,
           "LABEL_STUDIO_API_KEY": args.token, "CASS_THREADS": "1", "CASS_WARMUP": "false",
           "CASS_JOB_HEARTBEAT_S": "2", "CASS_JOB_MAINTENANCE_S": "5", "LOG_LEVEL": "WARNING", **env_extra}
    logs = tempfile.mkdtemp(prefix="jobbench-")
    procs = start_workers([f"{logs}/w{i}.log" for i in range(workers)], env)
    try:
        while conn.hlen("cass:jobs:model_versions") < workers:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; logs in {logs}")
            time.sleep(0.5)
        projects = Projects(args.label_studio, args.token)
        jobs = Jobs(conn, projects)
        t0 = time.monotonic()
        rec = jobs.start(JobSpec(pid, chunk_size=args.chunk_size))
        first = None
        while True:
            rec = jobs.get(rec["id"])
            if first is None and rec["posted"]:
                if any(t["predictions"] for t in projects.tasks(pid)):
                    first = time.monotonic() - t0
            if rec["status"] in ("finished", "failed", "cancelled"):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        counts = [len(t["predictions"]) for t in projects.tasks(pid)]
        return {"workers": workers, "tasks": n, "seconds": round(elapsed, 2),
                "tasks_per_s": round(n / elapsed, 3), "duplicates": sum(max(0, c - 1) for c in counts),
                "missing": sum(c == 0 for c in counts) - rec["failed"], "failed": rec["failed"],
                "first_prediction_s": round(first, 2) if first is not None else None, "status": rec["status"]}
    finally:
        stop_workers(procs)


def full_size_weights(root: Path) -> dict:
    from safetensors.torch import save_file

    from cass.bench.engine import random_clip_state, random_dino_state

    clip, dino = root / "clip_random_b16.safetensors", root / "dino_random_b8.safetensors"
    save_file({k: v.contiguous() for k, v in random_clip_state().items()}, str(clip))
    save_file({k: v.contiguous() for k, v in random_dino_state().items()}, str(dino))
    return {"CASS_CLIP_WEIGHTS": str(clip), "CASS_DINO_WEIGHTS": str(dino)}


def machine() -> dict:
    """CPU model, cores, 1-minute load, torch device and the batch setting, for the JSON line."""
    from cass.bench.floor import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "device": os.environ.get("CASS_DEVICE") or "default", "job_batch": os.environ.get("CASS_JOB_BATCH") or "auto"}


def main(argv: list[str] | None = None) -> int:
    from tests.redis_fixtures import REDIS_SERVER, RedisServer

    p = argparse.ArgumentParser(prog="python -m backend.jobs.bench", description=__doc__)
    p.add_argument("--tasks", type=int, default=None, help="tasks per phase (default 200; 4 with --full-size)")
    p.add_argument("--full-size", action="store_true",
                   help="only the full-size random ViT-B/16 + ViT-B/8 on 1 worker (images/s)")
    p.add_argument("--full", type=int, default=4, help="tasks on the full-size random weights (0: skip)")
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--label-studio", help="URL of a running Label Studio (default: start one)")
    p.add_argument("--token", help="its personal access token")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 4 if args.full_size else 200
    if args.tasks < 1 or args.chunk_size < MIN_CHUNK or args.full < 0:
        p.error(f"--tasks must be at least 1, --chunk-size at least {MIN_CHUNK} (a job's smallest chunk), "
                "--full at least 0")
    tmp = Path(tempfile.mkdtemp(prefix="jobbench-"))
    ls_proc = None
    if not args.label_studio:  # Label Studio as the e2e tests run it (legacy tokens off): a personal access token
        from tests.e2e.conftest import running_label_studio
        from tests.e2e.label_studio_api import create_personal_access_token

        ls_bin = Path(os.environ.get("LS_VENV", "/opt/ls-venv")) / "bin" / "label-studio"
        service = running_label_studio(ls_bin, tmp)
        ls_proc = service.proc
        args.label_studio, args.token = service.url, create_personal_access_token(service.url, service.headers)
    server = RedisServer(REDIS_SERVER, tmp).start()
    shared = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared")) / "parity" / "weights"
    tiny = {"CASS_CLIP_WEIGHTS": str(shared / "clip_tiny.safetensors"),
            "CASS_DINO_WEIGHTS": str(shared / "dino_tiny.safetensors")}
    try:
        if args.full_size:
            full = phase(args, server.url, 1, args.tasks, 3, full_size_weights(tmp), (480, 640))
            print(json.dumps({"bench": "jobs", "mode": "full-size", "weights": "random ViT-B/16 + ViT-B/8",
                              "tasks": args.tasks, "image": "480x640", "images_per_s": full["tasks_per_s"],
                              "seconds": full["seconds"], "duplicates": full["duplicates"],
                              "failed": full["failed"], "missing": full["missing"], **machine()}), flush=True)
            return 0
        one = phase(args, server.url, 1, args.tasks, 1, tiny, (24, 32))
        two = phase(args, server.url, 2, args.tasks, 2, tiny, (24, 32))
        out = {"bench": "jobs", "mode": "tiny", "weights": "tiny", "tasks": args.tasks, "chunk_size": args.chunk_size,
               "tasks_per_s": {"1": one["tasks_per_s"], "2": two["tasks_per_s"]},
               "scaling_2_workers": round(two["tasks_per_s"] / one["tasks_per_s"], 3),
               "duplicates": one["duplicates"] + two["duplicates"], "missing": one["missing"] + two["missing"],
               "failed": one["failed"] + two["failed"],
               "first_prediction_s": {"1": one["first_prediction_s"], "2": two["first_prediction_s"]},
               **machine()}
        if args.full:
            full = phase(args, server.url, 1, args.full, 3, full_size_weights(tmp), (480, 640))
            out["full_size_random"] = {"tasks": args.full, "images_per_s": full["tasks_per_s"],
                                       "duplicates": full["duplicates"], "failed": full["failed"]}
        print(json.dumps(out), flush=True)
    finally:
        server.stop()
        if ls_proc is not None:
            from tests.e2e.conftest import stop

            stop(ls_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
