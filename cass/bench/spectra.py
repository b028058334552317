"""``python -m cass.bench.spectra [--runs N] [--threads T]``: the spectral step's eigenvalues, A/B.

:func:`cass.spectral.top_spectra` computes all eigenvalues of ``2 x windows x heads`` symmetric
``n x n`` float64 Grams (default preset at 640x480: 2 x 6 x 12 of 196 x 196) with numpy's LAPACK,
single-threaded BLAS. This times, interleaved (A B A B ...), one ``eigvalsh`` call on the whole stack
(``single``, the previous code) against the stack split over ``T`` threads (``split``, today's code),
checks that both give bit-identical values, and prints one JSON line of medians with the load average
(the machine may be shared: compare the ratio, not absolute seconds). ``spectral_stages_s``: each
piece of the whole spectral step (Grams, eigenvalues, Hungarian matching, low-rank SVD and fusion,
softmax and attention) on random full-size tensors, at ``T`` torch threads, and ``svd_torch_s`` /
``svd_numpy_s``: the low-rank SVD's small ``(72, 10, 196)`` float64 SVD in torch (the previous
code) and numpy (today's).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from cass.spectral import _eigvalsh


def spectral_stages(runs: int, windows: int = 6, heads: int = 12, n: int = 196, d: int = 64) -> dict:
    """Median seconds of each piece of the spectral step on random full-size tensors (the default
    preset's 6 windows of 14 x 14 CLIP patches, 12 heads of 64), as ``encode`` runs them."""
    import torch

    from cass import spectral

    gen = torch.Generator().manual_seed(0)
    k = torch.randn(windows, heads, n, d, generator=gen)
    dkeys = spectral._fp16(torch.randn(windows, heads, n, d, generator=gen))
    v = torch.randn(windows, heads, n, d, generator=gen)
    prior = spectral.gaussian_prior(14, 14, 5.0)
    state: dict = {}

    def grams():
        state["clip"] = (k @ k.transpose(-1, -2)) * d ** -0.5
        state["dino"] = spectral.gram_fp16(spectral.match_key_range_fp16(dkeys, k), d ** -0.5)

    def spectra():
        state["cost"] = spectral.wasserstein_cost(spectral.top_spectra(state["dino"], 20),
                                                  spectral.top_spectra(state["clip"], 20))

    def hungarian():
        state["col"] = torch.stack([spectral.match_heads(c) for c in state["cost"]])

    def fuse():
        draw = torch.Generator().manual_seed(0)
        draws = [torch.randn(n, 10, dtype=torch.float64, generator=draw) for _ in range(windows * heads)]
        state["fused"] = spectral.fuse_heads(state["clip"], state["dino"], state["cost"], state["col"], draws,
                                             10, True, 10.0)

    def attend():
        torch.softmax(state["fused"] + prior, dim=-1) @ v

    def svd_ab() -> dict:
        """The randomized SVD's small SVD, torch.linalg.svd vs numpy's (today's), interleaved."""
        b = torch.randn(windows * heads, 10, n, dtype=torch.float64, generator=gen)
        ab = {"svd_torch": lambda: torch.linalg.svd(b, full_matrices=False),
              "svd_numpy": lambda: np.linalg.svd(b.numpy(), full_matrices=False)}
        out = {name: [] for name in ab}
        with threadpool_limits(1, user_api="blas"):
            for _ in range(runs):
                for name, fn in ab.items():
                    t0 = time.perf_counter()
                    fn()
                    out[name].append(time.perf_counter() - t0)
        return {f"{name}_s": round(statistics.median(t), 4) for name, t in out.items()}

    stages = {"grams": grams, "eigenvalues": spectra, "hungarian": hungarian, "fuse_lowrank_svd": fuse,
              "softmax_attend": attend}
    times = {name: [] for name in stages}
    with torch.inference_mode():
        for _ in range(runs):
            for name, fn in stages.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: round(statistics.median(t), 4) for name, t in times.items()} | svd_ab()


def run(runs: int = 4, threads: int = 2, windows: int = 6, heads: int = 12, n: int = 196) -> dict:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(2 * windows * heads, n, 64))
    grams = keys @ keys.transpose(0, 2, 1) / 8.0  # (2*W*H, n, n) float64, symmetric, rank 64
    variants = {"single": lambda: _eigvalsh(grams, 1), "split": lambda: _eigvalsh(grams, threads)}
    load_before = list(os.getloadavg())
    with threadpool_limits(1, user_api="blas"):
        identical = bool(np.array_equal(variants["single"](), variants["split"]()))
        times = {k: [] for k in variants}
        for _ in range(runs):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stages = spectral_stages(runs)
    finally:
        torch.set_num_threads(saved)
    total = sum(v for name, v in stages.items() if not name.startswith("svd_"))
    return {"spectral_stages_s": stages, "spectral_total_s": round(total, 4), "single_s": round(med["single"], 4), "split_s": round(med["split"], 4),
            "speedup": round(med["single"] / med["split"], 2), "bit_identical": identical,
            "matrices": int(grams.shape[0]), "n": n, "threads": threads, "runs": runs,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.bench.spectra", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be >= 1")
    print(json.dumps(run(args.runs, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
