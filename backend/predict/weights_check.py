"""Check the weight sources before loading the engine, and report every problem in one message.

The resolution and the message are :mod:`cass.weight_sources`, shared with ``python -m cass segment``:
the backend's sources are its settings (``CASS_CLIP_WEIGHTS``, ``CASS_DINO_WEIGHTS``,
``CASS_GLOBAL_CLIP_WEIGHTS``, read by :meth:`Settings.from_env` through
:func:`cass.weight_sources.chosen_sources`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cass.weight_sources import WeightsProblem, check_sources, missing_weights_message

from backend.config import Settings

__all__ = ["WeightsProblem", "check_weights", "missing_weights_message", "weights_error"]


def _values(settings: Settings) -> dict[str, str | None]:
    return {"CLIP": settings.clip_weights, "DINO": settings.dino_weights,
            "global CLIP": settings.global_clip_weights}


def check_weights(settings: Settings, download: Callable[..., None] | None = None) -> list[WeightsProblem]:
    """Resolve every weight source of ``settings``; one :class:`WeightsProblem` per source that fails
    (empty: all files are there). ``download(url, target)`` replaces the real download (tests)."""
    return check_sources(_values(settings), download)


def weights_error(settings: Settings, download: Callable[[str, Path], None] | None = None) -> str | None:
    """The :func:`missing_weights_message` for ``settings``, or None when every source resolves."""
    problems = check_weights(settings, download)
    return missing_weights_message(problems) if problems else None
