"""Which prediction an annotation is compared with: the one Label Studio stored for the task.

Decision (docs/corrections.md): the prediction is **fetched** from Label Studio
(``GET /api/predictions/?task=<id>`` through label-studio-sdk's HTTP client and auth, i.e. the personal
access token or legacy token of ``LABEL_STUDIO_API_KEY``; without it, the ``/setup`` address and
token of the project), not recomputed from cached features. That is what the annotator saw and
corrected, it costs one small request instead of an image download and a segment pass, and it
stays right after a label or threshold change (a recomputation would compare with a prediction
nobody saw).

Of the task's predictions, this backend's are those whose ``model_version`` starts with the engine's
``cass-<preset>-clip.<digest>-dino.<digest>`` (so PAMR and memory suffixes count). The one the
annotation started from (``parent_prediction``) wins, then one of exactly the current
``model_version``, then the newest.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("backend.corrections")

_BASE = re.compile(r"^(cass-.*?-clip\.[0-9a-f]+-dino\.[0-9a-f]+)")


def version_base(model_version: str) -> str:
    """``cass-<preset>-clip.<d>-dino.<d>`` of a model version (the whole string if it has no such prefix)."""
    m = _BASE.match(model_version or "")
    return m.group(1) if m else (model_version or "")


def choose(predictions: list[dict], model_version: str, parent: int | None = None) -> dict | None:
    """This backend's prediction among ``predictions`` (Label Studio prediction objects), or None."""
    base = version_base(model_version)
    ours = [p for p in predictions if isinstance(p, dict) and isinstance(p.get("result"), list)
            and all(part.startswith(base) for part in str(p.get("model_version") or "").split("+"))
            and p.get("model_version")]
    if not ours:
        return None
    for p in ours:
        if parent is not None and p.get("id") == parent:
            return p
    exact = [p for p in ours if p.get("model_version") == model_version]
    return max(exact or ours, key=lambda p: (str(p.get("created_at") or ""), int(p.get("id") or 0)))


class PredictionSource:
    """``prediction(event) -> (result, model_version, prediction_id) | None`` from Label Studio.

    ``credentials(project dict) -> (url, key)``: the project's Label Studio address and token
    (:meth:`backend.predict.projects.ProjectRegistry.credentials`)."""

    def __init__(self, credentials, predictor, timeout_s: float = 20.0):
        self.credentials = credentials
        self.predictor = predictor
        self.timeout_s = timeout_s

    def fetch(self, project_data: dict, task_id: int) -> list[dict]:
        from backend.labelstudio.client import Projects

        url, key = self.credentials(project_data)
        return Projects(url, key, timeout_s=self.timeout_s).predictions(int(task_id))

    def prediction(self, event):
        predictions = self.fetch(event.project_data, event.task_id)
        chosen = choose(predictions, self.predictor.model_version, event.parent_prediction)
        if chosen is None:
            log.info("task %s: none of its %d prediction(s) is this backend's (%s)", event.task_id,
                     len(predictions), self.predictor.model_version)
            return None
        return chosen["result"], chosen.get("model_version"), chosen.get("id")
