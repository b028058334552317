"""The ``BrushLabels`` adapter: today's brush RLE code (:mod:`backend.regions`), unchanged."""
from __future__ import annotations

from ..regions import brush_regions, mask_to_rle

__all__ = ["brush_regions", "mask_region"]


def mask_region(mask, name: str, score: float, target) -> dict:
    """One ``brushlabels`` result for the ``(H, W)`` bool ``mask`` (interactive answers)."""
    from uuid import uuid4

    height, width = mask.shape
    return {
        "id": uuid4().hex[:10],
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(score), 4),
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [name]},
    }
