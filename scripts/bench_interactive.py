#!/usr/bin/env python
"""Benchmark of the interactive refinement and the polygon payload; prints one JSON line.

    python scripts/bench_interactive.py [--runs 3] [--threads T] [--device cpu|cuda] [--size 1080x1920]

Full-size CLIP ViT-B/16 + DINO ViT-B/8 with random weights (``cass.bench.engine.build_model``; real weights
with ``--clip-weights`` / ``--dino-weights``), a synthetic photo (``cass.bench.engine.synthetic_photo``) at
``--size`` (default 1920x1080), the default preset, 10 labels, an in-process feature cache, and the
backend's own code path (``backend.controls.smart.Refiner`` over ``backend.predict.predictor.Predictor``).

text_s             the vocabulary's text embeddings, once per label set (cached; before any figure below)
rectangle_first_s  the first smart rectangle on an image whose features are cached but whose label map
                   is not yet (one whole-image segment at the original size, then the mask in the box)
rectangle_s        median of new smart rectangles (a quarter of the width and height, at different
                   places; label map cached): fetch -> decode -> crop -> PNG -> mask of the whole
                   image's map in the box -> brush RLE of the answer (target <= 1.5 s). Measured while
                   the background crop encode of the first rectangle runs (as in use)
crop_encode_s      the background encode of the first rectangle's crop (the refiner's CropEncoder,
                   here with one pending encode, so later crops are dropped, not queued)
rectangle_refined_s  that first rectangle again once its crop is encoded: segment of the crop's
                   features (the higher-resolution answer)
rectangle_cached_s the same as rectangle_refined_s again (both cached)
keypoint_first_s   a keypoint on an image whose features are cached but whose label map is not yet
keypoint_s         median of keypoints on a cached image (label map in the refiner's LRU; target <= 0.1 s)
polygon_bytes / brush_bytes / ratio   JSON bytes of the 1080p prediction's regions as PolygonLabels
                   (tolerance 1 px, minimum area 16 px) and as BrushLabels RLE
polygon_s / brush_s  time to build those regions
encode_full_s      the one-off encode of the whole image (not part of any figure above)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.controls import parse_controls  # noqa: E402
from backend.controls.base import ADAPTERS  # noqa: E402
from backend.controls.crops import CropEncoder  # noqa: E402
from backend.controls.smart import Refiner  # noqa: E402
from backend.predict.predictor import Predictor  # noqa: E402
from cass.bench.engine import build_model, synthetic_photo  # noqa: E402
from cass.cache.settings import make_cache_from_env  # noqa: E402

LABELS = ["person", "dog", "cat", "car", "tree", "grass", "sky", "road", "building", "bicycle"]
_LABEL_XML = "".join(f'<Label value="{n}"/>' for n in LABELS)
CONFIG = f"""<View><Image name="image" value="$image"/>
<BrushLabels name="brush" toName="image">{_LABEL_XML}</BrushLabels>
<PolygonLabels name="poly" toName="image">{_LABEL_XML}</PolygonLabels>
<RectangleLabels name="box" toName="image" smart="true">{_LABEL_XML}</RectangleLabels>
<KeyPointLabels name="point" toName="image" smart="true">{_LABEL_XML}</KeyPointLabels>
</View>"""


def rect(label, x, y, w, h):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "is_positive": True,
            "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [label]}}


def point(label, x, y):
    return {"from_name": "point", "to_name": "image", "type": "keypointlabels", "is_positive": True,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def timed(fn, what: str = ""):
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    if what:  # progress on stderr (a slow machine: the partial figures are still there)
        print(f"[bench_interactive] {what}: {seconds:.3f} s", file=sys.stderr, flush=True)
    return seconds, out


def payload(predictor, features, controls) -> dict:
    """JSON bytes and build time of the whole image's regions as PolygonLabels and as BrushLabels."""
    seg = predictor.segment(features, controls.outputs[0])
    polygon_s, (poly, _, _) = timed(lambda: ADAPTERS["polygon"].regions(seg, controls.outputs[1]), "polygon regions")
    brush_s, (brush, _, _) = timed(lambda: ADAPTERS["brush"].regions(seg, controls.outputs[0]), "brush regions")
    polygon_bytes, brush_bytes = len(json.dumps(poly).encode()), len(json.dumps(brush).encode())
    return {"polygon_bytes": polygon_bytes, "brush_bytes": brush_bytes,
            "ratio": round(brush_bytes / max(polygon_bytes, 1), 1), "polygon_regions": len(poly),
            "brush_regions": len(brush), "polygon_s": round(polygon_s, 3), "brush_s": round(brush_s, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", default="1080x1920", help="HxW of the synthetic photo")
    parser.add_argument("--payload-only", action="store_true",
                        help="only the polygon vs brush payload figures (no latencies)")
    parser.add_argument("--clip-weights", default=None)
    parser.add_argument("--dino-weights", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    engine = build_model(SimpleNamespace(clip_weights=args.clip_weights, dino_weights=args.dino_weights,
                                         preset="default", device=args.device, threads=args.threads))
    predictor = Predictor(engine, make_cache_from_env({"CASS_CACHE_MAX_BYTES": str(2 << 30)}))
    refiner = Refiner(predictor, crops=CropEncoder(pending=1))
    controls = parse_controls(CONFIG)
    buf = io.BytesIO()
    Image.fromarray(synthetic_photo(0, (h, w))).save(buf, "PNG")
    image = buf.getvalue()
    fetch = lambda url, task_id: image  # noqa: E731
    task = {"id": 1, "data": {"image": "bench.png"}}
    timed(predictor.warm_up, "warm_up")

    encode_full_s, features = timed(lambda: predictor.features(image), "encode_full")
    if args.payload_only:
        print(json.dumps({"image": f"{w}x{h}", "weights": "given" if args.clip_weights else "random",
                          **payload(predictor, features, controls), "encode_full_s": round(encode_full_s, 2)}))
        return 0
    ask = lambda *items: refiner.answer(task, controls, {"result": list(items)}, fetch)  # noqa: E731
    places = [(5 + 17 * i % 70, 5 + 23 * i % 70) for i in range(args.runs + 1)]
    load_start = os.getloadavg()[0]
    first = rect("dog", 60, 60, 25, 25)
    text_s, _ = timed(lambda: [predictor.prepare_text(t.vocabulary) for t in controls.outputs], "text embeddings")
    rect_first_s, _ = timed(lambda: ask(first), "rectangle (first: label map computed)")
    t_crop = time.perf_counter()
    rect_times = [timed(lambda p=p: ask(rect("dog", p[0], p[1], 25, 25)), "rectangle")[0] for p in places[:args.runs]]
    refiner.crops.wait()
    crop_encode_s = time.perf_counter() - t_crop
    print(f"[bench_interactive] background crop encode done after {crop_encode_s:.3f} s", file=sys.stderr, flush=True)
    rect_refined_s, _ = timed(lambda: ask(first), "rectangle refined (crop features)")
    rect_cached_s, _ = timed(lambda: ask(first), "rectangle cached")
    keypoint_first_s, _ = timed(lambda: ask(point("cat", 50, 50)), "keypoint first")
    kp_times = [timed(lambda i=i: ask(point(LABELS[i % 10], 10 + 7 * i % 80, 10 + 11 * i % 80)), "keypoint")[0]
                for i in range(max(args.runs, 5))]

    print(json.dumps({
        "image": f"{w}x{h}", "device": str(getattr(engine, "device", "cpu")), "threads": torch.get_num_threads(),
        "weights": "given" if args.clip_weights else "random", "runs": args.runs,
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "text_s": round(text_s, 2), "rectangle_first_s": round(rect_first_s, 3), "rectangle_s": round(statistics.median(rect_times), 3),
        "crop_encode_s": round(crop_encode_s, 2), "rectangle_refined_s": round(rect_refined_s, 3),
        "rectangle_cached_s": round(rect_cached_s, 3),
        "keypoint_first_s": round(keypoint_first_s, 3), "keypoint_s": round(statistics.median(kp_times), 4),
        **payload(predictor, features, controls), "encode_full_s": round(encode_full_s, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
