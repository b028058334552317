"""Connected components of one class and their scores (``cass_instances``, docs/polygons.md).

A region's ``score`` is its class's score (``segmentation.scores[c]``: the mean probability of
class ``c`` over its pixels). With ``cass_instances="true"`` and per-class probabilities at hand
(``segmentation.probs``, ``(C, H, W)`` float32), a component's score is the mean probability of its
class over that component's pixels instead; without probabilities it stays the class score.
"""
from __future__ import annotations

import cv2
import numpy as np


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(H, W)`` bool mask -> ``(n, comp, sizes)``: ``n`` 8-connected components, ``comp`` ``(H, W)``
    int32 ids ``1..n`` (``0`` outside), ``sizes`` ``(n + 1,)`` int64 pixels per id."""
    n, comp = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)
    sizes = np.bincount(comp.ravel(), minlength=n).astype(np.int64)
    return n - 1, comp.astype(np.int32), sizes


def component_scores(segmentation, class_index: int, comp: np.ndarray, sizes: np.ndarray,
                     per_component: bool) -> np.ndarray:
    """``(n + 1,)`` float64 score per component id of class ``class_index`` (index 0 unused): the mean
    class probability over the component when ``per_component`` and ``segmentation.probs`` is set,
    else the class score for all."""
    class_score = float(segmentation.scores[class_index])
    probs = getattr(segmentation, "probs", None)
    if not per_component or probs is None:
        return np.full(sizes.shape, class_score)
    sums = np.bincount(comp.ravel(), weights=probs[class_index].ravel(), minlength=sizes.size)
    return np.divide(sums, sizes, out=np.full(sizes.shape, class_score), where=sizes > 0)
