"""Cost of the official options: ``python -m cass.bench.options [--runs N] [--threads T] [--skip-backbones]``.

Prints one JSON line. Full-size backbones with **random** weights (accuracy is not measured here;
timings of random and pretrained weights are the same), one synthetic 640x480 photo, 13 queries:

* ``pamr_640x480_s`` / ``pamr_1080p_s``: extra seconds PAMR adds to one ``segment`` call with the
  output at 640x480 and at 1920x1080 (``segment`` with PAMR minus without, same features);
* ``pixels_recompute_s`` / ``pixels_bytes`` / ``features_bytes``: PAMR needs the image at inference
  size; recomputing it from the image bytes (decode + resize + normalise) vs storing it in the
  features (uint8 bytes it would add, beside the float32 features' size);
* ``encode_dino_vitb8_s`` / ``encode_dinov2_vitb14_s``: one ``encode`` with DINO ViT-B/8 vs
  DINOv2 ViT-B/14 reg4 (6 windows; DINOv2 sees every window at 518 x 518);
* ``encode_scale_up_s``: one ``encode`` with the ViT-L/14 global CLIP added (DINO ViT-B/8).

``--pamr-only``: ``cass.pamr.refine`` alone on random logits (no model, seconds instead of minutes).
Medians over ``--runs`` after one warm-up call. On a shared, loaded machine the figures vary.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np
import torch

from cass.backbones import DinoConfig, DinoViT
from cass.dinov2 import Dinov2Config, Dinov2ViT
from cass.engine import CASS
from cass.threads import torch_threads
from cass.presets import load_preset
from cass.vocabulary import Vocabulary

LABELS = "background;table;wall;floor;cup,mug;coffee;spoon;plate,saucer;person;bottle;food"


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Give all-zero parameters (tokens, positional grids, biases) small random values."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            p.requires_grad_(False)
    return module.eval()


def random_clip(name: str) -> torch.nn.Module:
    """Full-size OpenAI-architecture CLIP (``"ViT-B-16"``, ``"ViT-L-14"``) with random weights."""
    import open_clip

    return _randomise(open_clip.create_model(name, quick_gelu=True).float())


def random_dino(kind: str) -> torch.nn.Module:
    if kind == "dino_vitb8":
        return _randomise(DinoViT(DinoConfig(768, 12, 12, 8, 28, 3072)))
    return _randomise(Dinov2ViT(Dinov2Config(768, 12, 12, 14, 37, 3072, 4)))


def synthetic_photo(size: tuple[int, int] = (480, 640)) -> np.ndarray:
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], axis=-1).astype(np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = (200, 30, 30)
    return img


def _median(fn, runs: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def run(runs: int = 1, threads: int | None = None, backbones: bool = True) -> dict:
    """The figures described in the module docstring, as a dict."""
    from PIL import Image

    with torch_threads(threads):
        photo = synthetic_photo()
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        jpeg = buf.getvalue()
        vocab = Vocabulary.from_spec(LABELS)
        preset = load_preset("default")
        clip = random_clip("ViT-B-16")
        model = CASS(clip, random_dino("dino_vitb8"), preset, clip_digest="random", dino_digest="random")
        result: dict = {"bench": "options", "image": "640x480", "queries": len(vocab.queries),
                        "runs": runs, "threads": torch.get_num_threads(), "cpu": platform.processor() or
                        platform.machine(), "cpu_count": os.cpu_count(), "weights": "random, full size"}
        feats = model.encode(photo)
        result["windows"] = feats.num_windows
        pamr_model = model.with_preset(preset.replace(pamr=True))
        for tag, size in (("640x480", (480, 640)), ("1080p", (1080, 1920))):
            plain = _median(lambda: model.segment(feats, vocab, output_size=size), runs)
            with_pamr = _median(lambda: pamr_model.segment(feats, vocab, output_size=size, image=jpeg), runs)
            result[f"segment_{tag}_s"] = round(plain, 4)
            result[f"segment_pamr_{tag}_s"] = round(with_pamr, 4)
            result[f"pamr_{tag}_s"] = round(with_pamr - plain, 4)
        result["pixels_recompute_s"] = round(_median(lambda: model.normalized_input(jpeg), max(runs, 3)), 4)
        h, w = feats.input_size
        result["pixels_bytes"] = int(h * w * 3)
        result["features_bytes"] = int(feats.nbytes)
        if backbones:
            result["encode_dino_vitb8_s"] = round(_median(lambda: model.encode(photo), runs), 3)
            v2 = CASS(clip, random_dino("dinov2_vitb14"), preset, clip_digest="random", dino_digest="random")
            result["encode_dinov2_vitb14_s"] = round(_median(lambda: v2.encode(photo), runs), 3)
            del v2
            up = CASS(clip, model.dino, preset, clip_digest="random", dino_digest="random",
                      global_clip=random_clip("ViT-L-14"), global_clip_digest="random")
            result["encode_scale_up_s"] = round(_median(lambda: up.encode(photo), runs), 3)
            seg_plain = _median(lambda: model.segment(feats, vocab), runs)
            up_feats = up.encode(photo)
            result["segment_scale_up_extra_s"] = round(_median(lambda: up.segment(up_feats, vocab), runs)
                                                       - seg_plain, 4)
    return result


def run_pamr_only(runs: int = 1, threads: int | None = None, queries: int = 13) -> dict:
    """PAMR refinement alone (``cass.pamr.refine``, 10 steps, dilations 8, 16) on random logits of
    ``queries`` channels at 640x480 and 1920x1080, from a 448x336 inference-size image; no model."""
    from cass import pamr

    with torch_threads(threads):
        g = torch.Generator().manual_seed(0)
        image = torch.randn(3, 336, 448, generator=g)
        out: dict = {"bench": "options_pamr_only", "queries": queries, "runs": runs,
                     "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
        for tag, (h, w) in (("640x480", (480, 640)), ("1080p", (1080, 1920))):
            logits = torch.randn(queries, h, w, generator=g)
            out[f"pamr_refine_{tag}_s"] = round(_median(lambda: pamr.refine(logits, image, pamr.PamrParams()),
                                                        runs), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.bench.options", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="timed runs per figure (median; default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-backbones", action="store_true", help="only the PAMR figures")
    parser.add_argument("--pamr-only", action="store_true",
                        help="only cass.pamr.refine on random logits (no model; fast)")
    args = parser.parse_args(argv)
    if args.pamr_only:
        print(json.dumps(run_pamr_only(args.runs, args.threads)))
        return 0
    print(json.dumps(run(args.runs, args.threads, not args.skip_backbones)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
