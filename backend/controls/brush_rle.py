"""Segmentation -> Label Studio ``brushlabels`` results (RLE through label-studio-sdk's encoder)."""
from __future__ import annotations

import uuid

import numpy as np
from label_studio_sdk.converter import brush

from backend.controls.canvas import check_rle_header
from backend.controls.instances import component_scores, components
from backend.controls.labels import BrushTarget


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """``(H, W)`` bool mask -> Label Studio brush RLE (an RGBA image, 255 inside, row-major)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a brush mask must be 2-D, got shape {mask.shape}")
    return brush.mask2rle((mask != 0).astype(np.uint8) * 255)


def rle_to_mask(rle: list[int], height: int, width: int, max_pixels: int | None = None) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: ``(H, W)`` bool (the alpha channel of the decoded image).

    The canvas is checked against ``max_pixels`` (CASS_MAX_IMAGE_MP) and the RLE's header against
    ``height * width * 4`` before label-studio-sdk decodes anything
    (:class:`~backend.controls.canvas.CanvasLimitError`, a ValueError).
    """
    check_rle_header(rle, height, width, max_pixels)
    flat = brush.decode_rle(rle)
    if flat.size != height * width * 4:
        raise ValueError(f"RLE holds {flat.size} values, expected {height}x{width}x4 = {height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def mask_region(mask: np.ndarray, name: str, score: float, target: BrushTarget) -> dict:
    """One ``brushlabels`` result of ``target`` for the ``(H, W)`` bool ``mask`` at the original size."""
    height, width = mask.shape
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(score), 4),
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [name]},
    }


def brush_regions(segmentation, target: BrushTarget) -> tuple[list[dict], float, int]:
    """One region per label present in ``segmentation`` (background class and "no label" skipped), or
    with ``target.instances`` one per 8-connected component of each label (in raster order of the
    components' first pixels, each with its :func:`~backend.controls.instances.component_scores`).

    Returns ``(regions, score_sum, pixels)`` where ``score_sum / pixels`` is the mean probability over
    every labelled pixel (for the prediction score).
    """
    labels = segmentation.labels
    regions = []
    score_sum = 0.0
    pixels = 0
    for index, name in enumerate(segmentation.class_names):
        count = int(segmentation.pixel_counts[index])
        if count == 0 or target.is_background(index):
            continue
        mask = labels == index
        if not getattr(target, "instances", False):
            score = float(segmentation.scores[index])
            regions.append(mask_region(mask, name, score, target))
            score_sum += score * count
            pixels += count
            continue
        n, comp, sizes = components(mask)
        scores = component_scores(segmentation, index, comp, sizes, True)
        for k in range(1, n + 1):
            regions.append(mask_region(comp == k, name, float(scores[k]), target))
            score_sum += float(scores[k]) * int(sizes[k])
            pixels += int(sizes[k])
    return regions, score_sum, pixels


def confidence_sums(segmentation) -> tuple[float, int]:
    """``(sum of top-1 probabilities, pixels)`` over the whole label map, for the prediction score.

    The prediction's ``score`` is ``sum / pixels``: the mean top-1 probability over every pixel of the
    image, where a pixel labelled ``c`` (background class included) counts the class's mean
    probability over its pixels (``segmentation.scores[c]``, so the sum is exact) and an unlabelled
    pixel (below the threshold) counts 0. Low = the model is unsure of much of the image: sorting the
    data manager by prediction score ascending puts those tasks first (docs/corrections.md).
    """
    total = int(segmentation.labels.size)
    counts = np.asarray(segmentation.pixel_counts, dtype=np.float64)
    return float((np.asarray(segmentation.scores, dtype=np.float64) * counts).sum()), total
