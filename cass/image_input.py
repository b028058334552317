"""The image side's input: an image -> what the backbones read, as a mixin of :class:`cass.engine.CASS`.

Decode (:func:`cass.images.load_image`), resize to the preset's inference size, pad a strip thinner
than a window, CLIP-normalise, cut the official sliding windows (:func:`sliding_windows`) and build
each window's DINO input the official way (inverse ImageNet normalisation with its typo, uint8, PIL
resize; :meth:`ImageInput._dino_input`). :class:`cass.encoding.ImageEncoding` runs the backbones on
the result (:class:`_Prepared`). The mixin reads the engine's ``preset``, ``patch_size`` and ``dino``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cass.images import load_image, pad_to_min_side, resize_for_inference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official code "un-normalises" the CLIP-normalised crop with ImageNet constants, with a typo in
# the blue std (0.255): x * (0.229, 0.224, 0.255) + (0.485, 0.456, 0.406).
_INV_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_INV_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Official ``forward_slide`` layout: ``(y1, y2, x1, x2)`` row-major; ``crop == 0`` -> whole image."""
    if crop <= 0:
        return [(0, height, 0, width)]
    nh = max(height - crop + stride - 1, 0) // stride + 1
    nw = max(width - crop + stride - 1, 0) // stride + 1
    out = []
    for a in range(nh):
        for b in range(nw):
            y2 = min(a * stride + crop, height)
            x2 = min(b * stride + crop, width)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


@dataclass
class _Prepared:
    """One image ready for the backbones.

    ``x``: ``(1, 3, H, W)`` float32 CLIP-normalised inference image; ``crops``: ``(n_windows, 3, ch, cw)``
    float32 CLIP windows; ``dino_in``: ``(n_windows, 3, S, S)`` float32 ImageNet-normalised DINO input.
    """

    x: torch.Tensor
    original_size: tuple[int, int]
    valid_size: tuple[int, int] | None
    windows: list[tuple[int, int, int, int]]
    crops: torch.Tensor
    dino_in: torch.Tensor

    @property
    def batch_key(self) -> tuple:
        """Images with equal keys can share backbone calls."""
        return tuple(self.crops.shape[1:]) + tuple(self.dino_in.shape[1:])


class ImageInput:
    """Mixin: decode, normalise, window and DINO input of :class:`cass.engine.CASS`'s image side."""

    def normalized_input(self, image, resize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(1, 3, H, W)`` float32 CLIP-normalised inference-size image and the original ``(H, W)``."""
        x, original_size, _ = self._normalized_input(image, resize)
        return x, original_size

    def _normalized_input(self, image, resize: bool = True):
        """:meth:`normalized_input` plus ``valid_size``: the ``(H, W)`` of the image inside a padded
        input (a strip thinner than the preset's window is padded; masks are cropped back), else None."""
        rgb = load_image(image)
        original_size = (rgb.shape[0], rgb.shape[1])
        if resize:
            rgb = resize_for_inference(rgb, self.preset.image.short_side, self.preset.image.long_side)
        p = self.preset.image
        height, width = rgb.shape[:2]
        valid_size = None
        if min(height, width) < self.patch_size:  # thin strip: pad, masks are cropped back
            valid_size = (height, width)
            rgb = pad_to_min_side(rgb, max(self.patch_size, p.slide_crop), p.pixel_mean)
            height, width = rgb.shape[:2]
        img = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
        mean = torch.tensor(p.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(p.pixel_std, dtype=torch.float32).view(3, 1, 1)
        return ((img - mean) / std).unsqueeze(0), original_size, valid_size

    def _prepare(self, image, resize: bool, trace: dict | None = None) -> "_Prepared":
        """Decode, resize, normalise, cut the windows and build the DINO input of one image."""
        x, original_size, valid_size = self._normalized_input(image, resize)
        p = self.preset.image
        height, width = x.shape[-2:]
        windows = sliding_windows(height, width, p.slide_crop, p.slide_stride)
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in windows])
        return _Prepared(x, original_size, valid_size, windows, crops, self._dino_input(x, windows, trace))

    def _dino_input(self, x: torch.Tensor, windows, trace: dict | None) -> torch.Tensor:
        """ImageNet-normalised DINO input ``(B, 3, S, S)``, derived from the CLIP-normalised image.

        Official step 9-10: inverse-normalise with the (typo'd) ImageNet constants, x255, truncate to
        uint8, resize each window to ``S x S`` (``S = min(h, w)``, PIL bicubic), /255, normalise.
        """
        a = torch.tensor(_INV_MEAN, dtype=torch.float32).view(3, 1, 1)
        b = torch.tensor(_INV_STD, dtype=torch.float32).view(3, 1, 1)
        inv = (x[0] - a) / b
        u8 = (inv.permute(1, 2, 0) * 255).clamp_(0, 255).to(torch.uint8).numpy()
        outs = []
        for i, (y1, y2, x1, x2) in enumerate(windows):
            crop = u8[y1:y2, x1:x2]
            side = min(crop.shape[0], crop.shape[1])
            if crop.shape[0] != crop.shape[1]:
                crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))
            if i == 0 and trace is not None:
                trace["window0_dino_input"] = crop.copy()
            outs.append(np.ascontiguousarray(crop))
        if hasattr(self.dino, "prepare"):  # DINOv2: PIL bilinear to its fixed input size
            t = self.dino.prepare(outs)
        else:
            t = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).float().div(255)
        m = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return (t - m) / s
