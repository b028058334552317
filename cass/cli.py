"""Command line: ``python -m cass segment ...`` and ``python -m cass eval ...``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cass.engine import create_model
from cass.images import ImageError, load_image
from cass.overlay import save_outputs
from cass.presets import PresetError, list_presets, load_preset
from cass.vocabulary import Vocabulary, VocabularyError
from cass.weight_sources import check_sources, chosen_sources, missing_weights_message
from cass.weights import WeightsError


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
