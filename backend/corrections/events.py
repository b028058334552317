"""One dispatcher for Label Studio's annotation webhooks, parsed once, handed to every listener.

Label Studio 1.23.2 sends (recorded in ``tests/data/label_studio_1.23.2/webhook_annotation*.json``):

* ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: ``{action, annotation: {id, result, was_cancelled,
  task, project, updated_at, parent_prediction, ...}, task: {id, data, ...}, project: {id,
  label_config, created_at, ...}}``;
* ``ANNOTATIONS_DELETED``: ``{action, annotations: [{id}, ...], project: {...}}`` -- ids only, no task
  and no result (a listener must remember what an annotation contributed to take it back).

:func:`parse_event` turns one payload into :class:`AnnotationEvent` objects (one per deleted id);
:func:`dispatch` calls every listener registered with :func:`register_listener` on each of them. A
skipped (``was_cancelled``) annotation is delivered as ``kind="deleted"``: it has no masks and any
earlier contribution of that id must go. A payload that cannot be parsed raises :class:`EventError`
naming the field; one listener's failure is logged and reported, the other listeners still run.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import redis

from backend.corrections.annotations import AnnotationError, annotation_masks, result_size
from backend.fetch.images import ImageFetchError
from backend.labelstudio.client import LabelStudioError

log = logging.getLogger("backend.corrections")

#: Webhook action -> :attr:`AnnotationEvent.kind`.
EVENTS = {"ANNOTATION_CREATED": "created", "ANNOTATION_UPDATED": "updated", "ANNOTATIONS_DELETED": "deleted"}


class EventError(ValueError):
    """An annotation webhook payload that cannot be used (names the field and the problem)."""


@dataclass(frozen=True)
class AnnotationEvent:
    """One annotation's change.

    ``kind``: ``"created"``, ``"updated"`` or ``"deleted"`` (also a cancelled/skipped annotation);
    ``project``: Label Studio project id; ``task_id`` / ``task``: the task (None for deletions);
    ``annotation_id``; ``masks``: label -> ``(H, W)`` bool mask at the original image size (``{}``
    for deletions and for annotations without mask regions). ``controls``: the project's parsed
    output controls (None for deletions or a config CASS cannot use), ``result``: the raw result
    list, ``size``: ``(H, W)`` of the masks' image (None without mask regions), ``updated_at``: the
    annotation's ISO timestamp (orders redeliveries), ``parent_prediction``: the prediction id the
    annotation started from, if Label Studio sent one, ``project_data``: the webhook's project object.
    """

    kind: str
    project: int
    task_id: int | None
    annotation_id: int
    task: dict | None
    masks: dict[str, np.ndarray]
    controls: object = None
    result: list = field(default_factory=list)
    size: tuple[int, int] | None = None
    updated_at: str | None = None
    parent_prediction: int | None = None
    cancelled: bool = False
    project_data: dict = field(default_factory=dict)


Listener = Callable[[AnnotationEvent], object]
_listeners: list[tuple[str, Listener]] = []
_lock = threading.Lock()


def register_listener(fn: Listener, name: str | None = None) -> Listener:
    """Call ``fn(event)`` for every annotation event (once per function: registering it again replaces
    it, under its ``name``, default ``fn.__qualname__``). Returns ``fn`` (usable as a decorator)."""
    name = name or getattr(fn, "__qualname__", None) or repr(fn)
    with _lock:
        _listeners[:] = [(n, f) for n, f in _listeners if n != name and f is not fn]
        _listeners.append((name, fn))
    return fn


def unregister_listener(fn_or_name) -> None:
    with _lock:
        _listeners[:] = [(n, f) for n, f in _listeners if f is not fn_or_name and n != fn_or_name]


def listeners() -> list[str]:
    with _lock:
        return [n for n, _ in _listeners]


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{where} must be an integer id, got {value!r}")
    return value


def _project_id(data: dict) -> int:
    project = data.get("project")
    if isinstance(project, dict):
        return _int(project.get("id"), "project.id")
    return _int(project, "project")


def parse_event(action: str, data: dict, controls_for: Callable[[dict], object],
                max_pixels: int | None = None) -> list[AnnotationEvent]:
    """The events of one webhook payload (``data`` without ``action``).

    ``controls_for(project_dict)`` returns the project's :class:`~backend.controls.config.Controls`
    (raising ``LabelConfigError`` when CASS cannot use its config, which leaves ``controls=None`` and
    ``masks={}``). ``max_pixels``: CASS_MAX_IMAGE_MP, the largest canvas a region may declare. Raises :class:`EventError` for an unknown action or a malformed payload, with the
    :class:`~backend.corrections.annotations.AnnotationError` text for bad regions.
    """
    kind = EVENTS.get(action)
    if kind is None:
        raise EventError(f"{action!r} is not an annotation event ({', '.join(EVENTS)})")
    if not isinstance(data, dict):
        raise EventError(f"a {action} payload must be an object, got {type(data).__name__}")
    project = _project_id(data)
    project_data = data["project"] if isinstance(data.get("project"), dict) else {"id": project}
    if kind == "deleted":
        items = data.get("annotations")
        if not isinstance(items, list):
            raise EventError(f"{action}: 'annotations' must be a list of {{id}} objects, got {type(items).__name__}")
        return [AnnotationEvent("deleted", project, None,
                                _int(item.get("id") if isinstance(item, dict) else item, f"annotations[{i}].id"),
                                None, {}, project_data=project_data)
                for i, item in enumerate(items)]
    annotation = data.get("annotation")
    if not isinstance(annotation, dict):
        raise EventError(f"{action}: 'annotation' must be an object, got {type(annotation).__name__}")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    task = data.get("task") if isinstance(data.get("task"), dict) else None
    task_id = _int(task.get("id") if task is not None else annotation.get("task"), "task.id (or annotation.task)")
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise EventError(f"annotation {annotation_id}: 'result' must be a list, got {type(result).__name__}")
    parent = annotation.get("parent_prediction")
    common = dict(project=project, task_id=task_id, annotation_id=annotation_id, task=task,
                  updated_at=str(annotation.get("updated_at") or "") or None,
                  parent_prediction=parent if isinstance(parent, int) and not isinstance(parent, bool) else None,
                  project_data=project_data)
    if annotation.get("was_cancelled"):
        return [AnnotationEvent("deleted", masks={}, cancelled=True, **common)]
    try:
        controls = controls_for(project_data)
    except Exception as exc:  # a config CASS cannot use: the event still goes out, without masks
        log.info("annotation %s of project %s: no masks (%s)", annotation_id, project, exc)
        controls = None
    masks: dict[str, np.ndarray] = {}
    size = None
    if controls is not None:
        try:
            masks = annotation_masks(result, controls, max_pixels=max_pixels)
            size = result_size(result)
        except AnnotationError as exc:
            raise EventError(f"annotation {annotation_id} of task {task_id}: {exc}") from None
    return [AnnotationEvent(kind, masks=masks, controls=controls, result=result, size=size, **common)]


#: Failures a listener can meet in normal operation: one WARNING line each, no traceback.
EXPECTED_FAILURES = (LabelStudioError, ImageFetchError, AnnotationError, redis.exceptions.ConnectionError,
                     redis.exceptions.TimeoutError)


def dispatch(action: str, data: dict, controls_for: Callable[[dict], object], max_pixels: int | None = None) -> dict:
    """Parse ``data`` once and call every listener on each event.

    Returns ``{"events": n, "listeners": {name: [result per event] or {"error": ...}}}``. Raises
    :class:`EventError` when the payload cannot be parsed (nothing is called then).
    """
    events = parse_event(action, data, controls_for, max_pixels)
    with _lock:
        current = list(_listeners)
    out: dict[str, object] = {}
    for name, fn in current:
        results = []
        try:
            for event in events:
                results.append(fn(event))
        except EXPECTED_FAILURES as exc:  # Label Studio, an image or Redis away, an unusable prediction
            log.warning("listener %s failed on %s (project %s): %s: %s", name, action,
                        events[0].project if events else None, type(exc).__name__, exc)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        except Exception as exc:  # a bug: the traceback belongs in the log; the others still run
            log.exception("listener %s failed on %s (project %s)", name, action, events[0].project if events else None)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[name] = results
    return {"events": len(events), "listeners": out}
