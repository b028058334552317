"""One adapter per Label Studio control tag: a label map -> that tag's results.

An adapter is ``regions(segmentation, target) -> (regions, score_sum, pixels)`` (``score_sum /
pixels`` is the mean probability over the labelled pixels, for the prediction's score) and
``mask_regions(mask, name, score, target) -> [region]`` for one ``(H, W)`` bool mask (interactive
answers). The label config decides which run: one per output control it has
(:func:`backend.controls.config.parse_controls`). :func:`regions_for` first merges the specks of the
label map (:mod:`backend.controls.specks`, the control's ``min_area``), once for every adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from backend.controls import brush, polygon
from backend.controls.specks import without_specks


@dataclass(frozen=True)
class Adapter:
    tag: str
    regions: Callable
    mask_regions: Callable


def _brush_mask_regions(mask: np.ndarray, name: str, score: float, target) -> list[dict]:
    return [brush.mask_region(mask, name, score, target)] if mask.any() else []


def _polygon_mask_regions(mask: np.ndarray, name: str, score: float, target) -> list[dict]:
    height, width = mask.shape
    min_area = target.min_area.pixels(height, width)
    return [polygon.polygon_region(points, name, score, width, height, target)
            for points, _ in polygon.component_polygons(mask, target.tolerance_px, min_area)]


ADAPTERS = {
    "brush": Adapter("BrushLabels", brush.brush_regions, _brush_mask_regions),
    "polygon": Adapter("PolygonLabels", polygon.polygon_regions, _polygon_mask_regions),
}


def adapter_for(target) -> Adapter:
    """The adapter of an output target (``kind`` attribute; a plain BrushTarget is ``"brush"``)."""
    return ADAPTERS[getattr(target, "kind", "brush")]


def regions_for(segmentation, target) -> tuple[list[dict], float, int]:
    """``(regions, score_sum, pixels)`` of ``target``'s control for ``segmentation``, specks merged
    first (:func:`backend.controls.specks.without_specks` at the control's minimum region area)."""
    height, width = segmentation.labels.shape
    min_area = target.min_area.pixels(height, width) if hasattr(target, "min_area") else 0.0
    return adapter_for(target).regions(without_specks(segmentation, min_area), target)
