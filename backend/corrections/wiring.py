"""The backend side of the dispatcher: label configs from the webhook's project, the listeners.

:func:`install_listeners` registers the process's listeners once, from the composition root
(:mod:`backend.bootstrap`): agreement per label (:mod:`backend.corrections.agreement`) and the
project memory (:mod:`backend.corrections.memory`). :func:`handle_annotation_event` is what the
``/webhook`` door calls for ``ANNOTATION_*`` events: the webhook is a notification naming ids, so
the annotation, its task and the label config are first read back from Label Studio
(:class:`~backend.corrections.readback.ReadBack`; ``{"ignored": ...}`` with ids only when the
backend does not act on it), then the project's label config is parsed with the pipeline's parser
(the backend's nothing rule and limits) and the dispatcher's summary returned, or ``{"error": ...}``
for an annotation that cannot be used (logged as one warning line; Label Studio ignores webhook
answers).
"""
from __future__ import annotations

import logging
from typing import Callable

from backend.controls.labels import LabelConfigError
from backend.corrections.events import EventError, dispatch
from backend.corrections.readback import ReadBack, Refused

log = logging.getLogger("backend.corrections")


def install_listeners(settings, predictor, projects):
    """Agreement and project-memory listeners for this process; returns the memory service.
    ``projects``: the :class:`~backend.predict.projects.ProjectRegistry` (credentials, fetchers)."""
    from backend.corrections.agreement import install as install_agreement
    from backend.corrections.memory import install as install_memory

    install_agreement(settings, predictor, projects.credentials)
    return install_memory(settings, predictor, fetcher_for=projects.fetcher)


def controls_for(parse: Callable[[str], object]):
    """``project dict -> Controls`` with ``parse`` (``Pipeline.parse``: the backend's rule and limits)."""
    def controls(project: dict):
        config = project.get("label_config") if isinstance(project, dict) else None
        if not isinstance(config, str) or not config.strip():
            raise LabelConfigError("the webhook's project has no label_config")
        return parse(config)
    return controls


def handle_annotation_event(event: str, data: dict, parse: Callable[[str], object], read_back: ReadBack,
                            max_pixels: int | None = None) -> dict:
    """``read_back``: rebuilds the payload from Label Studio (see the module docstring);
    ``max_pixels``: the canvas bound of a decoded annotation (``CASS_MAX_IMAGE_MP``), checked
    before anything is decoded."""
    try:
        trusted = read_back.resolve(event, data)
    except Refused as exc:
        log.info("webhook %s ignored: %s", event, exc)
        return {"ignored": str(exc)}
    try:
        return dispatch(event, trusted, controls_for(parse), max_pixels=max_pixels)
    except EventError as exc:
        log.warning("webhook %s not used: %s", event, exc)
        return {"error": f"EventError: {exc}"}
