"""Interactive refinement: Label Studio smart tools (``context`` of ``/predict``) -> new regions.

Label Studio's interactive mode sends ``/predict`` with one task and ``params.context = {"result":
[...]}``: the smart regions drawn so far (recorded in ``tests/data/label_studio_1.23.2/``). Each item
has ``type`` ``rectanglelabels`` or ``keypointlabels``, ``value`` in percent (``x, y, width, height``
/ ``x, y``) with the label ``L`` and ``is_positive``. The answer is ``[{"result": [new regions],
"score", "model_version"}]`` -- only the new regions, in the format of the first output control
(BrushLabels or PolygonLabels, config order) on the same image that has class ``L``.

Per ``(output control, L)`` one mask at the original size:

* **positive rectangle**: answered at once from the **whole image's** features (the feature cache;
  the label map kept in the in-process LRU): the pixels of ``L`` inside the rectangle, the control's
  whole vocabulary competing (other labels, background prompts and threshold apply). The crop (pixels
  the rectangle touches) is PNG-encoded and queued for a background encode like an image
  (:mod:`backend.controls.crops`; the preset resizes it, so a small crop is seen at a higher
  resolution), its features cached under the crop bytes' key. Once that encode has finished, the
  same rectangle (Label Studio re-sends every smart region with each new one) is answered from the
  crop's features instead: the pixels of ``L`` of the crop's own segmentation;
* **fallback** (a positive rectangle whose label wins nowhere in its box: no pixel's argmax is
  ``L``): the box's most ``L``-like part instead of nothing -- ``p_L - max(p_other)`` per pixel of the
  box (the whole image's probabilities), thresholded by Otsu inside the box (at least the best pixel).
  Its score is ``L``'s mean probability there (lower than a winner's) and the region says so:
  ``"meta": {"text": [...]}`` (Label Studio shows it in the region's details) and
  ``"cass": {"fallback": "relative"}``;
* **positive keypoint**: on the whole image's label map (features from the feature cache, the map
  kept in an in-process LRU, so later clicks cost a flood fill): if the point's pixel is ``L``, the
  8-connected region of ``L`` under it is added; otherwise the 8-connected region of the point's
  predicted class (or of the unlabelled pixels) under it is added *as L* -- "the point's class is
  restricted to L": the annotator says that this region is L;
* **negative keypoint** (``is_positive: false``): removes the 8-connected region of the mask so far
  under the point (or, if the point is outside it, the part of the mask that lies in the region of
  the point's predicted class); **negative rectangle**: removes the mask inside the rectangle.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np

from backend.controls.base import adapter_for
from backend.controls.config import Controls
from backend.controls.crops import CropEncoder
from backend.controls.smart_maps import ImageMaps
from backend.controls.smart_masks import crop_png, flood, relative_part

SMART_TYPES = {"rectanglelabels": "rectangle", "keypointlabels": "keypoint"}
#: Smart regions one context may hold here whatever the settings say (the HTTP edge refuses more than
#: ``CASS_MAX_SMART_HINTS``, default 20, before admission; this is the ceiling for any other door).
MAX_HINTS = 100


class ContextError(ValueError):
    """An interactive ``context`` that cannot be used (names the item and the problem)."""


@dataclass(frozen=True)
class Hint:
    """One smart region of the context: ``kind`` rectangle/keypoint, box in percent, label, sign."""

    kind: str
    to_name: str
    label: str
    x: float
    y: float
    width: float
    height: float
    positive: bool


def parse_context(context, controls: Controls) -> list[Hint]:
    """``{"result": [...]}`` -> hints; :class:`ContextError` naming the first bad item."""
    if not isinstance(context, dict):
        raise ContextError(f"'context' must be an object with a 'result' list, got {type(context).__name__}")
    items = context.get("result")
    if not isinstance(items, list) or not items:
        raise ContextError("'context.result' must be a non-empty list of smart regions")
    if len(items) > MAX_HINTS:
        raise ContextError(f"the context has {len(items)} smart regions, over the ceiling of {MAX_HINTS} "
                           f"(CASS_MAX_SMART_HINTS may not exceed it)")
    tools = {t.from_name: t for t in controls.smart}
    hints = []
    for n, item in enumerate(items):
        where = f"context.result[{n}]"
        if not isinstance(item, dict):
            raise ContextError(f"{where} must be an object, got {type(item).__name__}")
        kind = SMART_TYPES.get(item.get("type"))
        if kind is None:
            raise ContextError(f"{where} has type {item.get('type')!r}; expected one of {sorted(SMART_TYPES)}")
        tool = tools.get(item.get("from_name"))
        if tool is None:
            raise ContextError(f"{where}: from_name {item.get('from_name')!r} is not a smart tool of the label "
                               f"config (smart tools: {sorted(tools) or 'none'}; add smart=\"true\")")
        value = item.get("value")
        if not isinstance(value, dict):
            raise ContextError(f"{where} has no 'value' object")
        labels = value.get(item["type"])
        if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
            raise ContextError(f"{where}: value.{item['type']} must hold exactly one label, got {labels!r}")
        label = labels[0]
        if label not in tool.labels:
            raise ContextError(f"{where}: label {label!r} is not a label of {tool.from_name!r} ({list(tool.labels)})")
        numbers = {}
        for key in ("x", "y") + (("width", "height") if kind == "rectangle" else ()):
            v = value.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ContextError(f"{where}: value.{key} must be a number (percent), got {v!r}")
            numbers[key] = float(v)
        if kind == "rectangle" and (numbers["width"] <= 0 or numbers["height"] <= 0):
            raise ContextError(f"{where}: the rectangle has no area (width {numbers['width']}, height "
                               f"{numbers['height']})")
        positive = item.get("is_positive", True)
        hints.append(Hint(kind, tool.to_name, label, numbers["x"], numbers["y"], numbers.get("width", 0.0),
                          numbers.get("height", 0.0), bool(positive) if positive is not None else True))
    return hints


def box_pixels(hint: Hint, width: int, height: int) -> tuple[int, int, int, int]:
    """Percent box -> ``(x0, y0, x1, y1)`` pixels it touches, clipped, at least one pixel;
    :class:`ContextError` when the box lies outside the image."""
    x0 = int(np.floor(hint.x / 100 * width))
    y0 = int(np.floor(hint.y / 100 * height))
    x1 = int(np.ceil((hint.x + hint.width) / 100 * width))
    y1 = int(np.ceil((hint.y + hint.height) / 100 * height))
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise ContextError(f"the {hint.kind} at x={hint.x}%, y={hint.y}% lies outside the image")
    return x0, y0, x1, y1


class Refiner:
    """Answers smart-tool contexts with a :class:`~backend.predict.predictor.Predictor`'s engine and cache.

    ``maps``: how many whole-image label maps and decoded images are kept
    (:class:`~backend.controls.smart_maps.ImageMaps`); ``crops``: the background crop encoder (one per
    refiner by default).
    """

    def __init__(self, predictor, maps: int = 8, crops: CropEncoder | None = None):
        self.predictor = predictor
        self.crops = crops or CropEncoder()
        self.max_maps = maps
        self.maps = ImageMaps(predictor, maps)

    def answer(self, task: dict, controls: Controls, context, fetch) -> dict:
        """One prediction ``{result, score, model_version}`` holding only the refined regions."""
        hints = parse_context(context, controls)
        images: dict[str, tuple[bytes, np.ndarray]] = {}
        masks: dict[tuple, list] = {}  # (target index, label) -> [mask, score_sum, n, fallback notes]
        clock = getattr(self.predictor, "clock", time.monotonic)
        budget_s = getattr(self.predictor, "predict_budget_s", None)
        start = clock()
        for n, hint in enumerate(sorted(hints, key=lambda h: not h.positive)):  # positives first, then removals
            if budget_s is not None and clock() - start > budget_s:
                raise ContextError(f"the smart regions took longer than this request's budget of {budget_s:g}s "
                                   f"(CASS_PREDICT_BUDGET_S) after {n} of {len(hints)}: send fewer at a time")
            target = controls.output_for(hint.to_name, hint.label)
            key = (controls.outputs.index(target), hint.label)
            url = target.image_url(task)
            if url not in images:
                data = fetch(url, task.get("id"))
                images[url] = (data, self.maps.decoded(data))
            data, rgb = images[url]
            height, width = rgb.shape[:2]
            entry = masks.setdefault(key, [np.zeros((height, width), bool), 0.0, 0, []])
            if hint.kind == "rectangle":
                self._rectangle(hint, target, data, rgb, entry)
            else:
                self._keypoint(hint, target, data, entry)
        regions = []
        for (index, label), (mask, score_sum, n, notes) in masks.items():
            target = controls.outputs[index]
            found = adapter_for(target).mask_regions(mask, label, score_sum / n if n else 0.0, target)
            if notes:  # some rectangle of this label fell back to its most label-like part
                found = [{**r, "meta": {"text": notes[:1]}, "cass": {"fallback": "relative"}} for r in found]
            regions.extend(found)
        scores = [r["score"] for r in regions]
        return {"result": regions, "score": round(float(np.mean(scores)), 4) if scores else 0.0,
                "model_version": self.predictor.model_version}

    # ---------------------------------------------------------------------------------------------
    def _rectangle(self, hint: Hint, target, data: bytes, rgb: np.ndarray, entry: list) -> None:
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = box_pixels(hint, width, height)
        if not hint.positive:
            entry[0][y0:y1, x0:x1] = False
            return
        index = target.vocabulary.names.index(hint.label)
        crop = crop_png(rgb, (x0, y0, x1, y1))
        key = (hashlib.blake2b(crop, digest_size=16).digest(), self.predictor.engine.fingerprint)
        if self.crops.ready(key):  # the crop's own features are cached: its higher-resolution map
            seg = self.predictor.segment(self.predictor.features(crop), target)
            won = seg.labels == index
        else:  # at once from the whole image's map; the crop's encode goes to the background
            seg = self.maps.label_map(data, target)
            won = seg.labels[y0:y1, x0:x1] == index
            self.crops.submit(key, lambda: self.predictor.features(crop))
        if won.any():
            entry[0][y0:y1, x0:x1] |= won
            entry[1] += float(seg.scores[index])
        else:  # L wins nowhere in the box: its most L-like part, said so (module docstring)
            part, score = self._relative(data, target, index, (x0, y0, x1, y1))
            entry[0][y0:y1, x0:x1] |= part
            entry[1] += score
            entry[3].append(f"CASS: {hint.label!r} wins nowhere in the box; this is the box's most "
                            f"{hint.label!r}-like part (its probability relative to the best other class, "
                            f"Otsu threshold), score {score:.2f}")
        entry[2] += 1

    def _relative(self, data: bytes, target, index: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
        """``(mask of the box, score)``: :func:`~backend.controls.smart_masks.relative_part` of the
        whole image's per-class probabilities in the box."""
        x0, y0, x1, y1 = box
        features = self.predictor.features(data)
        with self.predictor.slots:  # an inference slot, as Predictor.segment takes it
            seg = self.predictor.engine.segment(features, target.vocabulary,
                                                params=self.predictor.text_params(target), return_probs=True)
        return relative_part(np.asarray(seg.probs[:, y0:y1, x0:x1], np.float32), index)

    def _keypoint(self, hint: Hint, target, data: bytes, entry: list) -> None:
        self._keypoint_mask(hint, target, self.maps.label_map(data, target), entry)

    def _keypoint_mask(self, hint: Hint, target, seg, entry: list) -> None:
        height, width = seg.labels.shape
        x = min(max(int(hint.x / 100 * width), 0), width - 1)
        y = min(max(int(hint.y / 100 * height), 0), height - 1)
        index = target.vocabulary.names.index(hint.label)
        at = int(seg.labels[y, x])
        region = flood(seg.labels == at, x, y)
        if hint.positive:
            entry[0] |= region
            entry[1] += float(seg.scores[index]) if at == index else float(seg.scores[at]) if at >= 0 else 0.0
            entry[2] += 1
        elif entry[0][y, x]:
            entry[0] &= ~flood(entry[0], x, y)
        else:
            entry[0] &= ~region


def timed(fn, *args) -> tuple[object, float]:
    """``(fn(*args), seconds)`` (the benchmark's helper)."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


_REFINERS_LOCK = threading.Lock()


def refiner_for(predictor) -> Refiner:
    """The process's one :class:`Refiner` of ``predictor`` (made on first use)."""
    with _REFINERS_LOCK:
        refiner = getattr(predictor, "_cass_refiner", None)
        if refiner is None:
            refiner = Refiner(predictor)
            predictor._cass_refiner = refiner
        return refiner
