"""Command line: ``python -m cass segment ...`` and ``python -m cass eval ...``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cass.engine import create_model
from cass.features import Segmentation
from cass.images import ImageError, load_image
from cass.presets import PresetError, list_presets, load_preset
from cass.vocabulary import Vocabulary, VocabularyError
from cass.weight_sources import check_sources, chosen_sources, missing_weights_message
from cass.weights import WeightsError


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 distinct colours (the PASCAL VOC bit-interleaving palette)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def save_outputs(rgb: np.ndarray, seg: Segmentation, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>_labels.png`` (palette PNG, pixel = class index, 255 = no label) and
    ``<stem>_overlay.png`` (class colours blended over the image)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(seg.class_names)
    colours = palette(max(n, 1))
    labels = seg.labels
    idx = np.where(labels < 0, 255, labels).astype(np.uint8)
    label_img = Image.fromarray(idx, mode="P")
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:n] = colours[:n]
    label_img.putpalette(pal.reshape(-1).tolist())
    label_path = out_dir / f"{stem}_labels.png"
    label_img.save(label_path)
    colour = np.where((labels >= 0)[..., None], colours[np.clip(labels, 0, n - 1)], rgb)
    overlay = (0.5 * rgb.astype(np.float32) + 0.5 * colour.astype(np.float32)).round().astype(np.uint8)
    overlay_path = out_dir / f"{stem}_overlay.png"
    with_legend(Image.fromarray(overlay), legend_entries(seg, colours)).save(overlay_path)
    return label_path, overlay_path


def legend_entries(seg: Segmentation, colours: np.ndarray) -> list[tuple[tuple[int, int, int], str]]:
    """``(colour, "name  12.3 %")`` per class with pixels (largest share first), then "(no label)"."""
    shares = seg.shares()
    order = sorted(range(len(seg.class_names)), key=lambda i: -shares[seg.class_names[i]])
    out = [(tuple(int(v) for v in colours[i]), f"{seg.class_names[i]}  {100 * shares[seg.class_names[i]]:.1f} %")
           for i in order if seg.pixel_counts[i] > 0]
    unlabelled = float((seg.labels < 0).mean())
    if unlabelled:
        out.append(((0, 0, 0), f"(no label)  {100 * unlabelled:.1f} %"))
    return out


def with_legend(image: Image.Image, entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """``image`` with a legend panel (colour swatch, label, pixel share) to its right."""
    font = ImageFont.load_default()
    row, pad = 16, 6
    probe = ImageDraw.Draw(image)
    text_w = max((int(probe.textlength(text, font=font)) for _, text in entries), default=0)
    panel_w = pad * 3 + 12 + text_w
    height = max(image.height, pad * 2 + row * len(entries))
    canvas = Image.new("RGB", (image.width + panel_w, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (colour, text) in enumerate(entries):
        y = pad + k * row
        x = image.width + pad
        draw.rectangle([x, y + 1, x + 11, y + 12], fill=colour, outline=(0, 0, 0))
        draw.text((x + 12 + pad, y), text, fill=(0, 0, 0), font=font)
    return canvas


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip-weights", default=None,
                   help="'openai' (official CLIP ViT-B/16) or a path to an OpenAI-format CLIP state dict "
                        "(default: $CASS_CLIP_WEIGHTS, else 'openai')")
    p.add_argument("--dino-weights", default=None,
                   help="'dino_vitb8' (official DINO ViT-B/8), 'dinov2_vitb14' (DINOv2 ViT-B/14 reg4) or a path "
                        "to a DINO / DINOv2 state dict (default: $CASS_DINO_WEIGHTS, else 'dino_vitb8')")
    p.add_argument("--global-clip-weights", default=None,
                   help="scale_up: 'openai-vit-l-14' or a path to a second CLIP for the global vector "
                        "(default: $CASS_GLOBAL_CLIP_WEIGHTS, else none)")
    p.add_argument("--pamr", action="store_true",
                   help="PAMR boundary refinement (official: 10 steps, dilations 8, 16; docs/options.md)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _model(args: argparse.Namespace, preset):
    """The engine on the weights chosen as the backend chooses them (flags over ``CASS_*_WEIGHTS``);
    every missing weight file is reported in one :class:`WeightsError` before anything is loaded."""
    chosen = chosen_sources(flags={"CLIP": args.clip_weights, "DINO": args.dino_weights,
                                   "global CLIP": args.global_clip_weights})
    problems = check_sources(chosen)
    if problems:
        raise WeightsError(missing_weights_message(problems))
    return create_model(chosen["CLIP"], chosen["DINO"], preset, device=args.device, threads=args.threads,
                        global_clip_weights=chosen["global CLIP"])


def cmd_segment(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    if args.prob_thd is not None:
        preset = preset.replace(prob_thd=args.prob_thd)
    if args.pamr and preset.text.pamr is None:
        preset = preset.replace(pamr=True)
    vocab = Vocabulary.from_spec(args.labels)
    model = _model(args, preset)
    out_dir = Path(args.out)
    failures = 0
    used: set[str] = set()
    for path in args.images:
        try:
            rgb = load_image(path)
            seg = model.segment(model.encode(rgb), vocab, image=rgb)
        except ImageError as exc:
            print(f"{path}: ERROR {exc}", file=sys.stderr)
            failures += 1
            continue
        stem = Path(path).stem
        while stem in used:  # same file name from different folders: keep both
            stem = f"{Path(path).parent.name or 'img'}_{stem}" if stem == Path(path).stem else f"{stem}_"
        used.add(stem)
        label_path, overlay_path = save_outputs(rgb, seg, out_dir, stem)
        shares = seg.shares()
        unlabelled = float((seg.labels < 0).mean())
        print(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} -> {label_path}, {overlay_path}")
        for name, share in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<24s} {100 * share:6.2f} %   score {seg.scores[seg.class_names.index(name)]:.3f}")
        if unlabelled:
            print(f"  {'(no label)':<24s} {100 * unlabelled:6.2f} %")
    return 1 if failures else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cass.evaluate import evaluate

    preset = load_preset(args.preset)
    if not preset.dataset:
        raise PresetError(f"preset {preset.name!r} has no dataset layout; use one of the benchmark presets")
    if args.pamr and preset.text.pamr is None:
        preset = preset.replace(pamr=True)
    vocab = Vocabulary.from_class_file(Path(args.classes).read_text(), background=0)
    model = _model(args, preset)
    result = evaluate(model, Path(args.dataset_root), vocab, preset.dataset, limit=args.limit,
                      progress=not args.no_progress)
    report = {"preset": preset.name, **result.as_dict(), "paper_mIoU": preset.dataset.get("paper_miou")}
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cass", description="CASS open-vocabulary segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment images with a label set; writes label and overlay PNGs")
    seg.add_argument("images", nargs="+")
    seg.add_argument("--labels", required=True,
                     help="classes separated by ';', synonyms by ',' (e.g. \"cat,kitten;dog;grass\")")
    seg.add_argument("--preset", default="default", help=f"one of {', '.join(list_presets())} or a .json path")
    seg.add_argument("--prob-thd", type=float, default=None, help="pixels below this probability get no label")
    seg.add_argument("--out", default="out", help="output folder (default ./out)")
    _add_model_args(seg)
    seg.set_defaults(func=cmd_segment)
    ev = sub.add_parser("eval", help="mIoU on a dataset in the VOC/mmseg folder layout")
    ev.add_argument("--dataset-root", required=True)
    ev.add_argument("--preset", required=True, help="benchmark preset (voc21, voc20, context60, ...)")
    ev.add_argument("--classes", required=True,
                    help="class file in the official format (one class per line, synonyms separated by ', ')")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--json", action="store_true", help="one-line JSON output")
    _add_model_args(ev)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, PresetError, VocabularyError, ImageError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
