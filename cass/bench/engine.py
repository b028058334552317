"""Benchmark: ``python -m cass.bench [--runs N] [--threads T] [--profile]``.

Builds full-size CLIP ViT-B/16 and DINO ViT-B/8 (random weights unless ``--clip-weights`` /
``--dino-weights`` are given, so it runs offline), takes a synthetic 640x480 photo (resized by the
preset to 448x336: 6 sliding windows of 224, stride 112) and prints one JSON line of medians:

cold_s            encode + segment of an image not seen before (10 labels, text embeddings cached)
backbone_s        exactly the backbone work encode does for that image (DINO up to the last block's
                  keys and CLIP's trunk + last-block ln_1/qkv on the 6 batched windows, CLIP's trunk
                  and last block on the whole image), timed alone: see ``backbone_pass``
overhead          cold_s / backbone_s (preprocessing, spectral head, text-side head)
swap_cached_text_s   segment only, in-memory features, another 10-label set whose text is cached
swap_new_labels_s    a user's first swap: 10 labels never seen (text encoded), features read back
                  from Redis (REDIS_URL, or a redis-server the bench starts; ``swap_store`` says
                  which) and decoded, segment at 640x480, the masks to RLE
*_ratio           cold_s / that figure
text_s_per_label  text embedding of one new label (80 templates), uncached
rle_s             the 10-label segmentation's masks at 1920x1080 to Label Studio brush RLE
                  (label-studio-sdk's encoder, as the backend does)
gflop, gflop_by_stage   analytic FLOPs of the stages encode runs (cass/bench/floor.py; norms, SVDs,
                  softmax not counted)
matmul_gflops     best measured fp32 matmul rate (1024x768 @ 768x3072) at the same threads
flops_bound_s     gflop / matmul_gflops: the floor; bound_ratio = cold_s / flops_bound_s
feature_bytes     the cache entry (format v2, float16 compressed); feature_bytes_raw float32;
                  feature_decode_s reading one back from the store and decoding it
peak_rss_mb, threads, device, cpu (model name), load_avg_before/after (1/5/15 min: shared machine)

With ``--official`` (ESTIMATES, not the official code): ``official_pattern_estimate_s`` times this
project's backbones in the official code's work pattern (per window, batch 1, two DINO passes, CLIP
on the window and on the whole image; spectral work not counted, so a lower bound),
``speedup_estimate`` = that / cold_s, ``official_text_estimate_s_per_label`` (80 prompts padded to
77 tokens, full text tower) and ``text_speedup_estimate``.
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
    from cass.backbones import DinoConfig, DinoViT

    torch.manual_seed(1)
    model = DinoViT(DinoConfig(embed_dim=768, depth=12, heads=12, patch_size=8, grid=28, mlp_hidden=3072))
    with torch.no_grad():
        model.cls_token.normal_(std=0.02)
        model.pos_embed.normal_(std=0.02)
    return model.state_dict()


def build_model(args):
    from cass.backbones import DinoViT, build_clip
    from cass.engine import CASS, create_model
    from cass.presets import load_preset

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
    """Exactly the backbone work ``encode`` does for one image, same stages and shapes: DINO on the
    batched windows up to the last block's keys, CLIP's trunk on the windows plus ``ln_1`` and the qkv
    projection of its last block, CLIP's trunk and full last block on the whole image (the default
    preset's global prior). Building the inputs (normalise, crop, DINO's uint8 round trip; a few ms)
    is included; the spectral head and everything after it are not."""
    import torch.nn.functional as F

    from cass.image_input import sliding_windows

    p = model.preset.image
    img = torch.from_numpy(np.ascontiguousarray(rgb_inference)).permute(2, 0, 1).float()
    x = ((img - torch.tensor(p.pixel_mean).view(3, 1, 1)) / torch.tensor(p.pixel_std).view(3, 1, 1)).unsqueeze(0)
    h, w = rgb_inference.shape[:2]
    wins = sliding_windows(h, w, p.slide_crop, p.slide_stride)
    crops = torch.cat([x[:, :, a:b, c:d] for a, b, c, d in wins]).to(model.device)
    model.dino.last_keys(model._dino_input(x, wins, None).to(model.device))
    last = model.clip.visual.transformer.resblocks[-1]
    F.linear(last.ln_1(model._clip_trunk(crops)), last.attn.in_proj_weight, last.attn.in_proj_bias)
    model._cls_head(last(model._clip_trunk(x.to(model.device))))


@torch.inference_mode()
def official_pattern_pass(model, rgb_inference: np.ndarray) -> None:
    """The backbone work the official implementation does for one image (slide mode): per window,
    batch 1, DINO runs twice (its second pass, made while computing the global vector, is discarded)
    and CLIP runs on the window and again on the whole image. Spectral work is not included, so this
    is a lower bound of the official cost."""
    from cass.image_input import sliding_windows

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
    from cass.text import prompt_texts, tokenize

    model.clip.encode_text(tokenize(prompt_texts(word)).to(model.device))


def run(args) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    from cass.bench.floor import BenchRedis, cass_flops, cpu_model, load_average, matmul_rate
    from cass.features import ImageFeatures
    from cass.images import resize_for_inference
    from cass.vocabulary import Vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    model = build_model(args)
    voc_a, voc_b = Vocabulary.from_names(LABELS_A), Vocabulary.from_names(LABELS_B)
    photos = [synthetic_photo(seed) for seed in range(args.runs + 1)]
    model.text_features(voc_a)
    model.text_features(voc_b)
    model.segment(model.encode(photos[-1]), voc_a)  # warm-up

    features = model.encode(photos[0])
    blob = features.to_bytes()
    store = BenchRedis()
    if store.client is not None:
        store.client.set("cass:bench:features", blob)

    def read_back() -> bytes:
        return store.client.get("cass:bench:features") if store.client is not None else blob

    def rle(seg) -> list:
        return [mask2rle(((seg.labels == c) * 255).astype(np.uint8))
                for c in range(len(seg.class_names)) if seg.pixel_counts[c] > 0]

    rgb_inf = resize_for_inference(photos[0], model.preset.image.short_side, model.preset.image.long_side)
    backbone_pass(model, rgb_inf)
    words = iter([f"new label number {i}" for i in range(100000)])

    def swap_new_labels():
        """A user's first swap: 10 labels never seen, features read back from Redis, RLE included."""
        voc = Vocabulary.from_names([next(words) for _ in range(10)])
        restored = ImageFeatures.from_bytes(read_back(), expected_fingerprint=model.fingerprint)
        return rle(model.segment(restored, voc))

    # Interleaved rounds, so that load from other processes on a shared machine hits all figures
    # alike; medians over the rounds.
    rounds = (("cold", lambda: model.segment(model.encode(photos[i]), voc_a)),
              ("backbone", lambda: backbone_pass(model, rgb_inf)),
              ("swap", lambda: model.segment(features, voc_b)),
              ("swap_new", swap_new_labels),
              ("text", lambda: model.text.encode_uncached(next(words))))
    times: dict[str, list[float]] = {name: [] for name, _ in rounds}
    for i in range(args.runs):
        for name, fn in rounds:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    cold_s = med["cold"]
    decode_s, _ = _median_time(lambda: ImageFeatures.from_bytes(read_back()), max(args.runs, 3))
    store_where = store.where
    store.close()

    seg_hd = model.segment(features, voc_a, output_size=(1080, 1920))
    rle_s, masks = _median_time(lambda: rle(seg_hd), max(args.runs, 3))
    flops = cass_flops(model, features.num_windows, model.preset.image.slide_crop, features.input_size)
    rate = matmul_rate()
    bound_s = sum(flops.values()) / rate
    result = {
        "cold_s": round(cold_s, 3), "backbone_s": round(med["backbone"], 3),
        "overhead": round(cold_s / med["backbone"], 3),
        "swap_cached_text_s": round(med["swap"], 4), "swap_cached_text_ratio": round(cold_s / med["swap"], 1),
        "swap_new_labels_s": round(med["swap_new"], 3),
        "swap_new_labels_ratio": round(cold_s / med["swap_new"], 2), "swap_store": store_where,
        "text_s_per_label": round(med["text"], 3), "rle_s": round(rle_s, 4), "rle_masks": len(masks),
        "gflop": round(sum(flops.values()) / 1e9, 1),
        "gflop_by_stage": {k: round(v / 1e9, 1) for k, v in flops.items()},
        "matmul_gflops": round(rate / 1e9, 1), "flops_bound_s": round(bound_s, 3),
        "bound_ratio": round(cold_s / bound_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "feature_bytes": len(blob), "feature_bytes_raw": len(features.to_bytes(codec="raw")),
        "feature_decode_s": round(decode_s, 4), "windows": features.num_windows,
        "threads": torch.get_num_threads(), "device": str(model.device), "cpu": cpu_model(),
        "load_avg_before": load_before, "load_avg_after": load_average(),
        "weights": "random" if not args.clip_weights else "given", "runs": args.runs,
    }
    if args.official:
        official_s, _ = _median_time(lambda: official_pattern_pass(model, rgb_inf), 1)
        official_text_s, _ = _median_time(lambda: official_text_pass(model, "official label"), 1)
        result.update({"official_pattern_estimate_s": round(official_s, 2),
                       "speedup_estimate": round(official_s / cold_s, 1),
                       "official_text_estimate_s_per_label": round(official_text_s, 3),
                       "text_speedup_estimate": round(official_text_s / med["text"], 1)})
    if args.profile:
        profile(model, photos[0], voc_a, voc_b, features)
    return result


def profile(model, photo, voc_a, voc_b, features) -> None:
    """Where the time goes: engine stage timings and the top cProfile entries of one cold run."""
    from cass.engine import Timings

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
    parser.add_argument("--options", action="store_true",
                        help="also time the options (PAMR, DINOv2 vs DINO ViT-B/8, scale_up: cass.bench.options)")
    args = parser.parse_args(argv)
    result = run(args)
    if args.options:
        from cass.bench.engine import options as bench_options

        result["options"] = bench_options.run(runs=1, threads=args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
