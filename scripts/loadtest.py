#!/usr/bin/env python
"""Load test of the ML backend on loopback: N concurrent clients for a bounded time.

Starts (or targets, with --url) a backend on 127.0.0.1 that fetches its images from a small HTTP server
this script runs on 127.0.0.1 (it plays Label Studio: ``LABEL_STUDIO_URL``, ``/data/upload/<n>.png``).
``--clients`` threads send Label Studio-like ``/predict`` requests back to back, ``--batch-clients`` of
them with ``--batch-size`` tasks (a "Retrieve predictions"), the others with one task (annotators
opening tasks). Images come from a pool of ``--images`` generated pictures of a few sizes, so there are
feature-cache misses and hits. A client that gets 503 waits for its Retry-After and re-sends with the
reservation ticket the 503 handed it (its ``requests.Session`` keeps the ``cass_ticket`` cookie).

Prints one JSON line: requests, tasks, throughput, p50/p95/max latency, answers by status, transport
errors, per-task errors, and the backend process's resident memory (start, end, peak, per-half maxima
and samples). Exit status 1 if any answer was a 5xx (busy 503s included) or a transport error.

    python scripts/loadtest.py --clients 8 --duration 120               # gunicorn + tiny weights
    python scripts/loadtest.py --server module --clients 4 --duration 10  # python -m backend
    python scripts/loadtest.py --url http://127.0.0.1:9090 --pid 1234     # a running backend
                                                                          # (its LABEL_STUDIO_URL must
                                                                          # serve the images: see --serve-only)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.conftest import stop  # noqa: E402  (stop a process group: TERM, then KILL)
from scripts.loadtest_backend import Images, children, loopback_only, memory_mb, serve_images, start_backend  # noqa: E402

SHARED = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared"))
TINY = SHARED / "parity" / "weights"
LABEL_CONFIG = ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>"
                "<Label value='sky'/><Label value='tree' predicted_values='bush, grass'/><Label value='road'/>"
                "<Label value='building'/></BrushLabels></View>")


# ---------------------------------------------------------------------------------------------
# the clients
# ---------------------------------------------------------------------------------------------
def run_clients(args, url: str, deadline: float, auth) -> list[dict]:
    records: list[dict] = []
    lock = threading.Lock()

    def client(index: int):
        rng = random.Random(args.seed * 1000 + index)
        batch = args.batch_size if index < args.batch_clients else 1
        session = requests.Session()
        task_id = index * 1_000_000
        while time.monotonic() < deadline:
            tasks = []
            for _ in range(batch):
                task_id += 1
                tasks.append({"id": task_id, "data": {"image": f"/data/upload/1/{rng.randrange(args.images)}.png"}})
            project = index % args.projects + 1 if args.projects else index + 1
            body = {"tasks": tasks, "project": f"{project}.1700000000", "label_config": LABEL_CONFIG,
                    "params": {"login": None, "password": None, "context": None}}
            t0 = time.monotonic()
            rec = {"t": t0, "tasks": batch, "batch": batch > 1, "client": index}
            try:
                resp = session.post(f"{url}/predict", json=body, timeout=args.request_timeout, auth=auth)
                rec["status"] = resp.status_code
                if resp.status_code == 200:
                    results = resp.json()["results"]
                    rec["task_errors"] = sum(1 for r in results if "result" not in r)
                    if len(results) != batch:
                        rec["error"] = "wrong number of results"
                elif resp.status_code == 503:
                    rec["retry_after"] = resp.headers.get("Retry-After")
                    rec["ticket"] = bool(resp.headers.get("X-CASS-Ticket"))
                    rec["busy"] = str(resp.json().get("error", "")).startswith("busy")
            except requests.RequestException as exc:
                rec["error"] = type(exc).__name__
                rec["error_detail"] = str(exc)[:300]
            rec["latency"] = time.monotonic() - t0
            with lock:
                records.append(rec)
            if rec.get("status") == 503:
                time.sleep(min(float(rec.get("retry_after") or 1), max(0.0, deadline - time.monotonic())))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.request_timeout + 30)
    return records


def per_client(records: list[dict], clients: int, start: float, end: float) -> dict:
    """Fairness: successes per client, the fewest successes of any client in any whole minute, and
    the longest time any client went without a success (start and end of the run included)."""
    done: dict[int, list[float]] = {i: [] for i in range(clients)}
    for r in records:
        if r.get("status") == 200:
            done[r["client"]].append(r["t"] + r["latency"])
    minutes = max(1, int((end - start) // 60))
    min_per_minute, max_gap = None, 0.0
    for times in done.values():
        times.sort()
        per_minute = [sum(1 for t in times if start + 60 * m <= t < start + 60 * (m + 1)) for m in range(minutes)]
        low = min(per_minute)
        min_per_minute = low if min_per_minute is None else min(min_per_minute, low)
        edges = [start, *times, end]
        max_gap = max(max_gap, max(b - a for a, b in zip(edges, edges[1:])))
    counts = sorted(len(t) for t in done.values())
    return {"successes_min": counts[0] if counts else 0, "successes_max": counts[-1] if counts else 0,
            "clients_without_success": sum(1 for c in counts if c == 0),
            "min_successes_per_minute": min_per_minute, "max_gap_between_successes_s": round(max_gap, 1)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (requests in flight finish)")
    p.add_argument("--batch-clients", type=int, default=1, help="clients that send batches (default 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--projects", type=int, default=4, help="projects the clients belong to (client i: project i %% N + 1; 0 = one per client)")
    p.add_argument("--images", type=int, default=200, help="distinct images in the pool (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", choices=["gunicorn", "module"], default="gunicorn",
                   help="how to start the backend: gunicorn (1 worker, --threads) or python -m backend")
    p.add_argument("--threads", type=int, default=20, help="gunicorn threads (default 20, the image's THREADS)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="CASS_THREADS of the backend (default: unset, as in the image: torch's own choice)")
    p.add_argument("--clip", type=Path, default=TINY / "clip_tiny.safetensors")
    p.add_argument("--dino", type=Path, default=TINY / "dino_tiny.safetensors")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra backend environment")
    p.add_argument("--url", help="target a running backend on loopback instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the backend process to measure")
    p.add_argument("--user", help="basic auth user (with --password)")
    p.add_argument("--password")
    p.add_argument("--serve-only", action="store_true", help="only serve the images (prints their URL) until ^C")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--log-level", default="WARNING", help="backend LOG_LEVEL (default WARNING)")
    p.add_argument("--keep-log", type=Path, help="copy the backend log here")
    p.add_argument("--records", type=Path, help="write every request (start, client, tasks, status, latency; "
                                                "seconds from the start) here, one JSON object per line")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or not 0 <= args.batch_clients <= args.clients:
        p.error("need --clients >= 1, --duration > 0 and 0 <= --batch-clients <= --clients")

    images = Images(args.images, args.seed)
    server, images_url = serve_images(images)
    if args.serve_only:
        print(json.dumps({"label_studio_url": images_url, "images": f"/data/upload/1/<0..{args.images - 1}>.png"}),
              flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            return 0
    for n in range(args.images):  # generated before the clock starts
        images.png(n)

    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="cass-loadtest-")
    log_path = Path(tmp.name) / "backend.log"
    try:
        if args.url:
            loopback_only(args.url)
            url, pid = args.url.rstrip("/"), args.pid
        else:
            proc, url = start_backend(args, images_url, log_path)
            workers = children(proc.pid) if args.server == "gunicorn" else []
            pid = workers[0] if workers else proc.pid
        auth = (args.user, args.password) if args.user else None
        samples: list[tuple[float, float]] = []
        stop_sampling = threading.Event()

        def sample():
            while not stop_sampling.is_set():
                m = memory_mb(pid) if pid else None
                if m:
                    samples.append((time.monotonic(), m[0]))
                stop_sampling.wait(1.0)

        start_mem = memory_mb(pid) if pid else None
        load_before = round(os.getloadavg()[0], 2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        records = run_clients(args, url, t0 + args.duration, auth)
        elapsed = time.monotonic() - t0
        stop_sampling.set()
        sampler.join(5)
        end_mem = memory_mb(pid) if pid else None
        health = requests.get(f"{url}/health", timeout=10).json()
        try:
            metrics = requests.get(f"{url}/metrics?format=json", timeout=10, auth=auth).json()
        except (requests.RequestException, ValueError):
            metrics = {}
    finally:
        if proc is not None:
            stop(proc)
        server.shutdown()
        if args.keep_log and log_path.exists():
            args.keep_log.write_bytes(log_path.read_bytes())
        tmp.cleanup()

    from cass.bench.floor import cpu_model  # (imports torch: here, after the load, not at start)

    ok = [r for r in records if r.get("status") == 200]
    status = Counter(str(r["status"]) for r in records if "status" in r)
    errors = Counter(r["error"] for r in records if "error" in r)
    latencies = [r["latency"] for r in ok]
    singles = [r["latency"] for r in ok if not r["batch"]]
    batches = [r["latency"] for r in ok if r["batch"]]
    half = t0 + elapsed / 2
    first = [m for t, m in samples if t < half]
    second = [m for t, m in samples if t >= half]
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    report = {
        "clients": args.clients, "batch_clients": args.batch_clients, "batch_size": args.batch_size,
        "torch_threads": args.torch_threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "server": "external" if args.url else args.server, "duration_s": round(elapsed, 1),
        "requests": len(records), "tasks": sum(r["tasks"] for r in ok),
        "throughput_rps": round(len(ok) / elapsed, 2), "tasks_per_s": round(sum(r["tasks"] for r in ok) / elapsed, 2),
        "latency_ms": {"p50": ms(percentile(latencies, 50)), "p95": ms(percentile(latencies, 95)),
                       "max": ms(max(latencies) if latencies else None),
                       "single_p50": ms(percentile(singles, 50)), "single_p95": ms(percentile(singles, 95)),
                       "batch_p50": ms(percentile(batches, 50)), "batch_p95": ms(percentile(batches, 95))},
        "status": dict(sorted(status.items())), "errors": dict(errors),
        "server_errors": sum(n for s, n in status.items() if s.startswith("5")),
        "busy_503": sum(1 for r in records if r.get("status") == 503),
        "busy_503_with_retry_after": sum(1 for r in records if r.get("status") == 503 and r.get("retry_after")
                                         and r.get("busy")),
        "busy_503_with_ticket": sum(1 for r in records if r.get("status") == 503 and r.get("ticket")),
        "task_errors": sum(r.get("task_errors", 0) for r in ok),
        "rss_mb": {"start": round(start_mem[0], 1) if start_mem else None,
                   "end": round(end_mem[0], 1) if end_mem else None,
                   "peak": round(end_mem[1], 1) if end_mem else None,
                   "max_first_half": round(max(first), 1) if first else None,
                   "max_second_half": round(max(second), 1) if second else None,
                   "samples": [round(m) for _, m in samples[:: max(1, len(samples) // 12)]]},
        "cache": {k: (metrics.get("cache") or {}).get(k) for k in ("backend", "hits", "misses", "entries", "bytes")},
        "health_degraded": health.get("degraded"),
        "inference": health.get("inference"),
    }
    report["per_client"] = per_client(records, args.clients, t0, t0 + elapsed)
    if args.records:
        with args.records.open("w") as f:
            for r in sorted(records, key=lambda r: r["t"]):
                f.write(json.dumps({**r, "t": round(r["t"] - t0, 3), "latency": round(r["latency"], 3)}) + "\n")
    report["server_errors_not_busy"] = sum(1 for r in records if str(r.get("status", "")).startswith("5")
                                           and not (r.get("status") == 503 and r.get("busy")))
    print(json.dumps(report), flush=True)
    return 1 if report["server_errors"] or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
