"""The CASS engine: ``encode(image) -> ImageFeatures`` (label-free), ``segment(features, vocabulary)``.

Like segment-anything's ``set_image`` / ``predict``: the expensive, label-independent backbone work
happens once per image in :meth:`CASS.encode`; :meth:`CASS.segment` only runs the cheap text-side
head, so vocabularies can change freely on cached features.

Differences from the official implementation that do not change its outputs (all verified by the
parity tests): the global CLS vector is computed once per image (the official code recomputes it for
every window), every backbone runs once per window with the windows batched (the official code runs
an extra, discarded DINO pass per window and all DINO layers' outputs), only the last DINO block's
keys are computed, and the text tower stops at the last end-of-text token.

Modules: the image side is :mod:`cass.image_input` (decode, windows, DINO input) and
:mod:`cass.encoding` (backbones, spectral step, global prior), the label-dependent side
:mod:`cass.segmenting` (text features, the head of :mod:`cass.head`, PAMR, memory): mixins of
:class:`CASS`. Torch threads per call: :mod:`cass.threads`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cass.backbones import HEAD_DIM, build_clip, load_dino
from cass.encoding import ImageEncoding
from cass.features import ImageFeatures, Segmentation
from cass.presets import Preset, TextParams, load_preset
from cass.segmenting import Segmenting
from cass.text import TextEncoder
from cass.threads import torch_threads
from cass.vocabulary import Vocabulary
from cass.weights import (CLIP_SOURCES, DINO_SOURCES, GLOBAL_CLIP_SOURCES, WeightsError, file_digest,
                          load_state_dict, resolve)

ENGINE_VERSION = "1"


@dataclass
class Timings:
    """Cumulative seconds spent per stage (for logs, metrics and the benchmark)."""

    dino_s: float = 0.0
    clip_s: float = 0.0
    spectral_s: float = 0.0
    global_s: float = 0.0
    text_s: float = 0.0
    head_s: float = 0.0
    pamr_s: float = 0.0  # PAMR refinement inside segment calls
    encode_s: float = 0.0  # whole encode calls (decode, resize and the stages above)
    segment_s: float = 0.0  # whole segment calls
    encode_calls: int = 0
    segment_calls: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class CASS(ImageEncoding, Segmenting):
    """CASS with loaded CLIP and DINO backbones and a preset.

    Build it with :func:`create_model`. Thread-safe for concurrent ``segment`` calls; ``encode`` calls
    may run concurrently too (the backbones are read-only), though on a CPU they compete for cores.
    """

    def __init__(self, clip: torch.nn.Module, dino: torch.nn.Module, preset: Preset, *,
                 clip_digest: str = "", dino_digest: str = "", device: str | torch.device = "cpu",
                 text_cache=None, precision: str = "fp32", global_clip: torch.nn.Module | None = None,
                 global_clip_digest: str = "", threads: int | None = None):
        self.device = torch.device(device)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' (half-precision backbones) needs a CUDA device")
        self.precision = precision
        self.clip = clip.to(self.device)
        self.dino = dino.to(self.device)
        self.preset = preset
        visual = clip.visual
        self.patch_size = int(visual.conv1.weight.shape[-1])
        self.width = int(visual.conv1.weight.shape[0])
        self.heads = self.width // HEAD_DIM
        if dino.cfg.heads != self.heads or dino.cfg.embed_dim != self.width:
            raise WeightsError(
                f"CLIP vision ({self.heads} heads x {HEAD_DIM}) and DINO ({dino.cfg.heads} heads x "
                f"{dino.cfg.embed_dim // dino.cfg.heads}) must have the same heads and head size")
        self.embed_dim = int(visual.proj.shape[1])
        self.clip_digest, self.dino_digest = clip_digest, dino_digest
        self.text = TextEncoder(clip, fingerprint=f"clip-{clip_digest}", device=self.device,
                                external=text_cache)
        # scale_up: a second CLIP computes only the global vector (and has its own text features)
        self.global_clip = global_clip.to(self.device) if global_clip is not None else None
        self.global_clip_digest = global_clip_digest if global_clip is not None else ""
        self.global_text = (TextEncoder(global_clip, fingerprint=f"clip-{global_clip_digest}", device=self.device,
                                        external=text_cache) if global_clip is not None else None)
        self.threads = threads
        self.timings = Timings()
        self._gaussian: dict[tuple[int, int, float], torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identifies everything the image features depend on (weights, architecture, image params)."""
        blob = {"engine": ENGINE_VERSION, "clip": self.clip_digest, "dino": self.dino_digest,
                "arch": [self.width, self.patch_size, self.dino.cfg.patch_size, self.embed_dim],
                "precision": self.precision, "image": asdict(self.preset.image)}
        if getattr(self.dino, "kind", "dino") == "dinov2":  # image-side parameters of the DINOv2 path
            blob["dinov2"] = {"input_size": self.dino.input_size, "registers": self.dino.cfg.registers}
        if self.global_clip is not None:  # scale_up: the global vector comes from the second CLIP
            gv = self.global_clip.visual
            blob["global_clip"] = [self.global_clip_digest, int(gv.conv1.weight.shape[-1]),
                                   int(gv.conv1.weight.shape[0]), int(gv.proj.shape[1])]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]

    @property
    def model_version(self) -> str:
        """Human-readable version: preset + weight digests (+ scale_up CLIP, + PAMR when on)."""
        return self.version_for(self.preset.text)

    def version_for(self, params: TextParams | None) -> str:
        """The model version of predictions made with text-side ``params`` (PAMR changes them)."""
        version = f"cass-{self.preset.name}-clip.{self.clip_digest[:8]}-dino.{self.dino_digest[:8]}"
        if self.global_clip is not None:
            version += f"-gclip.{self.global_clip_digest[:8]}"
        tp = params or self.preset.text
        if tp.pamr is not None:
            version += f"-{tp.pamr.tag}"
        return version

    def with_preset(self, preset: Preset | str) -> "CASS":
        """A view sharing the backbones and text cache with another preset (own ``timings``)."""
        clone = object.__new__(CASS)
        clone.__dict__.update(self.__dict__)
        clone.preset = load_preset(preset)
        clone.timings = Timings()
        return clone

    # ------------------------------------------------------------------------------------------
    def encode(self, image: Image.Image | np.ndarray | str | os.PathLike | bytes, *,
               resize: bool = True) -> ImageFeatures:
        """Everything that depends only on the image.

        Args:
            image: PIL image, ``(H, W, 3)`` uint8 RGB array, path or encoded bytes.
            resize: rescale to the preset's inference size (``False``: the image already is).
        (Parity hooks - injected head pairing, SVD seed, traces - are in :mod:`cass.testing`.)
        """
        with torch_threads(self.threads):
            return self._encode(image, resize)

    # (the image side is in cass.encoding.ImageEncoding, the label side in cass.segmenting.Segmenting)
    def encode_many(self, images: Sequence[Image.Image | np.ndarray | str | os.PathLike | bytes], *,
                    resize: bool = True) -> list[ImageFeatures]:
        """:meth:`encode` of several images, their windows batched into shared backbone calls.

        Images whose windows have the same shape (CLIP crop ``(3, ch, cw)`` and DINO input
        ``(3, S, S)``) are encoded together: one DINO and one CLIP call over all their windows
        (``(sum n_windows, 3, ch, cw)`` float32), one batched spectral step, and - for the
        whole-image global prior - one CLIP call per group of equal inference sizes. Images of
        other window shapes form their own groups. The results equal per-image :meth:`encode`
        within float tolerance (the randomized SVD draws are seeded per image, as in ``encode``).

        Args:
            images: PIL images, ``(H, W, 3)`` uint8 RGB arrays, paths or encoded bytes.
            resize: as in :meth:`encode`.
        Returns:
            one :class:`ImageFeatures` per image, in order. ``timings`` count one encode call per
            image; the stage times are those of the shared calls.
        Raises:
            ImageError: naming the index of the first image that cannot be decoded.
        """
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray, Image.Image)):
            raise TypeError("encode_many expects a sequence of images; use encode() for one image")
        with torch_threads(self.threads):
            return self._encode_many(list(images), resize)

    # ------------------------------------------------------------------------------------------
    def segment(self, features: ImageFeatures, vocabulary: Vocabulary, *,
                output_size: tuple[int, int] | None = None, return_probs: bool = False,
                params: TextParams | None = None, image=None, memory=None) -> Segmentation:
        """Label-dependent head: text embeddings, object-guided adjustment, stitching, softmax.

        Args:
            features: from :meth:`encode` (with the same weights and image parameters).
            vocabulary: classes and their prompts.
            output_size: ``(H, W)`` of the returned maps; default the image's original size.
            return_probs: also return ``(C, H, W)`` float32 probabilities (memory: 4*C*H*W bytes).
            params: :class:`~cass.presets.TextParams` overriding the preset's text side.
            image: the encoded image again (path, bytes, PIL or array); needed only when PAMR is on
                (its pixels are recomputed, not stored in the features; see docs/options.md).
            memory: a :class:`cass.memory.ProjectMemory` fused with the text logits (docs/memory.md);
                None or empty: plain CASS, bit for bit.
        """
        with torch_threads(self.threads):
            return self._segment(features, vocabulary, output_size, return_probs, params, image,
                                 memory=memory)

    def predict(self, image, vocabulary: Vocabulary, **kwargs) -> Segmentation:
        """``segment(encode(image), vocabulary)``."""
        return self.segment(self.encode(image), vocabulary, image=image, **kwargs)


