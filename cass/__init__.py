"""CASS: training-free open-vocabulary semantic segmentation (CVPR 2025), reimplemented.

    import cass
    model = cass.create_model("openai", "dino_vitb8", preset="default")
    features = model.encode("photo.jpg")                      # label-free, cacheable
    seg = model.segment(features, cass.Vocabulary.from_spec("cat,kitten;dog;grass"))
"""
from cass.engine import CASS, create_model, sliding_windows
from cass.features import FeaturesFormatError, ImageFeatures, Segmentation
from cass.images import ImageError, load_image
from cass.presets import ImageParams, Preset, PresetError, TextParams, list_presets, load_preset
from cass.vocabulary import Vocabulary, VocabularyClass, VocabularyError
from cass.weights import WeightsError

__all__ = [
    "CASS", "create_model", "sliding_windows", "ImageFeatures", "Segmentation", "FeaturesFormatError",
    "ImageError", "load_image", "Preset", "ImageParams", "TextParams", "PresetError", "list_presets",
    "load_preset", "Vocabulary", "VocabularyClass", "VocabularyError", "WeightsError",
]
