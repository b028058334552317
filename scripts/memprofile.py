#!/usr/bin/env python
"""Where the backend's memory goes under concurrent load: the real Predictor (tiny weights by
default), ``--threads`` request threads (gunicorn's thread pool stands in), each predicting
``--requests`` one-task requests over a pool of generated images of several sizes, in one process.

Prints one JSON line: RSS (start, after warm-up, end, peak, samples), Python-level allocations that
grew (tracemalloc top 8 by size difference, when ``--tracemalloc``), the feature cache's bytes, and
the malloc settings used. ``--malloc tuned`` applies :func:`backend.ops.allocator.tune_malloc` (arena count and
a fixed mmap threshold) and trims after each request, ``default`` leaves glibc's defaults, so the two
runs show what the allocator keeps.

    python scripts/memprofile.py --threads 12 --requests 6 --malloc default
    python scripts/memprofile.py --threads 12 --requests 6 --malloc tuned
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv=None) -> int:
    shared = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared")) / "parity" / "weights"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=12)
    p.add_argument("--requests", type=int, default=6, help="requests per thread")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--malloc", choices=["default", "tuned"], default="default")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--clip", default=str(shared / "clip_tiny.safetensors"))
    p.add_argument("--dino", default=str(shared / "dino_tiny.safetensors"))
    args = p.parse_args(argv)
    if args.threads < 1 or args.requests < 1 or args.images < 1:
        p.error("--threads, --requests and --images must be at least 1")

    from backend.ops import allocator as memory

    tuned = memory.tune_malloc() if args.malloc == "tuned" else {}
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "scripts"))
    from loadtest import LABEL_CONFIG, Images  # the load test's label set and images

    from backend.config import Settings
    from backend.controls.label_parse import parse_label_config
    from backend.predict.loading import build_predictor

    start = rss_mb()
    settings = Settings(clip_weights=args.clip, dino_weights=args.dino, threads=args.torch_threads, warmup=True)
    predictor = build_predictor(settings)
    targets = parse_label_config(LABEL_CONFIG)
    images = Images(args.images)
    pngs = [images.png(n) for n in range(args.images)]
    predictor.predict([{"id": 0, "data": {"image": "/data/upload/1/0.png"}}], targets, lambda u, t: pngs[0])
    after_warmup = rss_mb()
    if args.tracemalloc:
        tracemalloc.start(8)
        snap0 = tracemalloc.take_snapshot()
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(round(rss_mb()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors = []

    def worker(w: int):
        for r in range(args.requests):
            n = (w * args.requests + r) % args.images
            task = {"id": n, "data": {"image": f"/data/upload/1/{n}.png"}}
            out = predictor.predict([task], targets, lambda u, t, n=n: pngs[n])
            if "result" not in out[0]:
                errors.append(out[0].get("error"))
            if args.malloc == "tuned":
                memory.trim()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,), name=f"req-{w}") for w in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join(2)
    top = []
    if args.tracemalloc:
        snap1 = tracemalloc.take_snapshot()
        for stat in snap1.compare_to(snap0, "traceback")[:8]:
            top.append({"size_diff_kb": round(stat.size_diff / 1024, 1), "count_diff": stat.count_diff,
                        "where": [f"{f.filename.replace(str(REPO) + '/', '')}:{f.lineno}" for f in stat.traceback][-3:]})
        tracemalloc.stop()
    cache = predictor.cache.stats()
    print(json.dumps({"malloc": args.malloc, "malloc_settings": tuned, "threads": args.threads,
                      "requests": args.threads * args.requests, "errors": len(errors), "error_samples": errors[:2], "seconds": round(elapsed, 1),
                      "rss_mb": {"start": round(start, 1), "after_warmup": round(after_warmup, 1),
                                 "end": round(rss_mb(), 1), "peak": round(hwm_mb(), 1),
                                 "samples": samples[:: max(1, len(samples) // 12)]},
                      "cache_bytes": cache.get("bytes"), "python_growth_top": top}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
