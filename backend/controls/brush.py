"""The ``BrushLabels`` adapter: today's brush RLE code (:mod:`backend.controls.brush_rle`), unchanged."""
from __future__ import annotations

from backend.controls.brush_rle import brush_regions, mask_region

__all__ = ["brush_regions", "mask_region"]
