"""Mask operations of the smart-tool refiner (:mod:`backend.controls.smart`), on plain arrays.

:func:`flood` (the 8-connected region under a keypoint), :func:`crop_png` (a smart rectangle's crop as
the bytes its background encode reads) and :func:`relative_part` (the fallback of a rectangle whose
label wins nowhere in its box: the box's most label-like part, Otsu-thresholded).
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def flood(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 8-connected region of ``mask`` (bool ``(H, W)``) containing ``(x, y)`` (empty if outside)."""
    if not mask[y, x]:
        return np.zeros_like(mask, dtype=bool)
    work = mask.astype(np.uint8)
    ff = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    cv2.floodFill(work, ff, (int(x), int(y)), 2, flags=8)
    return work == 2


def crop_png(rgb: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """The ``(x0, y0, x1, y1)`` box of ``rgb`` as PNG bytes (the crop's identity and what its encode
    reads). CPU work between model calls, outside the slots: with one slot, taking it here would make
    every smart answer wait for the background crop encode in progress (bounded instead by
    ``CASS_MAX_SMART_HINTS`` and the predict budget)."""
    x0, y0, x1, y1 = box
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1])).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def relative_part(probs: np.ndarray, index: int) -> tuple[np.ndarray, float]:
    """``(mask, score)`` of a box's per-class probabilities ``probs`` (``(C, h, w)`` float32): where
    ``p_index - max(p_other)`` is over its Otsu threshold, at least its best pixel; the score is the
    label's mean probability there."""
    own = probs[index]
    others = np.delete(probs, index, axis=0)
    relative = own - (others.max(axis=0) if len(others) else 0.0)
    lo, hi = float(relative.min()), float(relative.max())
    if hi - lo < 1e-6:  # no contrast in the box: the whole box is equally L-like
        part = np.ones_like(relative, dtype=bool)
    else:
        scaled = np.round((relative - lo) / (hi - lo) * 255).astype(np.uint8)
        threshold, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        part = scaled > threshold
        if not part.any():
            part = scaled == scaled.max()
    return part, round(float(own[part].mean()), 4)