# ---------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------
def create_model(clip_weights: str | os.PathLike = "openai", dino_weights: str | os.PathLike = "dino_vitb8",
                 preset: str | Preset = "default", *, device: str | torch.device | None = None,
                 threads: int | None = None, text_cache=None, precision: str = "fp32",
                 global_clip_weights: str | os.PathLike | None = None) -> CASS:
    """Load CLIP and DINO and return a :class:`CASS` engine.

    Args:
        clip_weights: ``"openai"`` or a path to an OpenAI-format CLIP state dict.
        dino_weights: ``"dino_vitb8"``, ``"dinov2_vitb14"`` (DINOv2 ViT-B/14 with 4 registers) or a
            path to an official DINO / DINOv2 state dict (the kind is inferred from its keys).
        preset: a preset name (:func:`cass.presets.list_presets`) or :class:`Preset`.
        device: ``"cpu"`` (default) or ``"cuda"``.
        threads: torch intra-op threads used inside ``encode``/``segment`` (restored after each
            call; default: leave torch's setting). Nothing global is changed here.
        precision: ``"fp32"`` (default, the parity-checked path) or ``"fp16"`` (CUDA only:
            half-precision backbone forwards; the spectral head stays in float32/float64).
        global_clip_weights: scale_up: ``"openai-vit-l-14"`` or a path to a second OpenAI-format CLIP
            that computes only the global similarity vector (default: none).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = load_preset(preset)
    clip_file = resolve(clip_weights, CLIP_SOURCES, "CLIP")
    dino_file = resolve(dino_weights, DINO_SOURCES, "DINO")
    with torch_threads(threads):
        clip = build_clip(load_state_dict(clip_file.path, "CLIP"))
        dino = load_dino(load_state_dict(dino_file.path, "DINO"))
        global_clip, global_digest = None, ""
        if global_clip_weights:
            global_file = resolve(global_clip_weights, GLOBAL_CLIP_SOURCES, "global (scale_up) CLIP")
            global_clip = build_clip(load_state_dict(global_file.path, "global CLIP"))
            global_digest = file_digest(global_file.path)
    for module in (clip, dino, global_clip):
        for param in (module.parameters() if module is not None else ()):
            param.requires_grad_(False)
    return CASS(clip, dino, preset, clip_digest=file_digest(clip_file.path),
                dino_digest=file_digest(dino_file.path), device=device, text_cache=text_cache,
                precision=precision, global_clip=global_clip, global_clip_digest=global_digest,
                threads=threads)
