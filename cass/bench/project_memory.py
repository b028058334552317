"""Cost of the project memory: bytes per annotated image, segment-head time with 0 / 10 / 1,000 entries.

``python -m cass.bench.project_memory [--runs 5] [--labels 10] [--redis]`` prints one JSON line.

Realistic feature shapes without weights: a 640x480 photo under the default preset is 448x336 at
inference, 6 windows of 14x14 patches, 512-d (CLIP ViT-B/16); features and text embeddings are random
unit vectors (speed does not depend on their values). Each memory entry is one annotated image with
``--labels-per-image`` labels (prototypes: one per window per label), labels drawn from the
vocabulary; the per-label bound (``max_per_label``) applies, so the prototype count is printed too.
``fuse_only_s`` times the memory fusion alone (the added work, less noisy than the difference of
two head timings). The timed head is the segment head as :meth:`cass.CASS.segment` runs it after the (cached) text
embeddings: clustering, window logits, memory fusion, stitching and softmax at 640x480.
``--redis`` starts a throwaway ``redis-server`` and reports Redis's own ``MEMORY USAGE`` per entry.
Timings on a shared machine are noisy: say how loaded it was (``load_avg`` is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from cass.features import ImageFeatures
from cass.head import Stitcher, cluster_queries, postprocess, window_logits
from cass.memory import ProjectMemory
from cass.memory_entry import MemoryEntry
from cass.presets import load_preset
from cass.threads import torch_threads
from cass.vocabulary import Vocabulary


def realistic_features(gen: torch.Generator, dim: int = 512) -> ImageFeatures:
    """A 640x480 photo's feature shapes under the default preset (random unit vectors)."""
    windows = [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
               (112, 336, 0, 224), (112, 336, 112, 336), (112, 336, 224, 448)]
    pf = F.normalize(torch.randn(6, 196, dim, generator=gen), dim=-1)
    gv = F.normalize(torch.randn(1, dim, generator=gen), dim=-1).expand(6, -1).contiguous()
    return ImageFeatures(patch_features=pf, global_vectors=gv, windows=torch.tensor(windows), grid=(14, 14),
                         input_size=(336, 448), original_size=(480, 640),
                         head_pairing=torch.zeros(6, 8, dtype=torch.int64), matching_cost=torch.zeros(6, 8, 8),
                         fingerprint="bench")


def make_memory(n_entries: int, labels: list[str], per_image: int, gen: torch.Generator, dim: int = 512):
    memory = ProjectMemory("bench")
    rng = np.random.default_rng(0)
    for i in range(n_entries):
        names = rng.choice(labels, size=per_image, replace=False)
        protos = {str(n): F.normalize(torch.randn(6, dim, generator=gen), dim=-1).half() for n in names}
        memory.put(MemoryEntry(f"a{i}", i + 1, "bench", protos))
    return memory


def head(features, text, vocab, tp, memory):
    clusters = cluster_queries(text, tp.h_threshold)
    grids = window_logits(features, text, clusters, tp.global_semantics_weight, tp.mean_vector_weight, tp.topk)
    if memory is not None:
        grids = memory.fuse(grids, features, vocab, tp.memory_weight, tp.memory_temperature)
    stitcher = Stitcher(features.windows.tolist(), features.grid, features.input_size, features.original_size)
    return postprocess(grids, stitcher, vocab, tp.logit_scale, tp.prob_thd, False)


def timed(fn, runs: int) -> float:
    fn()  # warm
    best = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def redis_usage(blobs: list[bytes]) -> float | None:
    """Mean Redis ``MEMORY USAGE`` growth per entry (a throwaway redis-server), or None without one."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        for i, blob in enumerate(blobs):
            client.hset("cass:mem:bench", f"a{i}", blob)
        return client.memory_usage("cass:mem:bench", samples=0) / len(blobs)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--labels", type=int, default=10, help="vocabulary size")
    ap.add_argument("--labels-per-image", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--redis", action="store_true", help="also measure Redis MEMORY USAGE per entry")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    tp = load_preset("default").text
    labels = [f"label{i}" for i in range(args.labels)]
    vocab = Vocabulary.from_names(labels)
    features = realistic_features(gen)
    text = F.normalize(torch.randn(len(labels), 512, generator=gen), dim=-1)
    out: dict = {"load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    with torch_threads(args.threads), torch.inference_mode():
        base = timed(lambda: head(features, text, vocab, tp, None), args.runs)
        out["segment_head_s"] = {"none": round(base, 4)}
        out["prototypes"], out["fuse_only_s"] = {}, {}
        clusters = cluster_queries(text, tp.h_threshold)
        grids = window_logits(features, text, clusters, tp.global_semantics_weight, tp.mean_vector_weight, tp.topk)
        for n in (0, 10, 1000):
            memory = make_memory(n, labels, args.labels_per_image, gen)
            out["fuse_only_s"][str(n)] = round(timed(lambda: memory.fuse(grids, features, vocab, tp.memory_weight,
                                                                         tp.memory_temperature), args.runs), 5)
            out["segment_head_s"][str(n)] = round(timed(lambda: head(features, text, vocab, tp, memory), args.runs), 4)
            out["prototypes"][str(n)] = memory.num_prototypes
        out["overhead_ratio"] = {k: round(v / base, 3) for k, v in out["segment_head_s"].items()}
    entry = make_memory(1, labels, args.labels_per_image, gen).entries["a0"].to_bytes()
    out["entry_bytes_per_annotated_image"] = len(entry)
    if args.redis:
        blobs = [e.to_bytes() for e in make_memory(200, labels, args.labels_per_image, gen).entries.values()]
        usage = redis_usage(blobs)
        out["redis_memory_usage_per_entry"] = round(usage) if usage is not None else None
    out.update({"labels": args.labels, "labels_per_image": args.labels_per_image, "windows": 6, "dim": 512,
                "image": "640x480 (default preset: 6 windows)", "max_per_label": ProjectMemory().max_per_label,
                "threads": args.threads, "runs": args.runs, "weights": "none (random features)",
                "load_avg_after": [round(x, 2) for x in os.getloadavg()]})
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
