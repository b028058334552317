"""The ``BrushLabels`` adapter: today's brush RLE code (:mod:`backend.regions`), unchanged."""
from __future__ import annotations

from ..regions import brush_regions, mask_region

__all__ = ["brush_regions", "mask_region"]
