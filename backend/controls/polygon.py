"""Label map -> Label Studio ``polygonlabels`` regions (OpenCV ``findContours`` with ``RETR_CCOMP``).

Per class present in the map, at the original image size:

1. the class mask's 8-connected components are traced by ``cv2.findContours(RETR_CCOMP,
   CHAIN_APPROX_SIMPLE)``: every outer boundary, and the holes of each (the two-level hierarchy);
2. each boundary is simplified with ``cv2.approxPolyDP`` (Douglas-Peucker, ``tolerance_px`` pixels of
   the original image; 0 keeps the traced boundary);
3. components with fewer than ``min_area_px`` pixels are dropped (pixels of the component), and so
   is every polygon with fewer than 3 distinct points or a shoelace area under ``MIN_POLYGON_AREA_PX``
   (a one-pixel-wide line: its pixel-centre polygon has no area; the brush region still shows it);
4. **holes** (Label Studio polygons have none): each hole is joined to its outer boundary by a
   *keyhole seam* -- the shortest bridge from a vertex of the polygon built so far to a vertex of the
   hole, walked there and back -- so one region is one polygon that goes round the outer boundary
   and, in the opposite direction, round every hole. Filled with the even-odd or the non-zero rule
   (Konva, OpenCV ``fillPoly``), the hole stays empty; the seam itself has zero width;
5. points are ``[x, y]`` in percent of the original width/height (3 decimals, 0.02 px at 1920 px) of
   the **pixel centres** of the boundary pixels: the polygon runs half a pixel inside the mask edge
   (docs/polygons.md states what that costs in IoU).

One region per component (a polygon is one ring), in raster order of the components; its ``score``
is its class's score, or with ``cass_instances`` the component's own
(:func:`backend.controls.instances.component_scores`). Specks are merged before this runs
(:mod:`backend.controls.specks`, from :func:`backend.controls.base.regions_for`).
"""
from __future__ import annotations

import uuid
from typing import NamedTuple

import cv2
import numpy as np

from backend.controls.canvas import check_canvas
from backend.controls.instances import component_scores
from backend.controls.labels import BrushTarget

DECIMALS = 3
#: Smallest shoelace area (square pixels, pixel-centre polygon) a polygon region may have.
MIN_POLYGON_AREA_PX = 1.0


class Traced(NamedTuple):
    """One component's polygon: ``points`` ``(N, 2)`` float64 pixel-centre ``(x, y)``, ``pixels`` its
    pixel count, ``component`` its id in the ``comp`` map of :func:`traced_components`."""

    points: np.ndarray
    pixels: int
    component: int


def component_polygons(mask: np.ndarray, tolerance_px: float = 1.0, min_area_px: float = 0.0
                       ) -> list[tuple[np.ndarray, int]]:
    """``(H, W)`` bool mask -> ``[(points, pixels)]``: one ``(N, 2)`` float64 ``(x, y)`` pixel-centre
    polygon per 8-connected component (holes joined by keyhole seams), with the component's pixel count.

    Raises ValueError for a mask that is not 2-D or a negative tolerance/area.
    """
    return [(t.points, t.pixels) for t in traced_components(mask, tolerance_px, min_area_px)[0]]


