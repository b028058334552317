"""Label Studio control tags CASS answers: brush and polygon outputs, smart-tool refinement.

The names below are imported on first use (PEP 562): :mod:`backend.config` reads
:mod:`.limits` and :mod:`.labels` only, and must not pay for the brush encoder's
``label_studio_sdk.converter`` (nltk, ~3 s) on every ``python -m backend jobs``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cass.lazy import lazy_exports

if TYPE_CHECKING:
    from backend.controls.base import adapter_for, regions_for
    from backend.controls.config import Controls, PolygonTarget, SmartTool, parse_controls

_HOMES: dict[str, str] = {
    **dict.fromkeys(("adapter_for", "regions_for"), "backend.controls.base"),
    **dict.fromkeys(("Controls", "PolygonTarget", "SmartTool", "parse_controls"), "backend.controls.config"),
}

__all__ = ["Controls", "PolygonTarget", "SmartTool", "adapter_for", "parse_controls", "regions_for"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES, __all__)
