"""CASS: training-free open-vocabulary semantic segmentation (CVPR 2025), reimplemented.

    import cass
    model = cass.create_model("openai", "dino_vitb8", preset="default")
    features = model.encode("photo.jpg")                      # label-free, cacheable
    seg = model.segment(features, cass.Vocabulary.from_spec("cat,kitten;dog;grass"))

``import cass`` is cheap: the names below are imported on first use (PEP 562), so light modules
(``cass.imageformat``, ``cass.vocabulary``, ``cass.lru``, ...) and their users never pay for torch
and open_clip unless they touch the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cass.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time see __getattr__
    from cass.engine import CASS, create_model
    from cass.features import FeaturesFormatError, ImageFeatures, Segmentation
    from cass.image_input import sliding_windows
    from cass.images import ImageError, load_image
    from cass.presets import ImageParams, Preset, PresetError, TextParams, list_presets, load_preset
    from cass.vocabulary import Vocabulary, VocabularyClass, VocabularyError
    from cass.weights import WeightsError

_HOMES: dict[str, str] = {  # public name -> the module that defines it
    **dict.fromkeys(("CASS", "create_model"), "cass.engine"),
    "sliding_windows": "cass.image_input",
    **dict.fromkeys(("ImageFeatures", "Segmentation", "FeaturesFormatError"), "cass.features"),
    **dict.fromkeys(("ImageError", "load_image"), "cass.images"),
    **dict.fromkeys(("Preset", "ImageParams", "TextParams", "PresetError", "list_presets", "load_preset"),
                    "cass.presets"),
    **dict.fromkeys(("Vocabulary", "VocabularyClass", "VocabularyError"), "cass.vocabulary"),
    "WeightsError": "cass.weights",
}

__all__ = [
    "CASS", "create_model", "sliding_windows", "ImageFeatures", "Segmentation", "FeaturesFormatError",
    "ImageError", "load_image", "Preset", "ImageParams", "TextParams", "PresetError", "list_presets",
    "load_preset", "Vocabulary", "VocabularyClass", "VocabularyError", "WeightsError",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES, __all__)
