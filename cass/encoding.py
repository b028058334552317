"""The image side of CASS: DINO and CLIP backbones, spectral distillation, global prior (``encode`` /
``encode_many``), as a mixin of :class:`cass.engine.CASS`.

Its input (decode, windows, DINO input) is :class:`cass.image_input.ImageInput`, which this mixin
extends; it reads the engine's attributes (``clip``, ``dino``, ``preset``, ``patch_size``, ``width``,
``heads``, ``device``, ``precision``, ``global_clip``, ``timings``, ``fingerprint``, ``_gaussian``).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from cass import spectral
from cass.backbones import HEAD_DIM, interpolate_pos_grid
from cass.features import ImageFeatures
from cass.image_input import ImageInput, _Prepared
from cass.images import ImageError

log = logging.getLogger("cass")


class ImageEncoding(ImageInput):
    """Mixin: the label-free image-side pipeline of :class:`cass.engine.CASS`."""

    def _encode_many(self, images: list, resize: bool) -> list[ImageFeatures]:
        """:meth:`CASS.encode_many` (torch threads already set)."""
        with torch.inference_mode():
            t_start = time.perf_counter()
            preps = []
            for i, image in enumerate(images):
                try:
                    preps.append(self._prepare(image, resize))
                except ImageError as exc:
                    raise ImageError(f"image {i}: {exc}") from exc
            groups: dict[tuple, list[int]] = {}
            for i, prep in enumerate(preps):
                groups.setdefault(prep.batch_key, []).append(i)
            out: list[ImageFeatures | None] = [None] * len(preps)
            for members in groups.values():
                for i, feats in zip(members, self._encode_group([preps[i] for i in members])):
                    out[i] = feats
            self._count_encode(len(preps), t_start)
        return out  # type: ignore[return-value]

    def _count_encode(self, n_images: int, t_start: float) -> None:
        self.timings.encode_s += time.perf_counter() - t_start
        self.timings.encode_calls += n_images

    @torch.inference_mode()
    def _encode(self, image, resize: bool = True, head_pairing: np.ndarray | torch.Tensor | None = None,
                seed: int = 0, trace: dict | None = None) -> ImageFeatures:
        """:meth:`encode` with the parity hooks (see :func:`cass.testing.encode`)."""
        t_start = time.perf_counter()
        prep = self._prepare(image, resize, trace)
        feats = self._encode_group([prep], head_pairing=head_pairing, seed=seed)[0]
        self._count_encode(1, t_start)
        height, width = prep.x.shape[-2:]
        log.debug("encoded %dx%d image: %d windows in %.2fs", width, height, len(prep.windows),
                  time.perf_counter() - t_start)
        return feats

    def _encode_group(self, preps: list["_Prepared"], head_pairing=None, seed: int = 0) -> list[ImageFeatures]:
        """Backbones, spectral distillation and global prior of images with one window shape.

        All windows of all ``preps`` go through each backbone in one call; ``head_pairing``
        (``(n_windows, heads)``) is allowed only for a single image.
        """
        p = self.preset.image
        counts = [len(prep.windows) for prep in preps]
        bsz = sum(counts)
        crops = torch.cat([prep.crops for prep in preps]) if len(preps) > 1 else preps[0].crops
        dino_in = torch.cat([prep.dino_in for prep in preps]) if len(preps) > 1 else preps[0].dino_in
        ch, cw = crops.shape[-2:]
        gh, gw = ch // self.patch_size, cw // self.patch_size
        n = gh * gw

        # --- DINO keys per window ------------------------------------------------------------
        t0 = time.perf_counter()
        with self._autocast():
            dkeys = self.dino.last_keys(dino_in.to(self.device)).float()  # (B, H, g*g, d)
        g = int(round(dkeys.shape[2] ** 0.5))
        dkeys = spectral._fp16(dkeys)
        grid = dkeys.transpose(2, 3).reshape(bsz * self.heads, HEAD_DIM, g, g)
        grid = spectral._fp16(F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False))
        dkeys = grid.reshape(bsz, self.heads, HEAD_DIM, n).transpose(2, 3)
        self.timings.dino_s += time.perf_counter() - t0

        # --- CLIP trunk per window -----------------------------------------------------------
        t0 = time.perf_counter()
        visual = self.clip.visual
        last = visual.transformer.resblocks[-1]
        need_window_cls = p.global_prior == "window" or p.slide_crop <= 0
        with self._autocast():
            tokens = self._clip_trunk(crops.to(self.device))
            own_cls = need_window_cls and self.global_clip is None
            window_cls = self._cls_head(last(tokens)).float() if own_cls else None
            xin = last.ln_1(tokens)
            qkv = F.linear(xin, last.attn.in_proj_weight, last.attn.in_proj_bias).float()
        _, k, v = qkv[:, 1:].chunk(3, dim=-1)
        k = k.reshape(bsz, n, self.heads, HEAD_DIM).transpose(1, 2)
        v = v.reshape(bsz, n, self.heads, HEAD_DIM).transpose(1, 2)
        self.timings.clip_s += time.perf_counter() - t0

        # --- spectral distillation -----------------------------------------------------------
        t0 = time.perf_counter()
        scale = HEAD_DIM ** -0.5
        k = k.float()
        clip_gram = (k @ k.transpose(-1, -2)) * scale
        dino_d = spectral.match_key_range_fp16(dkeys, k)
        dino_gram = spectral.gram_fp16(dino_d, scale)
        kk = min(p.k_eigen, n)
        cost = spectral.wasserstein_cost(spectral.top_spectra(dino_gram, kk),
                                         spectral.top_spectra(clip_gram, kk))
        if head_pairing is not None:
            if len(preps) != 1:
                raise ValueError("head_pairing is for a single image")
            col = torch.as_tensor(np.asarray(head_pairing), dtype=torch.int64).reshape(bsz, self.heads)
        else:
            col = torch.stack([spectral.match_heads(c) for c in cost])
        rank = min(p.lowrank_rank, n)
        draws = []
        for count in counts:  # one generator per image, seeded like a lone encode
            gen = torch.Generator().manual_seed(seed)
            draws += [torch.randn(n, rank, dtype=torch.float64, generator=gen) for _ in range(count * self.heads)]
        fused = spectral.fuse_heads(clip_gram.cpu(), dino_gram.cpu(), cost.cpu(), col, draws, rank,
                                    p.eigenvalue_scaling, p.scale_factor).to(self.device)
        attn = torch.softmax(fused + self._gaussian_prior(gh, gw, p.gaussian_std), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bsz, n, self.width)
        out = last.attn.out_proj(out)
        patch = F.normalize(visual.ln_post(out) @ visual.proj, dim=-1).float().cpu()
        self.timings.spectral_s += time.perf_counter() - t0

        # --- global prior ----------------------------------------------------------------------
        t0 = time.perf_counter()
        global_vectors = self._global_vectors(preps, crops, window_cls, need_window_cls).float().cpu()
        self.timings.global_s += time.perf_counter() - t0

        results, start = [], 0
        cost, col = cost.float().cpu(), col.cpu()
        for prep, count in zip(preps, counts):
            sl = slice(start, start + count)
            start += count
            results.append(ImageFeatures(
                patch_features=patch[sl].contiguous(), global_vectors=global_vectors[sl].contiguous(),
                windows=torch.tensor(prep.windows, dtype=torch.int64), grid=(gh, gw),
                input_size=tuple(prep.x.shape[-2:]), original_size=prep.original_size,
                valid_size=prep.valid_size, head_pairing=col[sl].clone(), matching_cost=cost[sl].clone(),
                fingerprint=self.fingerprint))
        return results

    def _global_vectors(self, preps: list["_Prepared"], crops: torch.Tensor, window_cls: torch.Tensor | None,
                        need_window_cls: bool) -> torch.Tensor:
        """``(sum n_windows, D_g)`` L2-normalised global prior vector of every window of ``preps``."""
        counts = [len(prep.windows) for prep in preps]
        if self.global_clip is None and need_window_cls:
            return F.normalize(window_cls, dim=-1)
        if self.global_clip is not None and need_window_cls:  # scale_up CLS of every crop
            with self._autocast():
                g = self._global_cls(self.global_clip, crops.to(self.device)).float()
            return F.normalize(g, dim=-1)
        last = self.clip.visual.transformer.resblocks[-1]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, prep in enumerate(preps):
            by_size.setdefault(tuple(prep.x.shape[-2:]), []).append(i)
        per_image: list[torch.Tensor | None] = [None] * len(preps)
        for members in by_size.values():  # one whole-image pass per inference size
            x = torch.cat([preps[i].x for i in members]).to(self.device)
            with self._autocast():
                if self.global_clip is not None:
                    g = self._global_cls(self.global_clip, x).float()
                else:
                    g = self._cls_head(last(self._clip_trunk(x))).float()
            for j, i in enumerate(members):
                per_image[i] = F.normalize(g[j:j + 1], dim=-1)
        return torch.cat([v.expand(c, -1) for v, c in zip(per_image, counts)])

    def _autocast(self):
        """Half-precision backbones on CUDA when ``precision == "fp16"`` (spectral head stays fp32/64)."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16")

    def _clip_trunk(self, x: torch.Tensor, clip: torch.nn.Module | None = None) -> torch.Tensor:
        """``(B, 3, h, w)`` normalised -> ``(B, 1 + gh*gw, width)`` input of CLIP's last block."""
        visual = (clip or self.clip).visual
        ps = int(visual.conv1.weight.shape[-1])
        gh, gw = x.shape[2] // ps, x.shape[3] // ps
        t = visual.conv1(x[:, :, : gh * ps, : gw * ps]).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], dim=1)
        pos = visual.positional_embedding
        if t.shape[1] != pos.shape[0]:
            pos = torch.cat([pos[:1], interpolate_pos_grid(pos[1:], gh, gw)], dim=0)
        t = visual.ln_pre(t + pos)
        for blk in visual.transformer.resblocks[:-1]:
            t = blk(t)
        return t

    def _cls_head(self, tokens: torch.Tensor, clip: torch.nn.Module | None = None) -> torch.Tensor:
        visual = (clip or self.clip).visual
        return visual.ln_post(tokens[:, 0]) @ visual.proj

    def _global_cls(self, clip: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` -> ``(B, embed)`` unmodified CLIP CLS output (all blocks, ln_post, proj)."""
        return self._cls_head(clip.visual.transformer.resblocks[-1](self._clip_trunk(x, clip)), clip)

    def _gaussian_prior(self, gh: int, gw: int, std: float) -> torch.Tensor:
        key = (gh, gw, std)
        if key not in self._gaussian:
            self._gaussian[key] = spectral.gaussian_prior(gh, gw, std).to(self.device)
        return self._gaussian[key]
