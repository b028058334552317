"""Label Studio through label-studio-sdk 2.1.2: project label config, task lists, bulk predictions.

The SDK handles both credentials of ``LABEL_STUDIO_API_KEY``: a legacy token, or a personal access
token (a JWT refresh token it exchanges for access tokens). Reads that the SDK's typed models would
reject on the open-source Label Studio (its project model is the Enterprise one) go through the
SDK's own HTTP client, with the same auth.
"""
from __future__ import annotations

import json
import logging
from typing import Iterable

log = logging.getLogger("backend.jobs")


class LabelStudioError(RuntimeError):
    """Label Studio refused or failed a call the job needs (the message names the call)."""


class LabelStudioNotFound(LabelStudioError):
    """Label Studio answered 404: the object does not exist (or is not visible to the token)."""


class Projects:
    """One Label Studio (``url`` + ``api_key``) seen as projects, tasks and predictions."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0):
        from label_studio_sdk import LabelStudio

        if not url or not api_key:
            raise LabelStudioError("jobs need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a personal access token "
                                   "or legacy token of a user who may read the project and add predictions)")
        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout_s)

    def _get(self, path: str, **params):
        # label-studio-sdk 2.1.2 has no public call for the data manager's task list with
        # ``selectedItems`` / ``fields=all`` (tasks.list pages through typed objects without the
        # predictions' versions), so the sdk's own authenticated httpx client is used for GETs.
        http = self.client._client_wrapper.httpx_client
        try:
            resp = http.request(path.lstrip("/"), method="GET", params=params)
        except Exception as exc:
            raise LabelStudioError(f"GET {self.url}{path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 404:
            raise LabelStudioNotFound(f"GET {self.url}{path} answered HTTP 404")
        if resp.status_code != 200:
            raise LabelStudioError(f"GET {self.url}{path} answered HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def label_config(self, project: int) -> str:
        return self.project(project)["label_config"]

    def project(self, project: int) -> dict:
        """``GET /api/projects/{id}`` as a dict (the sdk's typed project is the Enterprise one)."""
        return self._get(f"/api/projects/{int(project)}/")

    def task(self, task: int) -> dict:
        """``GET /api/tasks/{id}`` as a dict (``id``, ``data``, ``project``, ...); the sdk's
        ``tasks.get`` answers an Enterprise-only union of task models, so its HTTP client is used."""
        return self._get(f"/api/tasks/{int(task)}/")

    def annotation(self, annotation: int) -> dict:
        """``GET /api/annotations/{id}`` through the sdk's ``annotations.get``: ``id``, ``result``,
        ``task``, ``project``, ``updated_at`` (ISO text), ``was_cancelled``, ``parent_prediction``.
        Raises :class:`LabelStudioNotFound` for a 404, :class:`LabelStudioError` otherwise."""
        from label_studio_sdk.core.api_error import ApiError

        call = f"GET {self.url}/api/annotations/{int(annotation)}"
        try:
            model = self.client.annotations.get(id=int(annotation))
        except ApiError as exc:
            if exc.status_code == 404:
                raise LabelStudioNotFound(f"{call} answered HTTP 404") from None
            raise LabelStudioError(f"{call} answered HTTP {exc.status_code}") from None
        except Exception as exc:
            raise LabelStudioError(f"{call}: {type(exc).__name__}: {exc}") from None
        return model.model_dump(mode="json")

    def tasks(self, project: int, ids: Iterable[int] | None = None, view: int | None = None,
              page_size: int = 200) -> list[dict]:
        """The project's tasks (``ids`` only, or those of data-manager ``view``), each with ``id``,
        ``data`` and ``predictions`` (model versions only: ``[{"model_version": ...}]``), in id order."""
        params: dict = {"project": int(project), "fields": "all", "page_size": page_size}
        wanted = None
        if ids is not None:
            wanted = sorted(set(int(i) for i in ids))
            params["selectedItems"] = json.dumps({"all": False, "included": wanted})
        if view is not None:
            params["view"] = int(view)
        out: list[dict] = []
        page = 1
        while True:
            try:
                data = self._get("/api/tasks", **params, page=page)
            except LabelStudioError as exc:
                if page > 1 and "HTTP 404" in str(exc):  # past the last page
                    break
                raise
            batch = data["tasks"] if isinstance(data, dict) else data
            for task in batch:
                out.append({"id": task["id"], "data": task.get("data") or {},
                            "predictions": [{"model_version": p.get("model_version")}
                                            for p in task.get("predictions") or [] if isinstance(p, dict)]})
            total = data.get("total") if isinstance(data, dict) else None
            if not batch or (total is not None and page * page_size >= total):
                break
            page += 1
        if wanted is not None:
            keep = set(wanted)
            out = [t for t in out if t["id"] in keep]
        return sorted(out, key=lambda t: t["id"])

    def predictions(self, task: int) -> list[dict]:
        """The task's stored predictions (Label Studio prediction objects, ``result`` included)."""
        data = self._get("/api/predictions/", task=int(task))
        return data.get("results", []) if isinstance(data, dict) else list(data or [])

    def predicted(self, project: int, ids: Iterable[int], model_version: str) -> set[int]:
        """Those of ``ids`` that already have a prediction of ``model_version``."""
        return {t["id"] for t in self.tasks(project, ids)
                if any(p["model_version"] == model_version for p in t["predictions"])}

    def import_predictions(self, project: int, predictions: list[dict]) -> int:
        """Bulk import (one call): each ``{"task": id, "result": [...], "score": s, "model_version": v}``."""
        from label_studio_sdk import PredictionRequest

        if not predictions:
            return 0
        try:
            resp = self.client.projects.import_predictions(
                id=int(project), request=[PredictionRequest(**p) for p in predictions])
        except Exception as exc:
            raise LabelStudioError(f"importing {len(predictions)} prediction(s) into project {project}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from None
        created = getattr(resp, "created", None)
        return int(created) if created is not None else len(predictions)
