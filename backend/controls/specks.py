"""Specks out of a label map, once, before any adapter (so BrushLabels and PolygonLabels agree).

A **speck** is an 8-connected component of one class with fewer pixels than the control's minimum
region area (``cass_min_area``, else ``CASS_MIN_REGION_AREA``; :class:`~backend.controls.region_options.MinArea`).
Each speck takes the **majority label of its border pixels** (the pixels 8-adjacent to it that are not
in it; ties go to the lower class index); a speck whose border holds no labelled pixel (only "no
label", or the image edge) is **dropped** (its pixels become ``-1``). Borders are voted in rounds:
a speck first takes its label from pixels that are not themselves in a speck; specks bordered only by
other specks vote once their neighbours are settled, and if that stalls (a patch made only of
specks), one last round counts every labelled neighbour. "No label" (``-1``) areas are never specks.

On small images the minimum is capped at 1/64 of the image (``THUMBNAIL_SHARE``), so a thumbnail is
not emptied: on a 6x9 image nothing is a speck. Everything is vectorised (OpenCV connected
components per class, numpy over the speck pixels): ~0.7 s for a 2048x2048 map with 5000 specks,
~5 s for 2048x2048 pure noise.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

#: The minimum region area is at most this share of the image's pixels.
THUMBNAIL_SHARE = 1 / 64
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def label_components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H, W)`` int label map (``-1`` = no label) -> ``(comp, sizes, classes)``: ``comp`` ``(H, W)``
    int32 component id per pixel (``0`` for no label, ``1..N`` the 8-connected components of every class),
    ``sizes`` ``(N + 1,)`` int64 pixels per component, ``classes`` ``(N + 1,)`` int64 class of each
    component (``classes[0] = -1``)."""
    comp = np.zeros(labels.shape, np.int32)
    sizes, classes = [np.zeros(1, np.int64)], [np.full(1, -1, np.int64)]
    offset = 0
    for cls in np.unique(labels[labels >= 0]):
        n, local, stats, _ = cv2.connectedComponentsWithStats((labels == cls).astype(np.uint8), connectivity=8)
        inside = local > 0
        comp[inside] = local[inside] + offset
        sizes.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
        classes.append(np.full(n - 1, cls, np.int64))
        offset += n - 1
    return comp, np.concatenate(sizes), np.concatenate(classes)


def _border_pairs(comp: np.ndarray, speck: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(speck_ids, neighbour_ids)`` int64, one pair per distinct (speck, border pixel): the component
    id of each speck and of each pixel 8-adjacent to it outside it."""
    h, w = comp.shape
    ys, xs = np.nonzero(speck[comp])
    own = comp[ys, xs].astype(np.int64)
    keys = []
    for dy, dx in _SHIFTS:
        qy, qx = ys + dy, xs + dx
        ok = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        qy, qx, p = qy[ok], qx[ok], own[ok]
        other = comp[qy, qx] != p
        keys.append(p[other] * (h * w) + qy[other].astype(np.int64) * w + qx[other])
    keys = np.unique(np.concatenate(keys))
    return keys // (h * w), comp.ravel()[keys % (h * w)].astype(np.int64)


def _majority(owners: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct owner id, the most frequent vote (ties: the lowest): ``(owners, winners)`` int64."""
    if owners.size == 0:
        return owners, votes
    span = int(votes.max()) + 1
    keys, counts = np.unique(owners * span + votes, return_counts=True)
    owner, vote = keys // span, keys % span
    order = np.lexsort((vote, -counts, owner))
    first = np.unique(owner[order], return_index=True)[1]
    return owner[order][first], vote[order][first]


def merge_specks(labels: np.ndarray, min_pixels: float) -> np.ndarray:
    """``(H, W)`` int32 label map -> the same map with every speck (component under ``min_pixels``,
    capped at ``THUMBNAIL_SHARE`` of the image) merged into its border's majority class or dropped
    (``-1``). Returns ``labels`` itself when there is no speck."""
    labels = np.asarray(labels)
    limit = min(float(min_pixels), labels.size * THUMBNAIL_SHARE)
    if labels.ndim != 2 or limit <= 1 or not (labels >= 0).any():
        return labels
    comp, sizes, classes = label_components(labels)
    pending = sizes < limit
    pending[0] = False
    if not pending.any():
        return labels
    owners, neighbours = _border_pairs(comp, pending)
    current = classes.copy()
    last_round = False
    while pending.any():
        active, labelled, unsettled = pending[owners], current[neighbours] >= 0, pending[neighbours]
        waiting = np.zeros(pending.shape, bool)  # bordered by a speck not settled at the start of the round
        waiting[owners[active & labelled & unsettled]] = True
        usable = active & labelled & (last_round | ~unsettled)
        won, winner = _majority(owners[usable], current[neighbours[usable]])
        current[won], pending[won] = winner, False
        dropped = pending & ~waiting
        current[dropped], pending[dropped] = -1, False
        if last_round:
            break
        last_round = won.size == 0 and not dropped.any()
    return current[comp].astype(np.int32)


def without_specks(segmentation, min_pixels: float):
    """``segmentation`` (:class:`cass.features.Segmentation`) with :func:`merge_specks` applied to its
    ``labels``, ``pixel_counts`` recounted and ``scores`` recomputed from ``probs`` (``(C, H, W)``) when
    it has them; without them a class keeps its score (the merged pixels count at it). Returns
    ``segmentation`` itself when nothing changed."""
    labels = merge_specks(segmentation.labels, min_pixels)
    if labels is segmentation.labels:
        return segmentation
    n = len(segmentation.class_names)
    flat = labels.ravel()
    where = np.flatnonzero(flat >= 0)
    counts = np.bincount(flat[where], minlength=n).astype(np.int64)
    if segmentation.probs is not None:
        sums = np.bincount(flat[where], weights=segmentation.probs.reshape(n, -1)[flat[where], where],
                           minlength=n)
        scores = np.divide(sums, counts, out=np.zeros(n), where=counts > 0).astype(np.float32)
    else:
        scores = np.where(counts > 0, segmentation.scores, 0.0).astype(np.float32)
    return dataclasses.replace(segmentation, labels=labels, pixel_counts=counts, scores=scores)
