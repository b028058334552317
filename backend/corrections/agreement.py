"""Agreement per label: an annotation's masks against this backend's prediction for the same task.

Per annotation, for every label ``L`` on either side (``A_L`` annotated mask, ``P_L`` predicted mask,
both ``(H, W)`` bool at the original size) the contribution holds integer pixel counts:

* ``ann[L] = |A_L|``, ``pred[L] = |P_L|``, ``tp[L] = |A_L & P_L|``, ``seen[L] = 1``;
* ``conf[L][M] = |A_L & P_M|`` for every predicted label ``M`` (``M == L`` included) and
  ``conf[L][""]`` for annotated pixels of ``L`` that no predicted region covers: which label the
  model gave the annotator's pixels.

Project totals are sums of contributions (pooled like mmseg's IoU metric: dataset-wide
intersections and unions, not a mean of per-image IoUs): ``IoU = tp / (ann + pred - tp)``,
``precision = tp / pred``, ``recall = tp / ann`` (None where the denominator is 0), ``annotations`` =
sum of ``seen``. Which prediction is compared, and where the totals live: :mod:`.predictions`,
:mod:`.store`; docs/corrections.md.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from backend.corrections.annotations import AnnotationError, annotation_masks

log = logging.getLogger("backend.corrections")

#: The unlabelled "predicted label" in confusions.
NONE = ""


def field(*parts: str) -> str:
    """A totals field name: a JSON list (``["tp", "cat"]``, ``["conf", "cat", "dog"]``), unambiguous
    for any label text."""
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def unfield(name: str | bytes) -> list[str]:
    return json.loads(name.decode() if isinstance(name, bytes) else name)


def compare(annotated: dict[str, np.ndarray], predicted: dict[str, np.ndarray]) -> dict[str, int]:
    """One annotation's contribution (fields above -> pixel counts; zero counts are left out except
    ``seen``). Masks: ``(H, W)`` bool, all of one shape (ValueError naming both shapes otherwise)."""
    shapes = {m.shape for m in list(annotated.values()) + list(predicted.values())}
    if len(shapes) > 1:
        raise ValueError(f"annotated and predicted masks differ in size: {sorted(shapes)} (H, W)")
    out: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        if n:
            out[name] = out.get(name, 0) + int(n)

    for label in sorted(set(annotated) | set(predicted)):
        a, p = annotated.get(label), predicted.get(label)
        out[field("seen", label)] = 1
        add(field("ann", label), a.sum() if a is not None else 0)
        add(field("pred", label), p.sum() if p is not None else 0)
        if a is not None and p is not None:
            add(field("tp", label), np.count_nonzero(a & p))
    for label, a in annotated.items():
        covered = np.zeros_like(a)
        for other, p in predicted.items():
            add(field("conf", label, other), np.count_nonzero(a & p))
            covered |= p
        add(field("conf", label, NONE), np.count_nonzero(a & ~covered))
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(totals: dict[str, int]) -> dict[str, dict]:
    """Totals fields -> ``{label: {annotations, annotated_px, predicted_px, intersection_px, iou,
    precision, recall, confusion: {predicted label or "": px}, top_confusion: (label, share) | None}}``."""
    labels: dict[str, dict] = {}
    for name, value in totals.items():
        parts = unfield(name)
        if parts[0] not in ("seen", "ann", "pred", "tp", "conf") or len(parts) < 2:
            continue
        row = labels.setdefault(parts[1], {"annotations": 0, "annotated_px": 0, "predicted_px": 0,
                                           "intersection_px": 0, "confusion": {}})
        key = {"seen": "annotations", "ann": "annotated_px", "pred": "predicted_px", "tp": "intersection_px"}
        if parts[0] == "conf":
            row["confusion"][parts[2]] = int(value)
        else:
            row[key[parts[0]]] = int(value)
    for label, row in labels.items():
        a, p, tp = row["annotated_px"], row["predicted_px"], row["intersection_px"]
        row["iou"] = _ratio(tp, a + p - tp)
        row["precision"] = _ratio(tp, p)
        row["recall"] = _ratio(tp, a)
        wrong = {k: v for k, v in row["confusion"].items() if k != label and v > 0}
        if wrong and a:
            top = max(sorted(wrong), key=lambda k: wrong[k])
            row["top_confusion"] = (top, wrong[top] / a)
        else:
            row["top_confusion"] = None
    return {label: labels[label] for label in sorted(labels) if labels[label]["annotations"] > 0}


class AgreementListener:
    """The dispatcher listener: compares, then replaces the annotation's contribution in ``store``.

    ``source``: :class:`~backend.corrections.predictions.PredictionSource` (``prediction(event) ->
    (result, model_version, prediction_id) | None``). ``max_pixels``: CASS_MAX_IMAGE_MP, the largest
    canvas a prediction's regions may declare (default its default).
    """

    name = "agreement"

    def __init__(self, store, source, max_pixels: int | None = None):
        self.store = store
        self.source = source
        self.max_pixels = max_pixels

    def __call__(self, event) -> dict:
        if event.kind == "deleted":
            state = self.store.replace(event.project, event.annotation_id, None, event.updated_at,
                                       tombstone=not event.cancelled)
            return {"annotation": event.annotation_id, "state": state}
        if event.controls is None:
            return {"annotation": event.annotation_id, "skipped": "the project's label config has no "
                                                                  "BrushLabels/PolygonLabels control"}
        found = self.source.prediction(event)
        if found is None:
            state = self.store.replace(event.project, event.annotation_id, None, event.updated_at)
            return {"annotation": event.annotation_id, "state": state,
                    "skipped": f"task {event.task_id} has no prediction of this backend"}
        result, model_version, prediction_id = found
        try:
            predicted = annotation_masks(result, event.controls, size=event.size, max_pixels=self.max_pixels)
        except AnnotationError as exc:
            raise AnnotationError(f"prediction {prediction_id} of task {event.task_id}: {exc}") from None
        contribution = compare(event.masks, predicted)
        meta = {"task": event.task_id, "prediction": prediction_id, "model_version": model_version}
        state = self.store.replace(event.project, event.annotation_id, contribution, event.updated_at, meta=meta)
        return {"annotation": event.annotation_id, "state": state, "prediction": prediction_id,
                "labels": sorted({unfield(k)[1] for k in contribution})}


def install(settings, predictor, credentials) -> AgreementListener:
    """Register the agreement listener with the store of ``settings`` (Redis with ``REDIS_URL``);
    ``credentials(project dict) -> (url, key)`` reads the task's stored prediction."""
    from backend.corrections.events import register_listener
    from backend.corrections.predictions import PredictionSource
    from backend.corrections.store import store_for

    listener = AgreementListener(store_for(getattr(settings, "redis_url", None)), PredictionSource(credentials, predictor),
                                 max_pixels=getattr(settings, "max_image_pixels", None))
    register_listener(listener, name=AgreementListener.name)
    return listener
