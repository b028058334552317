"""``python -m cass.bench_spectra [--runs N] [--threads T]``: the spectral step's eigenvalues, A/B.

:func:`cass.spectral.top_spectra` computes all eigenvalues of ``2 x windows x heads`` symmetric
``n x n`` float64 Grams (default preset at 640x480: 2 x 6 x 12 of 196 x 196) with numpy's LAPACK,
single-threaded BLAS. This times, interleaved (A B A B ...), one ``eigvalsh`` call on the whole stack
(``single``, the previous code) against the stack split over ``T`` threads (``split``, today's code),
checks that both give bit-identical values, and prints one JSON line of medians with the load average
(the machine may be shared: compare the ratio, not absolute seconds).
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

from .spectral import _eigvalsh


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
    return {"single_s": round(med["single"], 4), "split_s": round(med["split"], 4),
            "speedup": round(med["single"] / med["split"], 2), "bit_identical": identical,
            "matrices": int(grams.shape[0]), "n": n, "threads": threads, "runs": runs,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.bench_spectra", description=__doc__,
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
