"""What a region must be to be kept: the minimum region area (``cass_min_area`` on a control,
``CASS_MIN_REGION_AREA`` for every project) and its one parser, shared by the label config and the
environment settings. No Label Studio types here, so :mod:`backend.controls.labels` can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: Built-in default of ``CASS_MIN_REGION_AREA`` (pixels of the original image).
DEFAULT_MIN_AREA_PX = 16.0


@dataclass(frozen=True)
class MinArea:
    """A minimum region area: ``value`` pixels of the original image, or ``value`` percent of its
    pixels when ``percent`` (``"0.05%"``)."""

    value: float = DEFAULT_MIN_AREA_PX
    percent: bool = False

    def pixels(self, height: int, width: int) -> float:
        """The minimum in pixels for an ``height`` x ``width`` image."""
        return self.value / 100.0 * height * width if self.percent else self.value

    @classmethod
    def parse(cls, text: str) -> "MinArea":
        """``"16"`` -> 16 px, ``"0.05%"`` -> 0.05 % of the image; ValueError saying what is wrong."""
        raw = str(text).strip()
        percent = raw.endswith("%")
        try:
            value = float(raw[:-1] if percent else raw)
        except ValueError:
            raise ValueError("is not a number of pixels or a percent of the image (e.g. \"16\" or "
                             "\"0.05%\")") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be >= 0 (pixels of the original image, or a percent such as \"0.05%\")")
        if percent and value > 100:
            raise ValueError("percent must be in [0, 100]")
        return cls(value, percent)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g} px"


@dataclass(frozen=True)
class RegionDefaults:
    """The backend's defaults for controls that do not set ``cass_min_area`` (``Settings.regions``)."""

    min_area: MinArea = MinArea()