def traced_components(mask: np.ndarray, tolerance_px: float = 1.0, min_area_px: float = 0.0
                      ) -> tuple[list[Traced], np.ndarray]:
    """:func:`component_polygons` with the component of each polygon: ``([Traced], comp)``, ``comp``
    ``(H, W)`` int32 component ids (0 outside), the list in raster order of the components."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a polygon mask must be 2-D, got shape {mask.shape}")
    if tolerance_px < 0 or min_area_px < 0:
        raise ValueError(f"tolerance_px ({tolerance_px}) and min_area_px ({min_area_px}) must be >= 0")
    binary = (mask != 0).astype(np.uint8)
    if not binary.any():
        return [], np.zeros(mask.shape, np.int32)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    n_comp, comp_labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    hierarchy = hierarchy[0]  # (n, 4): next, previous, first child, parent
    out = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:
            continue  # a hole: handled with its outer boundary
        x, y = contour[0, 0]
        component = int(comp_labels[y, x])
        pixels = int(stats[component, cv2.CC_STAT_AREA])
        if pixels < max(min_area_px, 1):
            continue
        polygon = _simplify(contour, tolerance_px)
        child = hierarchy[index][2]
        while child != -1:
            hole = _simplify(contours[child], tolerance_px)
            if len(hole) >= 3:
                polygon = keyhole(polygon, hole)
            child = hierarchy[child][0]
        if keepable(polygon):
            out.append(Traced(polygon.astype(np.float64), pixels, component))
    return sorted(out, key=lambda t: t.component), comp_labels.astype(np.int32)


def keepable(points: np.ndarray) -> bool:
    """Whether ``(N, 2)`` pixel points make a region: at least 3 distinct points and a shoelace area of
    at least ``MIN_POLYGON_AREA_PX``."""
    points = np.asarray(points, dtype=np.float64)
    if len(np.unique(points, axis=0)) < 3:
        return False
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) >= MIN_POLYGON_AREA_PX


def _simplify(contour: np.ndarray, tolerance_px: float) -> np.ndarray:
    """``(N, 1, 2)`` int contour -> ``(M, 2)`` int32, Douglas-Peucker at ``tolerance_px`` (closed); the
    traced contour when simplifying would leave no :func:`keepable` polygon (a thin sliver)."""
    traced = contour.reshape(-1, 2).astype(np.int32)
    if tolerance_px > 0 and len(contour) > 3:
        simplified = cv2.approxPolyDP(contour, tolerance_px, True).reshape(-1, 2).astype(np.int32)
        if keepable(simplified):
            return simplified
    return traced


def keyhole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` ``(M, 2)`` into ``outer`` ``(N, 2)`` through the shortest vertex-to-vertex bridge:
    ``outer[:i+1], hole[j:], hole[:j+1], outer[i:]`` (``N + M + 2`` points)."""
    d = ((outer[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([outer[:i + 1], hole[j:], hole[:j + 1], outer[i:]])


def to_percent(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel-centre ``(x, y)`` -> ``[[x%, y%], ...]`` of the original size, clipped to 0..100."""
    pct = (np.asarray(points, dtype=np.float64) + 0.5) / np.array([width, height]) * 100.0
    return np.round(np.clip(pct, 0.0, 100.0), DECIMALS).tolist()


def rasterize(points_pct, width: int, height: int, max_pixels: int | None = None) -> np.ndarray:
    """Label Studio polygon points (percent) -> ``(H, W)`` bool mask (``cv2.fillPoly``, boundary pixels
    included), the inverse of :func:`to_percent` used by the tests and the e2e check. A canvas over
    ``max_pixels`` (CASS_MAX_IMAGE_MP) is refused before it is allocated (``CanvasLimitError``)."""
    check_canvas(height, width, max_pixels)
    pts = np.asarray(points_pct, dtype=np.float64) / 100.0 * np.array([width, height]) - 0.5
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def polygon_regions(segmentation, target: BrushTarget) -> tuple[list[dict], float, int]:
    """One ``polygonlabels`` region per connected component of every label present (background class
    and "no label" skipped), parameters from ``target`` (``tolerance_px``, ``min_area``, ``instances``).

    Returns ``(regions, score_sum, pixels)`` like :func:`backend.controls.brush_rle.brush_regions`.
    """
    labels = segmentation.labels
    height, width = labels.shape
    tolerance = float(getattr(target, "tolerance_px", 1.0))
    min_area = target.min_area.pixels(height, width) if hasattr(target, "min_area") else 0.0
    regions = []
    score_sum = 0.0
    pixels = 0
    for index, name in enumerate(segmentation.class_names):
        if int(segmentation.pixel_counts[index]) == 0 or target.is_background(index):
            continue
        traced, comp = traced_components(labels == index, tolerance, min_area)
        sizes = np.bincount(comp.ravel()).astype(np.int64)
        scores = component_scores(segmentation, index, comp, sizes, getattr(target, "instances", False))
        for points, count, component in traced:
            score = float(scores[component])
            regions.append(polygon_region(points, name, score, width, height, target))
            score_sum += score * count
            pixels += count
    return regions, score_sum, pixels


def polygon_region(points: np.ndarray, name: str, score: float, width: int, height: int, target) -> dict:
    """One Label Studio ``polygonlabels`` result from pixel-centre ``points``."""
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "polygonlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(score, 4),
        "value": {"points": to_percent(points, width, height), "closed": True, "polygonlabels": [name]},
    }
