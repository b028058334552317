"""CASS's spectral distillation of the DINO attention graph into CLIP's last block.

Pure tensor functions, batched over a leading axis (windows x heads). Each follows the official code
(see ``shared/parity/README.md`` section 5.3, steps 15-26), including its quirks:

* the DINO key range matching and DINO Gram run in float16 (:func:`match_key_range_fp16`,
  :func:`gram_fp16`);
* the Hungarian matching *maximises* the spectral distance, and output head ``h`` fuses CLIP head
  ``h`` with DINO head ``col[h]`` using the weight ``1 - cost[h, col[h]]`` (row/column swapped
  relative to the assignment; :func:`fuse_heads`);
* the low-rank DINO graph always has rank 10 (the official energy-threshold search returns its first
  try), computed with ``torch.svd_lowrank``'s randomized algorithm (:func:`randomized_svd`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from concurrent.futures import ThreadPoolExecutor

from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

_EIG_POOL: ThreadPoolExecutor | None = None


def _eig_pool() -> ThreadPoolExecutor:
    global _EIG_POOL
    if _EIG_POOL is None:
        _EIG_POOL = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="cass-eig")
    return _EIG_POOL


def _eigvalsh(mats: np.ndarray, workers: int) -> np.ndarray:
    """``np.linalg.eigvalsh`` of a ``(B, n, n)`` float64 stack, split into ``workers`` chunks that run
    on threads (LAPACK releases the GIL; each matrix gets the same single-threaded LAPACK call, so
    the values are bit-identical to one call)."""
    workers = max(1, min(workers, mats.shape[0]))
    if workers == 1:
        return np.linalg.eigvalsh(mats)
    return np.concatenate(list(_eig_pool().map(np.linalg.eigvalsh, np.array_split(mats, workers))))


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to float16 and back (one fp16 rounding step)."""
    return x.to(torch.float16).to(torch.float32)


def match_key_range_fp16(dino_keys: torch.Tensor, clip_keys: torch.Tensor) -> torch.Tensor:
    """Map the DINO keys' global value range onto the CLIP keys' range, with the official fp16 steps.

    Args:
        dino_keys: ``(B, H, n, d)`` float32 holding float16 values (the resized fp16 DINO keys).
        clip_keys: ``(B, H, n, d)`` float32 CLIP keys (patch tokens).
    Returns:
        ``(B, H, n, d)`` float32 holding float16 values. min/max are per batch item over all heads.
    """
    b = dino_keys.shape[0]
    dmin = dino_keys.reshape(b, -1).amin(dim=1).view(b, 1, 1, 1)
    dmax = dino_keys.reshape(b, -1).amax(dim=1).view(b, 1, 1, 1)
    kmin = clip_keys.reshape(b, -1).amin(dim=1).view(b, 1, 1, 1)
    kmax = clip_keys.reshape(b, -1).amax(dim=1).view(b, 1, 1, 1)
    x = _fp16(dino_keys - dmin)
    x = _fp16(x / _fp16(dmax - dmin))
    x = _fp16(x * (kmax - kmin))
    return _fp16(x + _fp16(kmin))


def gram_fp16(keys: torch.Tensor, scale: float) -> torch.Tensor:
    """``keys @ keys^T * scale`` with float32 accumulation rounded to float16 (official DINO Gram).

    Args:
        keys: ``(..., n, d)`` float32 holding float16 values.
    Returns:
        ``(..., n, n)`` float64 (the fp16 values, as the eigen-solver and SVD receive them).
    """
    g = _fp16(keys @ keys.transpose(-1, -2))
    return _fp16(g * scale).double()


def top_spectra(adj: torch.Tensor, k: int) -> torch.Tensor:
    """Largest ``k`` eigenvalues (descending) of symmetric ``(..., n, n)`` matrices, L2-normalised.

    Returns ``(..., min(k, n))`` float64.
    """
    # numpy's LAPACK: torch.linalg.eigvalsh runs ~10x slower when called from a non-main thread
    # (OpenMP pools of two threads competing), which is where web servers run requests.
    # Single-threaded BLAS: the matrices are small, and OpenBLAS threads fight torch's OpenMP pool;
    # instead the batch is split over torch's thread count (bit-identical values, ~1.5x on 2 cores).
    mats = adj.double().cpu().numpy().reshape(-1, *adj.shape[-2:])
    with threadpool_limits(1, user_api="blas"):
        vals = _eigvalsh(mats, torch.get_num_threads()).reshape(*adj.shape[:-1])
    vals = torch.from_numpy(vals).to(adj.device)
    vals = vals.flip(-1)[..., :k]
    return F.normalize(vals, p=2, dim=-1)


def wasserstein_cost(dino_spectra: torch.Tensor, clip_spectra: torch.Tensor) -> torch.Tensor:
    """``cost[..., i, j] = 1 - W(dino_i, clip_j)`` as float32.

    Each spectrum is L1-normalised and sorted ascending; ``W`` is the sum (not the mean) of the
    absolute differences of the sorted values, as the official code computes it.

    Args:
        dino_spectra, clip_spectra: ``(..., H, k)`` float64.
    Returns:
        ``(..., H, H)`` float32, rows = DINO heads, columns = CLIP heads.
    """
    p = torch.sort(F.normalize(dino_spectra, p=1, dim=-1), dim=-1).values
    q = torch.sort(F.normalize(clip_spectra, p=1, dim=-1), dim=-1).values
    w = (p.unsqueeze(-2) - q.unsqueeze(-3)).abs().sum(-1)
    return (1 - w).to(torch.float32)


