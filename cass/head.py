"""The label-dependent head of CASS (pure functions): query clustering, object-presence-guided text
adjustment, window logits, and stitching the windows' logits into full-size masks.

Run by :class:`cass.segmenting.Segmenting` (the ``segment`` side of :class:`cass.engine.CASS`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cass.features import ImageFeatures, Segmentation
from cass.vocabulary import Vocabulary


def cluster_queries(text: torch.Tensor, threshold: float) -> np.ndarray:
    """Ward clustering of the query embeddings on their cosine distances (official step 5).

    Returns ``(Q,)`` int64 cluster ids ``0..k-1`` (scipy ``fcluster`` labels minus 1).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    q = text.shape[0]
    if q < 2:
        return np.zeros(q, dtype=np.int64)
    emb = F.normalize(text.float(), dim=-1).numpy()
    dist = 1.0 - emb @ emb.T
    dist = np.clip((dist + dist.T) / 2, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method="ward")
    return (fcluster(z, t=threshold, criterion="distance") - 1).astype(np.int64)


def adjust_text(text: torch.Tensor, patches: torch.Tensor, global_sim: torch.Tensor, clusters: np.ndarray,
                alpha: float, topk: int) -> torch.Tensor:
    """Object-presence-guided text adjustment (official step 29), all windows at once.

    Args:
        text: ``(Q, D)`` normalised query embeddings; patches: ``(W, n, D)`` normalised patch features;
        global_sim: ``(W, Q)``; clusters: ``(Q,)`` cluster ids ``0..K-1``.
    Returns:
        ``(W, Q, D)``: in each window and cluster, the query with the highest global similarity (first
        on ties) moves towards the normalised mean of its ``topk`` most similar patches; the other
        queries are unchanged.
    """
    n_win = patches.shape[0]
    cl = torch.as_tensor(clusters, dtype=torch.int64)
    k = int(cl.max()) + 1 if len(cl) else 0
    member = cl.view(1, -1) == torch.arange(k).view(-1, 1)  # (K, Q)
    masked = global_sim.unsqueeze(1).masked_fill(~member.unsqueeze(0), float("-inf"))  # (W, K, Q)
    best = masked.argmax(dim=-1)  # (W, K)
    t = F.normalize(text[best], dim=-1)  # (W, K, D)
    sims = patches @ t.transpose(1, 2)  # (W, n, K)
    top = torch.topk(sims, min(topk, patches.shape[1]), dim=1).indices  # (W, topk, K)
    picked = torch.gather(patches.unsqueeze(2).expand(-1, -1, k, -1), 1,
                          top.unsqueeze(-1).expand(-1, -1, -1, patches.shape[-1]))  # (W, topk, K, D)
    m = F.normalize(picked.mean(dim=1), dim=-1)  # (W, K, D)
    adjusted = text.unsqueeze(0).repeat(n_win, 1, 1)
    new = F.normalize((1 - alpha) * t + alpha * m, dim=-1)
    adjusted.scatter_(1, best.unsqueeze(-1).expand(-1, -1, text.shape[1]), new)
    return adjusted


def window_logits(features: ImageFeatures, text: torch.Tensor, clusters: np.ndarray, gamma: float,
                  alpha: float, topk: int, trace: dict | None = None,
                  global_text: torch.Tensor | None = None) -> torch.Tensor:
    """Patch logits of every window (official step 30): ``(W, Q, gh, gw)`` float32.

    ``global_text``: ``(Q, D_g)`` text features of the scale_up CLIP (its global vectors are
    ``(W, D_g)``); by default the global similarity uses ``text`` like the patches.
    """
    gh, gw = features.grid
    sims = features.global_vectors @ (text if global_text is None else global_text).T  # (W, Q)
    adjusted = adjust_text(text, features.patch_features, sims, clusters, alpha, topk)
    logits = (1 - gamma) * (features.patch_features @ adjusted.transpose(1, 2)) + gamma * sims.unsqueeze(1)
    grids = logits.transpose(1, 2).reshape(len(sims), text.shape[0], gh, gw)
    if trace is not None:
        trace["all_window_logits"] = grids.clone()
        trace["window0_logits"] = grids[0].clone()
        trace["window0_global_sim"] = sims[0].clone()
        trace["window0_adjusted_text"] = adjusted[0].clone()
    return grids


def _resize_matrix(out_len: int, in_len: int) -> torch.Tensor:
    """``(out_len, in_len)`` matrix of 1-D bilinear (align_corners=False) interpolation weights."""
    if out_len == in_len:
        return torch.eye(in_len)
    eye = torch.eye(in_len).unsqueeze(0)  # (1, in, in) -> interpolate along last axis
    return F.interpolate(eye, size=out_len, mode="linear", align_corners=False)[0].T.contiguous()


