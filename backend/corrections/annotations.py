"""A Label Studio annotation ``result`` list -> one boolean mask per label at the image's original size.

``annotation_masks(result, controls)`` reads the regions of the project's output controls
(:class:`~backend.controls.config.Controls`: ``<BrushLabels>`` and ``<PolygonLabels>``):

* ``brushlabels`` regions: ``value.rle`` decoded with label-studio-sdk
  (``label_studio_sdk.converter.brush``, through :func:`backend.controls.brush_rle.rle_to_mask`: the alpha channel
  of the RGBA image, row-major, ``original_height x original_width``);
* ``polygonlabels`` regions: ``value.points`` (percent of the original size, pixel centres) rasterised
  with OpenCV ``fillPoly`` (:func:`backend.controls.polygon.rasterize`, boundary pixels included);
* several regions of one label are OR-ed; a region with several labels marks each of them.

Regions of other types (``choices``, ``textarea``, the ``rectanglelabels`` / ``keypointlabels`` hints
of smart tools, ...) are not masks and are skipped. A region of an output type whose ``from_name`` is
not an output control of the config, a label the control does not have, an RLE of the wrong length,
bad points or sizes that disagree raise :class:`AnnotationError` naming the region (``result[i]``,
its ``id``) and the problem.

Nothing is decoded before its size is checked (issue 21, docs/security.md): a region's declared
``original_height x original_width`` must be at most ``max_pixels`` (CASS_MAX_IMAGE_MP) and equal the
task's size when the caller knows it, and a brush RLE whose header does not declare exactly
``H * W * 4`` values is refused from its header, and the label masks of one result together stay
within ``MASK_BUDGET x CASS_MAX_IMAGE_MP`` pixels (:mod:`backend.controls.canvas`).

Label Studio 1.23.2 stores the label's ``value`` (or its ``alias``) in the region, which is what
:attr:`Vocabulary.names` holds for a control (``backend.controls.label_parse``).
"""
from __future__ import annotations

import math

import numpy as np

from backend.controls.brush_rle import rle_to_mask
from backend.controls.canvas import CanvasLimitError, check_canvas, check_mask_budget
from backend.controls.polygon import rasterize

#: Region types that carry a mask, and the key of their label list in ``value``.
MASK_TYPES = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}
#: Largest accepted original size (pixels per side); Label Studio's images are far smaller.
MAX_SIDE = 65536


class AnnotationError(ValueError):
    """An annotation result that cannot be turned into masks (the message names the region)."""


def _where(index: int, region) -> str:
    rid = region.get("id") if isinstance(region, dict) else None
    return f"result[{index}]" + (f" (id {rid!r})" if rid is not None else "")


