"""Benchmark: ``python -m cass.bench [--runs N] [--threads T] [--profile]``.

Builds full-size CLIP ViT-B/16 and DINO ViT-B/8 (random weights unless ``--clip-weights`` /
``--dino-weights`` are given, so it runs offline), takes a synthetic 640x480 photo (resized by the
preset to 448x336: 6 sliding windows of 224, stride 112) and prints one JSON line of medians:

cold_s            encode + segment of an image not seen before (10 labels, text embeddings cached)
backbone_s        only the DINO and CLIP forward passes CASS needs for that image (plain forwards:
                  DINO on each window, CLIP on each window and on the whole image), timed alone
overhead          cold_s / backbone_s
swap_s            segment only, cached features, a different 10-label set (text cached)
swap_ratio        cold_s / swap_s
text_s_per_label  text embedding of one new label (80 templates), uncached
rle_s             the 10-label segmentation's masks at 1920x1080 to Label Studio brush RLE
                  (label-studio-sdk's encoder, as the backend does)
peak_rss_mb, feature_bytes, threads, device

With ``--official``: ``official_pattern_s`` (the backbone work the official code does per image: per
window, batch 1, two DINO passes, CLIP on the window and on the whole image; spectral work not
counted, so a lower bound), ``speedup`` = official_pattern_s / cold_s, ``official_text_s_per_label``
(80 prompts padded to 77 tokens) and ``text_speedup``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import statistics
import sys
import time

import numpy as np
import torch

LABELS_A = ["person", "dog", "cat", "car", "tree", "grass", "sky", "road", "building", "bicycle"]
LABELS_B = ["horse", "boat", "water", "chair", "table", "bottle", "plant", "sofa", "bird", "train"]


def random_clip_state() -> dict[str, torch.Tensor]:
    """OpenAI-format state dict of a randomly initialised CLIP ViT-B/16 (open_clip's initialisers)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "attn_mask"}


def random_dino_state() -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised DINO ViT-B/8 (official layout)."""
    from .backbones import DinoConfig, DinoViT

    torch.manual_seed(1)
    model = DinoViT(DinoConfig(embed_dim=768, depth=12, heads=12, patch_size=8, grid=28, mlp_hidden=3072))
    with torch.no_grad():
        model.cls_token.normal_(std=0.02)
        model.pos_embed.normal_(std=0.02)
    return model.state_dict()


def build_model(args):
    from .backbones import DinoViT, build_clip
    from .engine import CASS, create_model
    from .presets import load_preset

    if args.clip_weights and args.dino_weights:
        return create_model(args.clip_weights, args.dino_weights, args.preset, device=args.device,
                            threads=args.threads)
    clip = build_clip(random_clip_state())
    dino = DinoViT.from_state_dict(random_dino_state())
    return CASS(clip, dino, load_preset(args.preset), clip_digest="random", dino_digest="random",
                device=args.device or "cpu")


def synthetic_photo(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A deterministic 'photo': smooth gradients, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([120 + 80 * np.sin(xx / 90), 100 + 60 * np.cos(yy / 70), 90 + 0.2 * (xx + yy) % 80], -1)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(30, 120)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _median_time(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.inference_mode()
def backbone_pass(model, rgb_inference: np.ndarray) -> None:
    """The plain backbone forwards CASS needs for one image: DINO per window, CLIP per window, and
    CLIP on the whole image (standard forwards, windows batched)."""
    from .engine import sliding_windows

    p = model.preset.image
    x = torch.from_numpy(rgb_inference).permute(2, 0, 1).float().unsqueeze(0) / 255
    h, w = rgb_inference.shape[:2]
    wins = sliding_windows(h, w, p.slide_crop, p.slide_stride)
    crops = torch.cat([x[:, :, a:b, c:d] for a, b, c, d in wins]).to(model.device)
    dino = model.dino
    tokens = dino.patch_embed.proj(crops).flatten(2).transpose(1, 2)
    tokens = torch.cat([dino.cls_token.expand(len(wins), -1, -1), tokens], 1) + dino.pos_embed
    for blk in dino.blocks:
        tokens = blk(tokens)
    visual = model.clip.visual
    for batch in (crops, x.to(model.device)):
        t = model._clip_trunk(batch)
        visual.transformer.resblocks[-1](t)


@torch.inference_mode()
def official_pattern_pass(model, rgb_inference: np.ndarray) -> None:
    """The backbone work the official implementation does for one image (slide mode): per window,
    batch 1, DINO runs twice (its second pass, made while computing the global vector, is discarded)
    and CLIP runs on the window and again on the whole image. Spectral work is not included, so this
    is a lower bound of the official cost."""
    from .engine import sliding_windows

    p = model.preset.image
    x = torch.from_numpy(rgb_inference).permute(2, 0, 1).float().unsqueeze(0) / 255
    h, w = rgb_inference.shape[:2]
    dino = model.dino
    for a, b, c, d in sliding_windows(h, w, p.slide_crop, p.slide_stride):
        crop = x[:, :, a:b, c:d].to(model.device)
        for _ in range(2):
            tokens = dino.patch_embed.proj(crop).flatten(2).transpose(1, 2)
            tokens = torch.cat([dino.cls_token, tokens], 1) + dino.pos_embed
            for blk in dino.blocks:
                tokens = blk(tokens)
        for batch in (crop, x.to(model.device)):
            model.clip.visual.transformer.resblocks[-1](model._clip_trunk(batch))


@torch.inference_mode()
def official_text_pass(model, word: str) -> None:
    """The official text side for one label: 80 prompts padded to 77 tokens, full text tower."""
    from .text import prompt_texts, tokenize

    model.clip.encode_text(tokenize(prompt_texts(word)).to(model.device))


def run(args) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    from .images import resize_for_inference
    from .vocabulary import Vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    voc_a, voc_b = Vocabulary.from_names(LABELS_A), Vocabulary.from_names(LABELS_B)
    photos = [synthetic_photo(seed) for seed in range(args.runs + 1)]
    model.text_features(voc_a)
    model.text_features(voc_b)
    model.segment(model.encode(photos[-1]), voc_a)  # warm-up

    features = model.encode(photos[0])
    rgb_inf = resize_for_inference(photos[0], model.preset.image.short_side, model.preset.image.long_side)
    backbone_pass(model, rgb_inf)
    words = iter([f"new label number {i}" for i in range(1000)])
    # Interleaved rounds (cold, backbone, swap, text), so that load from other processes on a shared
    # machine hits all figures alike; medians over the rounds.
    times: dict[str, list[float]] = {"cold": [], "backbone": [], "swap": [], "text": []}
    for i in range(args.runs):
        for name, fn in (("cold", lambda: model.segment(model.encode(photos[i]), voc_a)),
                         ("backbone", lambda: backbone_pass(model, rgb_inf)),
                         ("swap", lambda: model.segment(features, voc_b)),
                         ("text", lambda: model.text.encode_uncached(next(words)))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    cold_s, backbone_s, swap_s, text_s = (statistics.median(times[k]) for k in ("cold", "backbone", "swap", "text"))

    seg_hd = model.segment(features, voc_a, output_size=(1080, 1920))
    present = [c for c in range(len(voc_a)) if seg_hd.pixel_counts[c] > 0]

    def rle_all():
        return [mask2rle(((seg_hd.labels == c) * 255).astype(np.uint8)) for c in present]

    rle_s, _ = _median_time(rle_all, max(args.runs, 3))
    result = {
        "cold_s": round(cold_s, 3), "backbone_s": round(backbone_s, 3),
        "overhead": round(cold_s / backbone_s, 3),
        "swap_s": round(swap_s, 4), "swap_ratio": round(cold_s / swap_s, 1),
        "text_s_per_label": round(text_s, 3), "rle_s": round(rle_s, 4), "rle_masks": len(present),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "feature_bytes": len(features.to_bytes()), "windows": features.num_windows,
        "threads": torch.get_num_threads(), "device": str(model.device),
        "weights": "random" if not args.clip_weights else "given", "runs": args.runs,
    }
    if args.official:
        official_s, _ = _median_time(lambda: official_pattern_pass(model, rgb_inf), 1)
        official_text_s, _ = _median_time(lambda: official_text_pass(model, "official label"), 1)
        result.update({"official_pattern_s": round(official_s, 2), "speedup": round(official_s / cold_s, 1),
                       "official_text_s_per_label": round(official_text_s, 3),
                       "text_speedup": round(official_text_s / text_s, 1)})
    if args.profile:
        profile(model, photos[0], voc_a, voc_b, features)
    return result


def profile(model, photo, voc_a, voc_b, features) -> None:
    """Where the time goes: engine stage timings and the top cProfile entries of one cold run."""
    from .engine import Timings

    model.timings = Timings()
    prof = cProfile.Profile()
    prof.enable()
    model.segment(model.encode(photo), voc_a)
    prof.disable()
    stages = {k: round(v, 3) for k, v in model.timings.as_dict().items()
              if k.endswith("_s") and k not in ("encode_s", "segment_s")}
    stages["total_s"] = round(model.timings.encode_s + model.timings.segment_s, 3)
    print("stage seconds (one cold encode + segment):", json.dumps(stages), file=sys.stderr)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    print(buf.getvalue(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median per figure)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--device", default=None)
    parser.add_argument("--clip-weights", default=None, help="real CLIP weights (default: random full-size)")
    parser.add_argument("--dino-weights", default=None, help="real DINO weights (default: random full-size)")
    parser.add_argument("--profile", action="store_true", help="print where the time goes (stderr)")
    parser.add_argument("--official", action="store_true",
                        help="also time the official implementation's backbone work pattern (one run, slow)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
