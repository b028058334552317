"""Helpers of :mod:`cass.bench`: the analytic FLOP floor, the machine's matmul rate and CPU model,
and a Redis to read features back from.

FLOPs count a multiply-add as 2. A ViT block on ``T`` tokens of width ``D`` (MLP ``4D``) costs
``24 T D^2`` (qkv, out-proj, MLP) ``+ 4 T^2 D`` (scores and weighted sum). What CASS runs per image:
DINO on every window up to the last block's qkv (``6 T D^2`` there), CLIP's first ``L-1`` blocks plus
``ln_1`` + qkv of the last one on every window, CLIP's full trunk and last block on the whole image,
and the spectral head's dense matmuls (key grams of CLIP and DINO, attention times values,
out-proj, ln_post proj). Layer norms, GELU, softmax, the SVDs and the interpolations are not
counted, so the floor is a lower bound.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time

import torch


def vit_flops(tokens: int, width: int, blocks: int, last_qkv_only: bool, patch_in: int) -> float:
    """FLOPs of a patch embedding (``patch_in`` = 3 * p * p inputs per patch) and ``blocks`` blocks;
    with ``last_qkv_only`` the last block only computes its qkv projection."""
    full = 24 * tokens * width ** 2 + 4 * tokens ** 2 * width
    embed = 2 * (tokens - 1) * patch_in * width
    if last_qkv_only:
        return embed + (blocks - 1) * full + 6 * tokens * width ** 2
    return embed + blocks * full


def cass_flops(model, n_windows: int, crop: int, input_size: tuple[int, int]) -> dict[str, float]:
    """Analytic FLOPs of one encode, by stage (see the module docstring)."""
    visual = model.clip.visual
    width, ps = model.width, model.patch_size
    clip_blocks = len(visual.transformer.resblocks)
    dcfg = model.dino.cfg
    dino_tokens = (crop // dcfg.patch_size) ** 2 + 1
    clip_tokens = (crop // ps) ** 2 + 1
    whole_tokens = (input_size[0] // ps) * (input_size[1] // ps) + 1
    n = clip_tokens - 1
    embed = model.embed_dim
    spectral = n_windows * (2 * 2 * n * n * width + 2 * n * n * width + 2 * n * width * width
                            + 2 * n * width * embed)
    return {
        "dino": n_windows * vit_flops(dino_tokens, dcfg.embed_dim, dcfg.depth, True, 3 * dcfg.patch_size ** 2),
        "clip_windows": n_windows * vit_flops(clip_tokens, width, clip_blocks, True, 3 * ps * ps),
        "clip_global": vit_flops(whole_tokens, width, clip_blocks, False, 3 * ps * ps),
        "spectral_matmuls": float(spectral),
    }


def matmul_rate(seconds: float = 1.0) -> float:
    """Best measured fp32 FLOP/s of ``(1024 x 768) @ (768 x 3072)`` at torch's current thread count."""
    a, b = torch.randn(1024, 768), torch.randn(768, 3072)
    flops = 2 * 1024 * 768 * 3072
    torch.mm(a, b)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return flops / best


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other processes on a shared machine)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class BenchRedis:
    """``REDIS_URL`` when set and reachable, else a private ``redis-server`` on a free loopback port
    (stopped by :meth:`close`), else ``None`` (the caller then reads features from memory)."""

    def __init__(self) -> None:
        import redis

        self.proc = None
        self.client = None
        self.where = "none"
        url = os.environ.get("REDIS_URL")
        if url:
            client = redis.Redis.from_url(url, socket_timeout=5)
            try:
                client.ping()
                self.client, self.where = client, "REDIS_URL"
                return
            except redis.RedisError:
                pass
        binary = shutil.which("redis-server")
        if binary is None:
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        for _ in range(100):
            try:
                client.ping()
                self.client, self.where = client, "redis-server started by the bench"
                return
            except redis.RedisError:
                time.sleep(0.05)
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