def match_heads(cost: torch.Tensor) -> torch.Tensor:
    """Hungarian assignment minimising ``cost`` (H x H); returns the column of each row, int64."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    assert np.array_equal(rows, np.arange(len(rows)))
    return torch.from_numpy(cols.astype(np.int64))


def randomized_svd(a: torch.Tensor, q: int, generators_draw: list[torch.Tensor], niter: int = 2):
    """``torch.svd_lowrank(a, q, niter)`` (Halko et al. 5.1) with caller-provided Gaussian draws.

    Args:
        a: ``(B, n, n)`` float64 (square; the DINO Grams).
        generators_draw: ``B`` tensors ``(n, q)`` float64, the random projections ``torch.svd_lowrank``
            would draw (drawn by the caller so the order matches the official RNG stream).
    Returns:
        ``U (B, n, q), S (B, q), V (B, n, q)`` float64 with ``a ~= U diag(S) V^T``.
    """
    r = torch.stack(generators_draw)
    x = a @ r
    basis = torch.linalg.qr(x).Q
    at = a.transpose(-1, -2)
    for _ in range(niter):
        basis = torch.linalg.qr(at @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    b = basis.transpose(-1, -2) @ a
    # numpy's LAPACK with single-threaded BLAS: torch.linalg.svd of these (B, q, n) float64 stacks
    # was 2.8x slower (0.071 s vs 0.025 s for 72 of 10 x 196, `python -m cass.bench.spectra`,
    # svd_torch_s / svd_numpy_s, load 8.7). U diag(S) V^T agrees to ~5e-13 (signs cancel in it).
    with threadpool_limits(1, user_api="blas"):
        u, s, vh = (torch.from_numpy(m) for m in np.linalg.svd(b.cpu().numpy(), full_matrices=False))
    return basis @ u.to(b.device), s.to(b.device), vh.transpose(-1, -2).to(b.device)


def scale_singular_values(s: torch.Tensor) -> torch.Tensor:
    """Linear map taking ``min -> 0.5 min`` and ``max -> 1.5 max`` (per row of ``(B, q)``)."""
    smin = s.amin(dim=-1, keepdim=True)
    smax = s.amax(dim=-1, keepdim=True)
    return (s - smin) / (smax - smin) * (1.5 * smax - 0.5 * smin) + 0.5 * smin


def _range_match(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per batch item, map ``source``'s min..max onto ``target``'s min..max. ``(B, n, n)``."""
    b = source.shape[0]
    smin = source.reshape(b, -1).amin(1).view(b, 1, 1)
    smax = source.reshape(b, -1).amax(1).view(b, 1, 1)
    tmin = target.reshape(b, -1).amin(1).view(b, 1, 1).double()
    tmax = target.reshape(b, -1).amax(1).view(b, 1, 1).double()
    return (source - smin) / (smax - smin) * (tmax - tmin) + tmin


def fuse_heads(clip_gram: torch.Tensor, dino_gram: torch.Tensor, cost: torch.Tensor, col: torch.Tensor,
               draws: list[torch.Tensor], rank: int, eigenvalue_scaling: bool,
               scale_factor: float) -> torch.Tensor:
    """Fused attention logits of every output head (before the Gaussian term and softmax).

    Args:
        clip_gram: ``(B, H, n, n)`` float32 CLIP key-key logits.
        dino_gram: ``(B, H, n, n)`` float64 DINO key-key logits (fp16 values).
        cost: ``(B, H, H)`` float32 matching cost; col: ``(B, H)`` int64 Hungarian columns.
        draws: ``B * H`` Gaussian ``(n, rank)`` float64 matrices, window-major then head order.
    Returns:
        ``(B, H, n, n)`` float32: ``(10 w R' + Ac) / (10 w + 1)`` per output head ``h``, where ``R'`` is
        the rank-``rank`` approximation of DINO head ``col[h]`` (diagonal zeroed, range-matched to
        ``Ac = clip_gram[h]``) and ``w = 1 - cost[h, col[h]]``.
    """
    bsz, heads, n, _ = clip_gram.shape
    dino_sel = torch.gather(dino_gram, 1, col.view(bsz, heads, 1, 1).expand(bsz, heads, n, n))
    u, s, v = randomized_svd(dino_sel.reshape(bsz * heads, n, n), rank, draws)
    if eigenvalue_scaling:
        s = scale_singular_values(s)
    approx = (u * s.unsqueeze(-2)) @ v.transpose(-1, -2)
    approx.diagonal(dim1=-2, dim2=-1).zero_()
    ac = clip_gram.reshape(bsz * heads, n, n)
    approx = _range_match(approx, ac)
    w = 1 - torch.gather(cost, 2, col.view(bsz, heads, 1)).view(bsz * heads, 1, 1)
    ws = w * scale_factor
    fused = (ws.double() * approx + ac.double()) / (ws.double() + 1)
    return fused.to(torch.float32).view(bsz, heads, n, n)


def gaussian_prior(gh: int, gw: int, std: float) -> torch.Tensor:
    """``(gh*gw, gh*gw)`` float32 ``exp(-|p - r|^2 / (2 std^2))`` over the row-major patch grid."""
    c = 1.0 / (std * np.sqrt(2.0))
    ys = torch.arange(gh, dtype=torch.float32) * c
    xs = torch.arange(gw, dtype=torch.float32) * c
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    d2 = (yy[:, None] - yy[None, :]) ** 2 + (xx[:, None] - xx[None, :]) ** 2
    return torch.exp(-d2)
