"""A webhook is a notification, not data: what an annotation event says is read back from Label Studio.

An ``ANNOTATION_*`` webhook is trusted for two things only: the ids it names (project, annotation)
and that something may have changed. Everything the listeners use is read back from Label Studio
with the project's own credentials (:meth:`backend.predict.projects.ProjectRegistry.credentials`):

* ``GET /api/annotations/{id}``: result, task, project, updated_at, was_cancelled, parent_prediction;
* ``GET /api/tasks/{task}``: the task's data (the image the project memory fetches) and its project;
* ``GET /api/projects/{id}``: the label config and ``created_at`` (it must be the project ``/setup`` saw).

:meth:`ReadBack.resolve` returns a payload of the webhook's shape built only from those answers (the
parser in :mod:`backend.corrections.events` reads it), or raises :class:`Refused`: a project this
backend was never set up for, an annotation Label Studio does not have, an annotation whose task is
in another project, a Label Studio that cannot be read. A refusal's text holds ids only, never the
payload's content or Label Studio's answers (those go to the log). ``ANNOTATIONS_DELETED`` keeps
only the ids Label Studio confirms are gone (``GET /api/annotations/{id}`` answers 404).
"""
from __future__ import annotations

import logging
from typing import Callable

from backend.labelstudio.client import LabelStudioError, LabelStudioNotFound, Projects
from backend.predict.projects import setup_project_key, valid_id

log = logging.getLogger("backend.corrections")

#: The annotation fields the parser reads (all from Label Studio's answer).
ANNOTATION_FIELDS = ("result", "updated_at", "was_cancelled", "parent_prediction")
#: At most this many ids of one ``ANNOTATIONS_DELETED`` are checked (one request each).
MAX_DELETED = 1000


class Refused(Exception):
    """A webhook this backend does not act on; ``str(exc)`` is the whole answer (ids only)."""


def _read(call: Callable[[], object], what: str) -> dict:
    """``call()``'s object, or :class:`Refused` (404: ``what`` is not in Label Studio)."""
    try:
        out = call()
    except LabelStudioNotFound:
        raise Refused(f"{what} is not in Label Studio") from None
    except LabelStudioError as exc:
        log.warning("reading %s back from Label Studio failed: %s", what, exc)
        raise Refused(f"Label Studio could not be read for {what}") from None
    if not isinstance(out, dict):
        log.warning("reading %s back from Label Studio: not an object (%s)", what, type(out).__name__)
        raise Refused(f"Label Studio could not be read for {what}")
    return out


class ReadBack:
    """Turns a webhook into Label Studio's own data for the ids it names.

    ``projects``: the :class:`~backend.predict.projects.ProjectRegistry` (which projects were set up,
    their credentials); ``client_for(url, key)``: a :class:`~backend.labelstudio.client.Projects`.
    """

    def __init__(self, projects, client_for: Callable[[str, str], Projects] | None = None,
                 timeout_s: float = 20.0):
        self.projects = projects
        self.client_for = client_for or (lambda url, key: Projects(url, key, timeout_s=timeout_s))

    def resolve(self, action: str, data) -> dict:
        """The payload of ``action`` rebuilt from Label Studio's answers; raises :class:`Refused`."""
        project = data.get("project") if isinstance(data, dict) else None
        pid = valid_id(project.get("id")) if isinstance(project, dict) else None
        if pid is None:
            raise Refused("the webhook names no project this backend was set up for")
        if not self.projects.known(project):
            raise Refused(f"project {pid} was not set up with this backend")
        client = self._client(project, pid)
        if action == "ANNOTATIONS_DELETED":
            trusted = self._project(client, project, pid)
            return {"project": trusted, "annotations": [{"id": i} for i in self._gone(client, data, pid)]}
        annotation = data.get("annotation")
        aid = valid_id(annotation.get("id")) if isinstance(annotation, dict) else None
        if aid is None:
            raise Refused(f"the webhook names no annotation of project {pid}")
        what = f"annotation {aid}"
        found = _read(lambda: client.annotation(aid), what)
        task_id = valid_id(found.get("task"))
        if task_id is None or found.get("project") not in (None, pid):
            raise Refused(f"{what} is not in project {pid}")
        task = _read(lambda: client.task(task_id), what)
        if task.get("project") != pid or not isinstance(task.get("data"), dict):
            raise Refused(f"{what} is not in project {pid}")
        return {"project": self._project(client, project, pid),
                "task": {"id": task_id, "data": task["data"], "project": pid},
                "annotation": {**{k: found.get(k) for k in ANNOTATION_FIELDS},
                               "id": aid, "task": task_id, "project": pid}}

    def _client(self, project: dict, pid: int) -> Projects:
        url, key = self.projects.credentials(project)
        try:
            return self.client_for(url, key)
        except LabelStudioError as exc:
            log.warning("project %s: no Label Studio to read the webhook back from: %s", pid, exc)
            raise Refused(f"Label Studio cannot be reached for project {pid}") from None

    def _project(self, client: Projects, project: dict, pid: int) -> dict:
        """Label Studio's project (id, created_at, label_config); it must be the one ``/setup`` saw."""
        found = _read(lambda: client.project(pid), f"project {pid}")
        if found.get("id") != pid or setup_project_key(found) != setup_project_key(project):
            raise Refused(f"project {pid} was not set up with this backend")
        config = found.get("label_config")
        return {"id": pid, "created_at": found.get("created_at"),
                "label_config": config if isinstance(config, str) else None}

    def _gone(self, client: Projects, data: dict, pid: int) -> list[int]:
        """The ids of an ``ANNOTATIONS_DELETED`` that Label Studio confirms are gone (404)."""
        items = data.get("annotations")
        ids = [valid_id(item.get("id") if isinstance(item, dict) else item) for item in items] \
            if isinstance(items, list) else []
        gone = []
        for aid in [i for i in ids if i is not None][:MAX_DELETED]:
            try:
                client.annotation(aid)
            except LabelStudioNotFound:
                gone.append(aid)
                continue
            except LabelStudioError as exc:
                log.warning("project %s: annotation %s not checked, kept: %s", pid, aid, exc)
                continue
            log.warning("project %s: ANNOTATIONS_DELETED names annotation %s, which Label Studio still has",
                        pid, aid)
        return gone
