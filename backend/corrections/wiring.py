"""The backend side of the dispatcher: label configs from the webhook's project, default listeners.

:func:`handle_annotation_event` is what ``CASSBackend.process_event`` calls for ``ANNOTATION_*``
webhooks. It installs the process's default listeners once (:func:`install_defaults`: agreement per
label, ``backend.corrections.agreement``), parses the project's label config with the backend's
settings (nothing rule, limits) and returns the dispatcher's summary, or ``{"error": ...}`` for a
payload that cannot be used (logged as one warning line; Label Studio ignores webhook answers).
"""
from __future__ import annotations

import logging
import threading

from backend.controls.config import parse_controls
from backend.controls.labels import LabelConfigError
from backend.corrections.events import EventError, dispatch

log = logging.getLogger("backend.corrections")

_installed: set[int] = set()
_install_lock = threading.Lock()
#: Extra installers (``fn(settings, predictor)``), e.g. the project memory's, run once per process.
INSTALLERS: list = []


def install_defaults(settings, predictor) -> None:
    """Register the default listeners for this predictor (once per predictor object)."""
    with _install_lock:
        if id(predictor) in _installed:
            return
        _installed.add(id(predictor))
    from backend.corrections.agreement import install as install_agreement

    install_agreement(settings, predictor)
    for installer in list(INSTALLERS):
        installer(settings, predictor)


def controls_for(settings):
    """``project dict -> Controls`` with the backend's nothing rule and limits."""
    def parse(project: dict):
        config = project.get("label_config") if isinstance(project, dict) else None
        if not isinstance(config, str) or not config.strip():
            raise LabelConfigError("the webhook's project has no label_config")
        return parse_controls(config, settings.nothing, settings.limits)
    return parse


def handle_annotation_event(event: str, data: dict, model) -> dict:
    install_defaults(model.settings, model.predictor)
    try:
        return dispatch(event, data, controls_for(model.settings),
                        max_pixels=getattr(model.settings, "max_image_pixels", None))
    except EventError as exc:
        log.warning("webhook %s not used: %s", event, exc)
        return {"error": f"EventError: {exc}"}
