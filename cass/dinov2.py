"""DINOv2 ViT with register tokens (official ``DinoVisionTransformer`` state-dict layout).

The architecture is inferred from the shapes of an official checkpoint such as
``dinov2_vitb14_reg4_pretrain.pth`` (patch 14, 4 registers, 37 x 37 positional grid at 518 px) or
the tiny parity file; only what CASS needs is run (parity README section 7.2):

* input: the ``S x S`` uint8 DINO crop of the default path, resized to ``input_size x input_size``
  (``grid * patch``, 518 for the official weights) with PIL bilinear, ToTensor, ImageNet norm;
* tokens: patch conv (with bias), CLS, ``pos_embed`` added (bicubic "+0.1" interpolation only when
  the grid differs), *then* the register tokens inserted after CLS (no positional embedding);
* blocks: ``x + ls1 * Attn(LN1 x)``, ``x + ls2 * MLP(LN2 x)`` (exact GELU); of the last block only
  ``norm1`` and the key third of ``qkv`` run; CLS and registers are dropped from the keys.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cass.backbones import _DinoBlock, embed_tokens, last_block_keys
from cass.weights import WeightsError


@dataclass(frozen=True)
class Dinov2Config:
    embed_dim: int
    depth: int
    heads: int
    patch_size: int
    grid: int
    mlp_hidden: int
    registers: int

    @property
    def input_size(self) -> int:
        """Side of the square network input (518 for ViT-B/14 with its 37 x 37 grid)."""
        return self.grid * self.patch_size


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class _Block(_DinoBlock):
    """A DINO block with LayerScale on both residual branches (same attention, MLP and keys)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__(dim, heads, hidden)
        self.ls1 = _LayerScale(dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.attn.heads
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.ls1.gamma * self.attn.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.ls2.gamma * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class Dinov2ViT(nn.Module):
    """DINOv2 ``DinoVisionTransformer`` (``block_chunks=0`` names), no head; see the module doc."""

    kind = "dinov2"

    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, d))
        if cfg.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    @property
    def input_size(self) -> int:
        return self.cfg.input_size

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], head_dim: int = 64) -> "Dinov2ViT":
        required = ["cls_token", "pos_embed", "patch_embed.proj.weight",
                    "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.0.ls1.gamma"]
        missing = [k for k in required if k not in state]
        if missing:
            raise WeightsError(f"not an official DINOv2 state dict: missing {missing}")
        embed = state["cls_token"].shape[-1]
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
        n_pos = state["pos_embed"].shape[1] - 1
        grid = math.isqrt(n_pos)
        if grid * grid != n_pos or embed % head_dim:
            raise WeightsError(f"DINOv2 state dict has a non-square position grid ({n_pos}) or width "
                               f"{embed} not a multiple of {head_dim}")
        cfg = Dinov2Config(embed, depth, embed // head_dim, state["patch_embed.proj.weight"].shape[-1], grid,
                           state["blocks.0.mlp.fc1.weight"].shape[0],
                           state["register_tokens"].shape[1] if "register_tokens" in state else 0)
        model = cls(cfg)
        wanted = set(model.state_dict())
        extra = sorted(k for k in state if k not in wanted)
        if extra:
            raise WeightsError(f"DINOv2 state dict has unexpected keys {extra[:5]} (block_chunks layout or "
                               f"another model?)")
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"DINOv2 state dict does not fit the inferred architecture {cfg}: {exc}") from exc
        return model.eval()

    def prepare(self, crops: list[np.ndarray]) -> torch.Tensor:
        """``S x S x 3`` uint8 crops -> ``(B, 3, input_size, input_size)`` ImageNet-normalised float32
        (PIL bilinear resize, as torchvision ``Resize`` on a PIL image)."""
        side = self.input_size
        arrays = [np.asarray(Image.fromarray(c).resize((side, side), Image.BILINEAR)) for c in crops]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)

    def last_keys(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` ImageNet-normalised -> ``(B, heads, gh * gw, head_dim)`` last-block keys of
        the patch tokens (CLS and registers dropped), float32."""
        tokens = embed_tokens(self, x)
        if self.cfg.registers:
            regs = self.register_tokens.expand(x.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return last_block_keys(self.blocks, tokens, skip=1 + self.cfg.registers)
