"""Named hyper-parameter presets, stored as data (``cass/presets/*.json``).

A preset has two halves, matching the ``encode`` / ``segment`` split:

* :class:`ImageParams` change the image features (they are part of the feature-cache key);
* :class:`TextParams` only change the cheap, label-dependent head (changing them reuses cached
  features).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cass.pamr import PamrError, PamrParams

PRESET_DIR = Path(__file__).with_name("presets")


class PresetError(ValueError):
    """Unknown preset name or invalid preset values."""


@dataclass(frozen=True)
class ImageParams:
    """Image-side hyper-parameters.

    long_side / short_side: the image is rescaled (aspect kept) so that it fits in
        ``long_side x short_side`` (mmseg ``Resize(scale=(2048, 336), keep_ratio=True)``).
    slide_crop / slide_stride: sliding windows in inference pixels; ``slide_crop == 0`` = whole image.
    gaussian_std: std (in patches) of the Gaussian neighbourhood term added to the fused attention.
    eigenvalue_scaling: rescale the low-rank DINO graph's singular values (off for voc20/cityscapes).
    global_prior: ``"image"`` = CLS of the whole image; ``"window"`` = CLS of each window (cityscapes).
    k_eigen: eigenvalues per head compared by the spectral matching.
    lowrank_rank: rank of the DINO graph approximation (the official code always uses 10).
    scale_factor: weight of the DINO graph in the fusion.
    pixel_mean / pixel_std: CLIP normalisation in 0..255 units (RGB).
    """

    long_side: int = 2048
    short_side: int = 336
    slide_crop: int = 224
    slide_stride: int = 112
    gaussian_std: float = 5.0
    eigenvalue_scaling: bool = True
    global_prior: Literal["image", "window"] = "image"
    k_eigen: int = 20
    lowrank_rank: int = 10
    scale_factor: float = 10.0
    pixel_mean: tuple[float, float, float] = (122.771, 116.746, 104.094)
    pixel_std: tuple[float, float, float] = (68.501, 66.632, 70.323)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        if self.global_prior not in ("image", "window"):
            raise PresetError(f"global_prior must be 'image' or 'window', got {self.global_prior!r}")
        if self.slide_crop < 0 or (self.slide_crop and self.slide_stride <= 0):
            raise PresetError("slide_crop must be >= 0 and slide_stride > 0")
        if self.short_side <= 0 or self.long_side <= 0:
            raise PresetError("short_side and long_side must be positive")
        if self.gaussian_std <= 0:
            raise PresetError("gaussian_std must be positive")
        if self.k_eigen < 1 or self.lowrank_rank < 1:
            raise PresetError("k_eigen and lowrank_rank must be >= 1")


@dataclass(frozen=True)
class TextParams:
    """Text-side (label-dependent) hyper-parameters.

    global_semantics_weight: gamma, weight of the global image-text similarity in the logits.
    mean_vector_weight: alpha, how far each cluster's top query moves towards its top patches.
    h_threshold: distance threshold of the Ward clustering of the queries.
    prob_thd: pixels whose best class probability is below this get the background / no label.
    logit_scale: softmax temperature (multiplier).
    topk: patches averaged for the object-presence adjustment.
    pamr: PAMR refinement of the logits (:class:`cass.pamr.PamrParams`: steps, dilations), or
        ``None`` (off, the default). JSON: ``null``, ``true`` (official 10 steps, dilations 8, 16) or
        ``{"steps": 10, "dilations": [8, 16]}``. Label-independent but text-side: it runs on the
        logits, so switching it reuses cached features.
    memory_weight / memory_temperature: fusion of a project memory (:mod:`cass.memory`, used only
        when ``segment`` gets a non-empty one): each class's window logits get
        ``memory_weight * exp(-(1 - s) / memory_temperature)`` added, ``s`` = the patch's best cosine
        similarity to the class's prototypes (cosine units, before ``logit_scale``). Defaults are
        unmeasured on real weights (docs/memory.md).
    """

    global_semantics_weight: float = 0.25
    mean_vector_weight: float = 0.03
    h_threshold: float = 0.10
    prob_thd: float = 0.0
    logit_scale: float = 40.0
    topk: int = 2
    pamr: PamrParams | None = None
    memory_weight: float = 0.5
    memory_temperature: float = 0.1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "pamr", PamrParams.coerce(self.pamr))
        except (PamrError, TypeError) as exc:
            raise PresetError(f"invalid pamr: {exc}") from None
        if not 0.0 <= self.global_semantics_weight <= 1.0:
            raise PresetError("global_semantics_weight must be in [0, 1]")
        if not 0.0 <= self.mean_vector_weight <= 1.0:
            raise PresetError("mean_vector_weight must be in [0, 1]")
        if not 0.0 <= self.prob_thd <= 1.0:
            raise PresetError("prob_thd must be in [0, 1]")
        if self.topk < 1:
            raise PresetError("topk must be >= 1")
        if not self.memory_weight >= 0.0 or not self.memory_temperature > 0.0:
            raise PresetError("memory_weight must be >= 0 and memory_temperature > 0")


@dataclass(frozen=True)
class Preset:
    name: str
    image: ImageParams
    text: TextParams
    description: str = ""
    dataset: dict | None = None  # benchmark layout for ``python -m cass eval`` (see cass/evaluate.py)

    def replace(self, **overrides: Any) -> "Preset":
        """Copy with overrides, by field name of either half (``prob_thd=0.2``, ``slide_crop=0``)."""
        image_fields = {f.name for f in dataclasses.fields(ImageParams)}
        text_fields = {f.name for f in dataclasses.fields(TextParams)}
        unknown = set(overrides) - image_fields - text_fields
        if unknown:
            raise PresetError(f"unknown preset parameters: {sorted(unknown)}")
        image = dataclasses.replace(self.image, **{k: v for k, v in overrides.items() if k in image_fields})
        text = dataclasses.replace(self.text, **{k: v for k, v in overrides.items() if k in text_fields})
        return Preset(self.name, image, text, self.description, self.dataset)

    @classmethod
    def from_dict(cls, data: dict) -> "Preset":
        try:
            return cls(name=data["name"], image=ImageParams(**data.get("image", {})),
                       text=TextParams(**data.get("text", {})), description=data.get("description", ""),
                       dataset=data.get("dataset"))
        except (KeyError, TypeError) as exc:
            raise PresetError(f"invalid preset: {exc}") from exc


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path | Preset = "default") -> Preset:
    """A preset by name (``list_presets()``) or from a JSON file path."""
    if isinstance(name_or_path, Preset):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise PresetError(f"unknown preset {str(name_or_path)!r}; available: {', '.join(list_presets())} "
                          "(or a path to a preset .json file)")
    return Preset.from_dict(json.loads(path.read_text()))
