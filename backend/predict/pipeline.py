"""The one way through: every door that predicts -- ``/predict``, a job chunk, ``TASKS_CREATED``
warm-up, a smart region -- builds a :class:`RequestContext` here and calls the same :class:`Pipeline`.

The context resolves, once per request and from explicit arguments (no thread-locals, no context
variables): the project's output controls (one parser, :func:`backend.controls.config.parse_controls`,
with the settings' nothing rule and vocabulary limits), how its images are fetched (the project's
Label Studio credentials, :class:`~backend.predict.projects.ProjectRegistry`), its project memory
(when on and not empty) and the ``model_version`` (:mod:`backend.predict.version`). The doors then
differ only in what they do with it: answer HTTP, post to Label Studio in bulk, queue encodes.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from backend.controls.config import Controls, parse_controls
from backend.controls.smart import ContextError, Refiner
from backend.fetch.images import ImageFetchError
from backend.labelstudio.client import LabelStudioError, Projects
from backend.predict.errors import visible_error
from backend.predict.projects import Connection, ProjectRegistry, setup_project_key, task_ids, valid_id

log = logging.getLogger("backend.predict.pipeline")

Fetch = Callable[[str, Any], bytes]
#: Seconds one ``TASKS_CREATED`` read-back call may take (Label Studio itself waits 1 s for the answer).
READ_BACK_TIMEOUT_S = 10.0


class Refused(Exception):
    """A webhook this backend does not act on; ``str(exc)`` is the whole answer (ids only)."""


def parse_config(label_config: str, settings) -> Controls:
    """The project's controls with the settings' nothing rule, vocabulary limits and region defaults;
    raises ``LabelConfigError`` naming what CASS cannot serve."""
    return parse_controls(label_config, settings.nothing, settings.limits, getattr(settings, "regions", None))


@dataclass(frozen=True)
class RequestContext:
    """What one request predicts with: ``project`` (Label Studio's project string or id, or None),
    ``controls`` (outputs and smart tools), ``fetch(url, task_id) -> bytes``, ``memory`` (a non-empty
    ``cass.memory.ProjectMemory`` or None), ``version`` (every prediction's ``model_version``) and
    ``origin`` (the Label Studio that relative image references resolve against, "" if none)."""

    project: Any
    controls: Controls
    fetch: Fetch
    memory: Any
    version: str
    origin: str = ""

    def with_fetch(self, fetch: Fetch) -> "RequestContext":
        """The same request with another download function (a job's prefetched images)."""
        return dataclasses.replace(self, fetch=fetch)


class Pipeline:
    """Built once per process by :mod:`backend.bootstrap`; thread-safe (its parts are)."""

    def __init__(self, predictor, settings, projects: ProjectRegistry, memory=None, warmer=None):
        self.predictor = predictor
        self.settings = settings
        self.projects = projects
        self.memory = memory    # backend.corrections.memory.MemoryService, or None
        self.warmer = warmer    # backend.predict.warm_tasks.TaskWarmer, or None (off)
        self._refiner: Refiner | None = None  # smart tools: made on first use (it starts a thread)
        self._refiner_lock = threading.Lock()

    def refiner(self) -> Refiner:
        """The process's one smart-tool :class:`~backend.controls.smart.Refiner` (label maps, crops)."""
        with self._refiner_lock:
            if self._refiner is None:
                self._refiner = Refiner(self.predictor)
            return self._refiner

    # -- the request context --------------------------------------------------------------------
    def parse(self, label_config: str) -> Controls:
        """The project's controls (:func:`parse_config` with this pipeline's settings)."""
        return parse_config(label_config, self.settings)

    def project_memory(self, project, label_config: str | None = None):
        """The project's memory when it is on and holds entries, else None."""
        if self.memory is None:
            return None
        return self.memory.for_request(project, label_config)

    def version(self, project, controls: Controls, label_config: str | None = None) -> str:
        """The ``model_version`` ``/setup`` answers (the same a prediction of this request carries)."""
        return self.predictor.version_of(controls, self.project_memory(project, label_config))

    def context(self, project, controls: Controls, *, label_config: str | None = None,
                fetch: Fetch | None = None, connection: Connection | None = None) -> RequestContext:
        """The request's context; ``fetch`` defaults to the project's fetcher (``connection``: the
        caller's Label Studio address/token, else what the project's ``/setup`` said)."""
        origin = ""
        if fetch is None:
            fetcher = self.projects.fetcher(project, connection)
            fetch = fetcher.fetch
            origin = fetcher.label_studio.base_url if fetcher.label_studio is not None else ""
        memory = self.project_memory(project, label_config)
        version = self.predictor.version_of(controls, memory)
        return RequestContext(project, controls, fetch, memory, version, origin)

    # -- the doors -------------------------------------------------------------------------------
    def predict_tasks(self, tasks: list, ctx: RequestContext) -> list[dict]:
        """One entry per task, in order, under the predict budget: a prediction, a visible error
        prediction for a task that failed (:func:`backend.predict.errors.visible_error`), or an error
        entry without ``result`` for one to retry later (budget used up, prompts still encoding)."""
        entries = self.predictor.predict(tasks, ctx.controls, ctx.fetch, memory=ctx.memory, version=ctx.version)
        return [visible_error(entry) for entry in entries]

    def predict_task(self, task: dict, ctx: RequestContext, info=None, prefill=None) -> dict:
        """One task (a job's loop); raises on a task that fails, like ``Predictor.predict_task`` (the
        job posts :func:`backend.predict.errors.error_prediction` for it)."""
        return self.predictor.predict_task(task, ctx.controls, ctx.fetch, info, memory=ctx.memory,
                                           version=ctx.version, prefill=prefill)

    def refine(self, task: dict, ctx: RequestContext, context: dict) -> dict:
        """A smart tool's ``context`` (keypoints, rectangles) -> new regions for one task."""
        from backend.predict.predictor import TASK_ERRORS

        try:
            answer = self.refiner().answer(task, ctx.controls, context, ctx.fetch)
        except TASK_ERRORS as exc:
            raise ContextError(f"{type(exc).__name__}: {exc}") from exc
        return {**answer, "model_version": ctx.version}

    def warm(self, tasks, ctx: RequestContext) -> dict | None:
        """Queue the tasks' images for feature-cache warm-up (never blocks); None when warm-up is off."""
        if self.warmer is None or not ctx.controls:
            return None
        return self.warmer.submit_tasks(tasks, ctx.controls, ctx.fetch, ctx.origin)

    def warm_created(self, project, payload_tasks) -> dict | None:
        """``TASKS_CREATED`` is a notification: for a project set up with this backend, the tasks it
        names are read back from Label Studio by id (at most the warm-up queue's size, the rest
        counted as ``unread``; the project's
        own credentials) and their images queued with the controls of the project's ``/setup``. The
        payload's task data and label config are never used. None when warm-up is off; raises
        :class:`Refused` (ids only in its text) for a project not set up, or a Label Studio that can't
        be read."""
        pid = valid_id(project.get("id")) if isinstance(project, dict) else None
        if pid is None or not self.projects.known(project):
            raise Refused(f"project {pid if pid is not None else '?'} was not set up with this backend")
        if self.warmer is None:
            return None
        connection = self.projects.recall(project)
        if not connection.controls:
            return None
        ids = task_ids(payload_tasks)
        unread = max(0, len(ids) - self.warmer.max_queue)  # beyond the queue's size: not read, not warmed
        ids = ids[:self.warmer.max_queue]
        url, key = self.projects.credentials(project)
        try:
            tasks = Projects(url, key, timeout_s=READ_BACK_TIMEOUT_S).tasks(pid, ids) if ids else []
        except LabelStudioError as exc:
            log.warning("warm-up of project %s: its new tasks could not be read back: %s", pid, exc)
            raise Refused(f"Label Studio could not be read for the tasks of project {pid}") from None
        try:
            ctx = self.context(setup_project_key(project), connection.controls)
        except ImageFetchError as exc:  # a Label Studio address the strict URL parse refuses
            raise Refused(f"project {pid}: {exc}") from None
        return {"tasks": len(tasks), "unread": unread, **self.warmer.submit_tasks(tasks, ctx.controls, ctx.fetch, ctx.origin)}
