"""Label Studio control tags CASS answers: brush and polygon outputs, smart-tool refinement."""
from backend.controls.base import adapter_for, regions_for
from backend.controls.config import Controls, PolygonTarget, SmartTool, parse_controls

__all__ = ["Controls", "PolygonTarget", "SmartTool", "adapter_for", "parse_controls", "regions_for"]