def region_size(region: dict, where: str, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of a region's ``original_height`` / ``original_width`` (positive ints, at
    most ``max_pixels`` together: CASS_MAX_IMAGE_MP, default its default)."""
    size = []
    for key in ("original_height", "original_width"):
        v = region.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) \
                or not 0 < v <= MAX_SIDE:
            raise AnnotationError(f"{where}: {key} must be a positive whole number of pixels (at most "
                                  f"{MAX_SIDE}), got {v!r}")
        size.append(int(v))
    try:
        check_canvas(size[0], size[1], max_pixels)
    except CanvasLimitError as exc:
        raise AnnotationError(f"{where}: {exc}") from None
    return size[0], size[1]


def _region_labels(region: dict, key: str, target, where: str) -> list[str]:
    labels = region["value"].get(key)
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) for n in labels):
        raise AnnotationError(f"{where}: value.{key} must be a non-empty list of label names, got {labels!r}")
    known = target.vocabulary.names
    unknown = [n for n in labels if n not in known]
    if unknown:
        raise AnnotationError(f"{where}: label(s) {', '.join(map(repr, unknown))} are not labels of "
                              f"control {target.from_name!r} (its labels: {', '.join(map(repr, known))})")
    return labels


def _brush_mask(region: dict, height: int, width: int, where: str, max_pixels: int | None) -> np.ndarray:
    value = region["value"]
    fmt = value.get("format", "rle")
    if fmt != "rle":
        raise AnnotationError(f"{where}: brush value.format is {fmt!r}; only 'rle' is supported")
    rle = value.get("rle")
    if not isinstance(rle, list) or not rle or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in rle):
        raise AnnotationError(f"{where}: value.rle must be a non-empty list of integers (Label Studio brush RLE)")
    try:
        return rle_to_mask(rle, height, width, max_pixels)
    except CanvasLimitError as exc:
        raise AnnotationError(f"{where}: value.rle: {exc}") from None
    except Exception as exc:  # label-studio-sdk's decoder on garbage: IndexError, ValueError...
        raise AnnotationError(f"{where}: value.rle does not decode to a {height}x{width} brush mask: "
                              f"{type(exc).__name__}: {exc}") from None


def _polygon_mask(region: dict, height: int, width: int, where: str, max_pixels: int | None) -> np.ndarray:
    points = region["value"].get("points")
    ok = isinstance(points, list) and len(points) >= 3 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in p)
        for p in points)
    if not ok:
        raise AnnotationError(f"{where}: value.points must be a list of at least 3 [x, y] percent pairs "
                              f"(finite numbers), got {str(points)[:120]}")
    return rasterize(points, width, height, max_pixels)


def annotation_masks(result: list[dict], controls, size: tuple[int, int] | None = None,
                     max_pixels: int | None = None) -> dict[str, np.ndarray]:
    """Label name -> ``(H, W)`` bool mask (original size) of every labelled pixel of ``result``.

    ``controls``: the project's :class:`~backend.controls.config.Controls` (or a sequence of output
    targets). ``size``: ``(H, W)`` every region must have, if known (the task's image size), checked
    before anything is decoded. ``max_pixels``: CASS_MAX_IMAGE_MP in pixels (default its default).
    Labels without a region are absent; an empty ``result`` gives ``{}``. Raises
    :class:`AnnotationError` (see the module docstring).
    """
    if not isinstance(result, list):
        raise AnnotationError(f"an annotation 'result' must be a list of regions, got {type(result).__name__}")
    outputs = {t.from_name: t for t in controls}
    masks: dict[str, np.ndarray] = {}
    seen_size: tuple[int, int] | None = tuple(size) if size is not None else None
    first_where = "the task's image" if size is not None else None
    for index, region in enumerate(result):
        where = _where(index, region)
        if not isinstance(region, dict):
            raise AnnotationError(f"{where} must be an object, got {type(region).__name__}")
        kind = region.get("type")
        if kind not in MASK_TYPES:
            continue  # not a mask: choices, text, smart-tool hints
        target = outputs.get(region.get("from_name"))
        if target is None:
            raise AnnotationError(f"{where}: a {kind} region of from_name {region.get('from_name')!r}, which is "
                                  f"not an output control of the label config (outputs: {sorted(outputs) or 'none'})")
        expected = "polygonlabels" if getattr(target, "kind", "brush") == "polygon" else "brushlabels"
        if kind != expected:
            raise AnnotationError(f"{where}: type {kind!r} but control {target.from_name!r} makes {expected!r} regions")
        if not isinstance(region.get("value"), dict):
            raise AnnotationError(f"{where} has no 'value' object")
        labels = _region_labels(region, MASK_TYPES[kind], target, where)
        height, width = region_size(region, where, max_pixels)
        if seen_size is None:
            seen_size, first_where = (height, width), where
        elif seen_size != (height, width):
            raise AnnotationError(f"{where} is {height}x{width} (original_height x original_width) but "
                                  f"{first_where} is {seen_size[0]}x{seen_size[1]}: one image has one size")
        try:
            check_mask_budget(len(masks.keys() | set(labels)), height, width, max_pixels)
        except CanvasLimitError as exc:
            raise AnnotationError(f"{where}: {exc}") from None
        mask = _brush_mask(region, height, width, where, max_pixels) if kind == "brushlabels" \
            else _polygon_mask(region, height, width, where, max_pixels)
        for name in labels:
            if name in masks:
                masks[name] |= mask
            else:
                masks[name] = mask.copy()
    return masks


def result_size(result: list[dict]) -> tuple[int, int] | None:
    """``(H, W)`` of the first mask region of ``result`` (None when it has none)."""
    for index, region in enumerate(result if isinstance(result, list) else []):
        if isinstance(region, dict) and region.get("type") in MASK_TYPES:
            return region_size(region, _where(index, region))
    return None
