"""CLIP (through open_clip) and DINO ViT backbones, built from state dicts of any size.

The architecture is inferred from the state dict's shapes (width, layers, patch size, grid;
heads = width / 64), so the tiny parity weights and the real ViT-B/16 / ViT-B/8 load through the same
code. Only the pieces CASS needs are run; see :mod:`cass.engine`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cass.weights import WeightsError

HEAD_DIM = 64


def interpolate_pos_grid(pos: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Resize a square positional-embedding grid the way CLIP/DINO (and CASS) do.

    Args:
        pos: ``(N, D)`` patch positional embeddings of a square ``sqrt(N) x sqrt(N)`` grid.
    Returns:
        ``(out_h * out_w, D)``. Bicubic (A=-0.75), align_corners=False, with the "+0.1" scale factor
        used *as the coordinate scale* (``recompute_scale_factor=False``), exactly as the official
        code; returned unchanged when the grid already matches.
    """
    n = pos.shape[0]
    side = int(math.isqrt(n))
    if (out_h, out_w) == (side, side):
        return pos
    grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((out_h + 0.1) / side, (out_w + 0.1) / side), mode="bicubic",
                         align_corners=False, recompute_scale_factor=False)
    if grid.shape[-2:] != (out_h, out_w):  # cannot happen for sane sizes; guard the "+0.1" rule
        raise RuntimeError(f"positional grid resize gave {tuple(grid.shape[-2:])}, wanted {(out_h, out_w)}")
    return grid.permute(0, 2, 3, 1).reshape(out_h * out_w, -1)


# ---------------------------------------------------------------------------------------------
# DINO
# ---------------------------------------------------------------------------------------------
class _DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)


class _DinoMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _DinoAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _DinoMlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.attn.heads
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.attn.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` block input -> ``(B, heads, N, C / heads)`` keys (only the k third of qkv)."""
        b, n, c = x.shape
        w = self.attn.qkv.weight[c:2 * c]
        bias = self.attn.qkv.bias[c:2 * c]
        return F.linear(self.norm1(x), w, bias).reshape(b, n, self.attn.heads, c // self.attn.heads).transpose(1, 2)


@dataclass(frozen=True)
class DinoConfig:
    embed_dim: int
    depth: int
    heads: int
    patch_size: int
    grid: int
    mlp_hidden: int


class DinoViT(nn.Module):
    """The official DINO ``VisionTransformer`` (parameter names match its state dict), no head.

    CASS uses only the keys of the last block, so :meth:`last_keys` runs ``depth - 1`` full blocks
    and then only ``norm1`` + the key projection of the last one.
    """

    kind = "dino"

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size)
        self.blocks = nn.ModuleList(_DinoBlock(d, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "DinoViT":
        required = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                    "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"]
        missing = [k for k in required if k not in state]
        if missing:
            raise WeightsError(f"not an official DINO ViT state dict: missing {missing} "
                               f"(found keys like {sorted(state)[:4]})")
        embed = state["cls_token"].shape[-1]
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
        patch = state["patch_embed.proj.weight"].shape[-1]
        n_pos = state["pos_embed"].shape[1] - 1
        grid = math.isqrt(n_pos)
        if grid * grid != n_pos or embed % HEAD_DIM:
            raise WeightsError(f"DINO state dict has a non-square position grid ({n_pos}) or width {embed} "
                               f"not a multiple of {HEAD_DIM}")
        cfg = DinoConfig(embed, depth, embed // HEAD_DIM, patch, grid, state["blocks.0.mlp.fc1.weight"].shape[0])
        model = cls(cfg)
        wanted = {k for k in model.state_dict()}
        extra = sorted(k for k in state if k not in wanted and not k.startswith("head"))
        try:
            model.load_state_dict({k: v.float() for k, v in state.items() if k in wanted}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"DINO state dict does not fit the inferred architecture {cfg}: {exc}") from exc
        if extra:
            raise WeightsError(f"DINO state dict has unexpected keys {extra[:5]}: wrong file?")
        return model.eval()

    def last_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of the last block for the patch tokens.

        Args:
            x: ``(B, 3, H, W)`` float32, ImageNet-normalised; cropped to a multiple of the patch size.
        Returns:
            ``(B, heads, gh * gw, head_dim)`` float32 (row-major patch order, CLS dropped).
        """
        return last_block_keys(self.blocks, embed_tokens(self, x), skip=1)


def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tokens a DINO / DINOv2 ViT's blocks read: ``(B, 3, H, W)`` (cropped to a multiple of the
    patch size) -> ``(B, 1 + gh * gw, D)``, CLS then the patches (row-major), with the positional
    embedding added (interpolated only when the grid differs from the trained one)."""
    p = vit.cfg.patch_size
    x = x[:, :, : x.shape[2] - x.shape[2] % p, : x.shape[3] - x.shape[3] % p]
    gh, gw = x.shape[2] // p, x.shape[3] // p
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    pos = vit.pos_embed[0]
    if not (gh * gw == pos.shape[0] - 1 and gh == gw):
        pos = torch.cat([pos[:1], interpolate_pos_grid(pos[1:], gh, gw)], dim=0)
    return tokens + pos


def last_block_keys(blocks: nn.ModuleList, tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """Every block but the last on ``tokens``, then the last block's keys ``(B, heads, n, head_dim)``
    without the first ``skip`` tokens (CLS, registers)."""
    for blk in blocks[:-1]:
        tokens = blk(tokens)
    return blocks[-1].keys(tokens)[:, :, skip:]


def load_dino(state: dict[str, torch.Tensor]) -> nn.Module:
    """A DINO (:class:`DinoViT`) or DINOv2 (:class:`cass.dinov2.Dinov2ViT`) model, by the keys present
    (DINOv2 has LayerScale ``ls1.gamma`` and usually ``register_tokens``)."""
    if "register_tokens" in state or "blocks.0.ls1.gamma" in state:
        from cass.dinov2 import Dinov2ViT

        return Dinov2ViT.from_state_dict(state, HEAD_DIM)
    return DinoViT.from_state_dict(state)


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------
def build_clip(state: dict[str, torch.Tensor]) -> nn.Module:
    """An open_clip ``CLIP`` from an OpenAI-format state dict (any width/depth), float32, eval mode.

    Weights are rounded to float16 and back like the OpenAI/official loaders do (a no-op for the
    published fp16 checkpoints).
    """
    import open_clip

    required = ["visual.proj", "visual.conv1.weight", "visual.positional_embedding", "visual.class_embedding",
                "text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        hint = " (this looks like a DINO checkpoint)" if "cls_token" in state else ""
        raise WeightsError(f"not an OpenAI-format CLIP ViT state dict{hint}: missing {missing}")
    width = state["visual.conv1.weight"].shape[0]
    if width % HEAD_DIM:
        raise WeightsError(f"CLIP vision width {width} is not a multiple of {HEAD_DIM}")
    state = {k: v.clone() for k, v in state.items()}
    try:
        model = open_clip.model.build_model_from_openai_state_dict(state)
    except Exception as exc:
        raise WeightsError(f"CLIP state dict does not fit an OpenAI CLIP ViT: {exc}") from exc
    return model.float().eval()
