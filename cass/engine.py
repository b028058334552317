"""The CASS engine: ``encode(image) -> ImageFeatures`` (label-free), ``segment(features, vocabulary)``.

Like segment-anything's ``set_image`` / ``predict``: the expensive, label-independent backbone work
happens once per image in :meth:`CASS.encode`; :meth:`CASS.segment` only runs the cheap text-side
head, so vocabularies can change freely on cached features.

Differences from the official implementation that do not change its outputs (all verified by the
parity tests): the global CLS vector is computed once per image (the official code recomputes it for
every window), every backbone runs once per window with the windows batched (the official code runs
an extra, discarded DINO pass per window and all DINO layers' outputs), only the last DINO block's
keys are computed, and the text tower stops at the last end-of-text token.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import pamr, spectral
from .backbones import HEAD_DIM, build_clip, interpolate_pos_grid, load_dino
from .features import ImageFeatures, Segmentation
from .head import (DenseLogits, Stitcher, _resize_matrix, adjust_text, cluster_queries,  # noqa: F401
                   postprocess, window_logits)  # re-exported: the head used to live here
from .images import ImageError, load_image, pad_to_min_side, resize_for_inference
from .presets import Preset, TextParams, load_preset
from .text import TextEncoder
from .vocabulary import Vocabulary, VocabularyError
from .weights import (CLIP_SOURCES, DINO_SOURCES, GLOBAL_CLIP_SOURCES, WeightsError, file_digest,
                      load_state_dict, resolve)

log = logging.getLogger("cass")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official code "un-normalises" the CLIP-normalised crop with ImageNet constants, with a typo in
# the blue std (0.255): x * (0.229, 0.224, 0.255) + (0.485, 0.456, 0.406).
_INV_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_INV_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)
ENGINE_VERSION = "1"

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch intra-op threads inside the block and restore the previous count after.

    ``torch.set_num_threads`` is process-wide, so nested/concurrent blocks share one setting: the
    first one in saves the original count, the last one out restores it. ``None``: no change.
    """
    if not n:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
        _THREADS_STATE["depth"] += 1
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


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


class CASS:
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
        images = list(images)
        with torch_threads(self.threads), torch.inference_mode():
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

    def _prepare(self, image, resize: bool, trace: dict | None = None) -> "_Prepared":
        """Decode, resize, normalise, cut the windows and build the DINO input of one image."""
        x, original_size, valid_size = self._normalized_input(image, resize)
        p = self.preset.image
        height, width = x.shape[-2:]
        windows = sliding_windows(height, width, p.slide_crop, p.slide_stride)
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in windows])
        return _Prepared(x, original_size, valid_size, windows, crops, self._dino_input(x, windows, trace))

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

    # ------------------------------------------------------------------------------------------
    def text_features(self, vocabulary: Vocabulary) -> torch.Tensor:
        """``(Q, embed_dim)`` float32 normalised query embeddings (cached per prompt)."""
        t0 = time.perf_counter()
        out = self.text(vocabulary.queries)
        self.timings.text_s += time.perf_counter() - t0
        return out

    def segment(self, features: ImageFeatures, vocabulary: Vocabulary, *,
                output_size: tuple[int, int] | None = None, return_probs: bool = False,
                params: TextParams | None = None, image=None) -> Segmentation:
        """Label-dependent head: text embeddings, object-guided adjustment, stitching, softmax.

        Args:
            features: from :meth:`encode` (with the same weights and image parameters).
            vocabulary: classes and their prompts.
            output_size: ``(H, W)`` of the returned maps; default the image's original size.
            return_probs: also return ``(C, H, W)`` float32 probabilities (memory: 4*C*H*W bytes).
            params: :class:`~cass.presets.TextParams` overriding the preset's text side.
            image: the encoded image again (path, bytes, PIL or array); needed only when PAMR is on
                (its pixels are recomputed, not stored in the features; see docs/options.md).
        """
        with torch_threads(self.threads):
            return self._segment(features, vocabulary, output_size, return_probs, params, image)

    @torch.inference_mode()
    def _segment(self, features: ImageFeatures, vocabulary: Vocabulary, output_size=None,
                 return_probs: bool = False, params: TextParams | None = None, image=None,
                 trace: dict | None = None) -> Segmentation:
        """:meth:`segment` with the parity trace (see :func:`cass.testing.segment`)."""
        if not isinstance(vocabulary, Vocabulary):
            raise VocabularyError(f"expected a Vocabulary, got {type(vocabulary).__name__}")
        tp = params or self.preset.text
        if tp.pamr is not None and image is None:
            raise ValueError("PAMR is on but segment() got no image: pass the encoded image again "
                             "(image=...), PAMR refines the masks along its edges")
        t0 = time.perf_counter()
        text = self.text_features(vocabulary)
        global_text = None
        if self.global_text is not None:
            if features.global_vectors.shape[1] != self.global_text.clip.text_projection.shape[1]:
                raise ValueError("features were encoded without the scale_up CLIP (global vector width "
                                 f"{features.global_vectors.shape[1]})")
            global_text = self.global_text(vocabulary.queries)
        t1 = time.perf_counter()
        clusters = cluster_queries(text, tp.h_threshold)
        grids = window_logits(features, text, clusters, tp.global_semantics_weight, tp.mean_vector_weight,
                              tp.topk, trace, global_text=global_text)
        stitcher = Stitcher(features.windows.tolist(), features.grid, features.input_size,
                            tuple(output_size or features.original_size), features.valid_size)
        if tp.pamr is not None:
            stitcher = self._pamr_logits(grids, stitcher, features, image, tp.pamr, trace)
        seg = postprocess(grids, stitcher, vocabulary, tp.logit_scale, tp.prob_thd, return_probs)
        if trace is not None:
            trace["cluster_info"] = clusters
            trace["text_features"] = text
            if global_text is not None:
                trace["global_text_features"] = global_text
        self.timings.head_s += time.perf_counter() - t1
        self.timings.segment_s += time.perf_counter() - t0
        self.timings.segment_calls += 1
        log.debug("segmented %d classes in %.3fs (text %.3fs)", len(vocabulary), time.perf_counter() - t0,
                  t1 - t0)
        return seg

    def _pamr_logits(self, grids, stitcher, features, image, params, trace) -> "DenseLogits":
        """Full-size stitched logits refined by PAMR (image pixels recomputed from ``image``)."""
        resize = tuple(features.input_size) != tuple(features.original_size)
        x, original = self.normalized_input(image, resize=resize)
        if tuple(original) != tuple(features.original_size) or tuple(x.shape[-2:]) != tuple(features.input_size):
            raise ImageError(f"the image given for PAMR is {original[1]}x{original[0]}, but the features "
                             f"are of a {features.original_size[1]}x{features.original_size[0]} image")
        out_h, out_w = stitcher.output_size
        t0 = time.perf_counter()
        logits = stitcher.tile(grids, 0, out_h, 0, out_w)
        if trace is not None:
            trace["pre_pamr_logits"] = logits.clone()
        refined = pamr.refine(logits, x[0], params)
        self.timings.pamr_s += time.perf_counter() - t0
        return DenseLogits(refined)

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
