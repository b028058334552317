"""PAMR: pixel-adaptive mask refinement (the official evaluation's ``--pamr on``).

A label-independent post-processing step on the complete logits (after stitching and the resize
to the output size, before ``logit_scale`` and the softmax; parity README section 7.1). It pulls
mask boundaries onto image edges by propagating each query's logits along an affinity computed
from the CLIP-normalised image:

* neighbours: for each dilation ``d``, the 8 pixels at offsets ``(+-d, +-d)``, ``(0, +-d)``,
  ``(+-d, 0)``, border-clamped (replicate padding); the centre is never a neighbour;
* ``sigma_c(p)``: unbiased std over the 3 x 3 dilated grids *including* the centre, all
  dilations together (18 samples for two dilations);
* ``a(p, n) = mean_c -|I_c(p) - I_c(n)| / (1e-8 + 0.1 sigma_c(p))``, ``w = softmax_n a``;
* ``steps`` times: ``M(p) <- sum_n w(p, n) M(n)`` per channel (no centre term).

Implemented as a gather over a replicate-padded tensor (not convolutions); the same numbers as the
official convolutions up to float32 summation order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: PamrParams is read by the light cass.presets
    import torch


class PamrError(ValueError):
    """Invalid PAMR parameters or inputs."""


@dataclass(frozen=True)
class PamrParams:
    """``steps`` propagation iterations over neighbours at ``dilations`` (official: 10, (8, 16))."""

    steps: int = 10
    dilations: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if int(self.steps) != self.steps or self.steps < 1:
            raise PamrError(f"pamr steps must be a positive integer, got {self.steps!r}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise PamrError(f"pamr dilations must be positive integers, got {self.dilations!r}")

    @property
    def tag(self) -> str:
        """Short form for model versions: ``pamr10d8-16``."""
        return f"pamr{self.steps}d{'-'.join(str(d) for d in self.dilations)}"

    @classmethod
    def coerce(cls, value) -> "PamrParams | None":
        """``None``/``False`` -> off; ``True`` -> official defaults; a dict or PamrParams as given."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"steps", "dilations"}
            if unknown:
                raise PamrError(f"unknown pamr fields {sorted(unknown)} (use steps, dilations)")
            return cls(**value)
        raise PamrError(f"pamr must be null, true/false or {{steps, dilations}}, got {value!r}")


def _offsets(dilations: tuple[int, ...], centre: bool) -> list[tuple[int, int]]:
    out = []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if centre or (dy, dx) != (0, 0):
                    out.append((dy, dx))
    return out


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    return padded[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def affinity(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """Neighbour weights.

    Args:
        image: ``(C, H, W)`` float32 (the CLIP-normalised image at the logits' size).
    Returns:
        ``(K, H, W)`` float32, ``K = 8 * len(dilations)``, positive, summing to 1 over ``K``.
    """
    import torch
    import torch.nn.functional as F

    c, h, w = image.shape
    pad = max(dilations)
    padded = F.pad(image.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]
    grid = _offsets(dilations, centre=True)
    mean = torch.zeros_like(image)
    for dy, dx in grid:
        mean += _shifted(padded, pad, dy, dx, h, w)
    mean /= len(grid)
    var = torch.zeros_like(image)
    for dy, dx in grid:
        var += (_shifted(padded, pad, dy, dx, h, w) - mean) ** 2
    denom = 1e-8 + 0.1 * (var / (len(grid) - 1)).sqrt()
    neighbours = _offsets(dilations, centre=False)
    logits = torch.empty((len(neighbours), h, w), dtype=image.dtype)
    for i, (dy, dx) in enumerate(neighbours):
        logits[i] = (-(image - _shifted(padded, pad, dy, dx, h, w)).abs() / denom).mean(dim=0)
    return torch.softmax(logits, dim=0)


def refine(logits: torch.Tensor, image: torch.Tensor, params: PamrParams) -> torch.Tensor:
    """Refined logits.

    Args:
        logits: ``(Q, H, W)`` float32 raw (pre-``logit_scale``) logits at the output size.
        image: ``(3, h, w)`` float32 CLIP-normalised inference-size image; resized bilinearly
            (align_corners=False) to ``(H, W)`` when the sizes differ.
    Returns:
        ``(Q, H, W)`` float32.
    """
    import torch
    import torch.nn.functional as F

    if logits.ndim != 3 or image.ndim != 3:
        raise PamrError(f"pamr needs (Q, H, W) logits and a (C, H, W) image, got "
                        f"{tuple(logits.shape)} and {tuple(image.shape)}")
    q, h, w = logits.shape
    image = image.float()
    if image.shape[-2:] != (h, w):
        image = F.interpolate(image.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False)[0]
    weights = affinity(image, params.dilations)
    offsets = _offsets(params.dilations, centre=False)
    pad = max(params.dilations)
    m = logits.float()
    for _ in range(params.steps):
        padded = F.pad(m.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]
        out = torch.zeros_like(m)
        for i, (dy, dx) in enumerate(offsets):
            out.addcmul_(_shifted(padded, pad, dy, dx, h, w), weights[i])
        m = out
    return m