class DenseLogits:
    """Precomputed ``(Q, H, W)`` logits with the :class:`Stitcher` interface (after PAMR)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.output_size = (int(logits.shape[1]), int(logits.shape[2]))

    def tile(self, grids: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        return self.logits[:, r0:r1, c0:c1]


class Stitcher:
    """Window logits -> averaged, upsampled logits at the output size, tile by tile.

    The official pipeline upsamples each window's ``gh x gw`` logits bilinearly to the window's pixel
    size, averages overlapping windows on the inference-size canvas (steps 31-32) and resizes the
    canvas bilinearly to the original size (step 33). All three are linear and separable (windows
    form a rows x columns grid, so the coverage count is ``rows(y) * cols(x)``), so this computes
    ``out[q] = sum_w A_w L_w[q] B_w^T`` with one ``(out_h x gh)`` and one ``(out_w x gw)`` matrix per
    window: the same numbers without materialising any full-size intermediate.
    """

    def __init__(self, windows: list[tuple[int, int, int, int]], grid: tuple[int, int],
                 input_size: tuple[int, int], output_size: tuple[int, int],
                 valid_size: tuple[int, int] | None = None):
        gh, gw = grid
        height, width = input_size
        out_h, out_w = output_size
        valid_h, valid_w = valid_size or input_size  # the image part of a padded input
        row_spans = sorted({(y1, y2) for y1, y2, _, _ in windows})
        col_spans = sorted({(x1, x2) for _, _, x1, x2 in windows})
        if len(row_spans) * len(col_spans) != len(windows):
            raise ValueError("windows do not form a rows x columns grid")
        ny, nx = torch.zeros(height), torch.zeros(width)
        for y1, y2 in row_spans:
            ny[y1:y2] += 1
        for x1, x2 in col_spans:
            nx[x1:x2] += 1
        ry_out, rx_out = torch.zeros(out_h, height), torch.zeros(out_w, width)
        ry_out[:, :valid_h] = _resize_matrix(out_h, valid_h)
        rx_out[:, :valid_w] = _resize_matrix(out_w, valid_w)
        a = {span: (ry_out[:, span[0]:span[1]] / ny[span[0]:span[1]]) @ _resize_matrix(span[1] - span[0], gh)
             for span in row_spans}
        b = {span: (rx_out[:, span[0]:span[1]] / nx[span[0]:span[1]]) @ _resize_matrix(span[1] - span[0], gw)
             for span in col_spans}
        self.a = torch.stack([a[(y1, y2)] for y1, y2, _, _ in windows])  # (W, out_h, gh)
        self.b = torch.stack([b[(x1, x2)] for _, _, x1, x2 in windows])  # (W, out_w, gw)
        self.output_size = output_size

    def tile(self, grids: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """``(Q, r1 - r0, c1 - c0)`` logits of an output tile from ``(W, Q, gh, gw)`` window logits."""
        n_win, q, gh, _ = grids.shape
        right = grids @ self.b[:, c0:c1].transpose(1, 2).unsqueeze(1)  # (W, Q, gh, c)
        right = right.permute(1, 0, 2, 3).reshape(q, n_win * gh, c1 - c0)
        left = self.a[:, r0:r1].permute(1, 0, 2).reshape(r1 - r0, n_win * gh)  # (r, W*gh)
        return left @ right


def postprocess(grids: torch.Tensor, stitcher: Stitcher, vocabulary: Vocabulary, logit_scale: float,
                prob_thd: float, return_probs: bool, max_tile_elems: int = 1 << 22) -> Segmentation:
    """Stitch/upsample to the output size, softmax over queries, max over each class's queries,
    argmax and the probability threshold (official steps 31-35), in tiles to bound memory.

    Args:
        grids: ``(W, Q, gh, gw)`` window logits (:func:`window_logits`).
    """
    q = grids.shape[1]
    out_h, out_w = stitcher.output_size
    n_cls = len(vocabulary)
    query_class = torch.tensor(vocabulary.query_class)
    groups = [torch.nonzero(query_class == c).flatten() for c in range(n_cls)]
    multi = n_cls != q
    labels = np.empty((out_h, out_w), dtype=np.int32)
    probs_out = np.empty((n_cls, out_h, out_w), dtype=np.float32) if return_probs else None
    score_sum = torch.zeros(n_cls, dtype=torch.float64)
    counts = torch.zeros(n_cls, dtype=torch.int64)
    cols = min(out_w, max(64, max_tile_elems // max(q * 64, 1)))
    rows = max(1, min(out_h, max_tile_elems // max(q * cols, 1)))
    below = -1 if vocabulary.background is None else vocabulary.background
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        for c0 in range(0, out_w, cols):
            c1 = min(out_w, c0 + cols)
            prob = torch.softmax(stitcher.tile(grids, r0, r1, c0, c1) * logit_scale, dim=0)
            cls_prob = torch.stack([prob[members].amax(dim=0) for members in groups]) if multi else prob
            best, arg = cls_prob.max(dim=0)
            arg = arg.to(torch.int32)
            arg[best < prob_thd] = below
            labels[r0:r1, c0:c1] = arg.numpy()
            valid = arg >= 0
            flat = arg[valid].long()
            counts += torch.bincount(flat, minlength=n_cls)
            picked = cls_prob.permute(1, 2, 0)[valid].gather(1, flat.unsqueeze(1)).squeeze(1)
            score_sum.index_add_(0, flat, picked.double())
            if probs_out is not None:
                probs_out[:, r0:r1, c0:c1] = cls_prob.numpy()
    scores = torch.where(counts > 0, score_sum / counts.clamp(min=1), torch.zeros_like(score_sum))
    return Segmentation(labels=labels, scores=scores.float().numpy(), pixel_counts=counts.numpy(),
                        class_names=vocabulary.names, probs=probs_out)
