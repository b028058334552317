"""mIoU evaluation on datasets in the usual VOC / mmseg folder layouts.

The layout of each benchmark (image and annotation folders, file suffixes, split file,
``reduce_zero_label``) is data in the preset (``dataset`` section). The metric is mmseg's
``IoUMetric``: intersections and unions summed over the whole dataset per class, IoU per class,
mean over the classes that occur (in the ground truth or the predictions); label 255 is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from cass.engine import CASS
from cass.vocabulary import Vocabulary


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout."""


@dataclass
class EvalResult:
    miou: float
    iou: np.ndarray  # (C,) float64, NaN for classes absent from both GT and predictions
    class_names: list[str]
    images: int

    def as_dict(self) -> dict:
        return {"mIoU": round(100 * self.miou, 2), "images": self.images,
                "per_class_IoU": {n: (None if np.isnan(v) else round(100 * float(v), 2))
                                  for n, v in zip(self.class_names, self.iou)}}


def dataset_pairs(root: Path, layout: dict) -> list[tuple[Path, Path]]:
    """``(image, annotation)`` pairs in split-file order (or sorted image names without a split)."""
    root = Path(root)
    img_dir, ann_dir = root / layout["img_dir"], root / layout["ann_dir"]
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise DatasetError(f"dataset folder {d} not found (expected layout: {layout['img_dir']}/ and "
                               f"{layout['ann_dir']}/ under {root})")
    img_suffix, seg_suffix = layout["img_suffix"], layout["seg_suffix"]
    split = layout.get("split")
    if split and (root / split).is_file():
        stems = [line.strip() for line in (root / split).read_text().splitlines() if line.strip()]
    else:
        stems = sorted(str(p.relative_to(img_dir))[: -len(img_suffix)] for p in img_dir.rglob(f"*{img_suffix}"))
    pairs = []
    for stem in stems:
        img, ann = img_dir / f"{stem}{img_suffix}", ann_dir / f"{stem}{seg_suffix}"
        if not img.is_file() or not ann.is_file():
            raise DatasetError(f"missing image or annotation for {stem!r}: {img} / {ann}")
        pairs.append((img, ann))
    if not pairs:
        raise DatasetError(f"no images matching *{img_suffix} in {img_dir}")
    return pairs


def load_annotation(path: Path, reduce_zero_label: bool, ignore_index: int = 255) -> np.ndarray:
    """Class-index map (palette PNGs give indices, not colours), mmseg's ``reduce_zero_label`` applied."""
    label = np.asarray(Image.open(path)).astype(np.int64)
    if label.ndim == 3:
        label = label[..., 0]
    if reduce_zero_label:
        label = np.where(label == 0, ignore_index, label - 1)
        label[label == ignore_index - 1] = ignore_index
    return label


def iter_eval(model: CASS, root: Path, vocabulary: Vocabulary, layout: dict,
              limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield per-image ``(area_intersect, area_union)`` vectors of length C."""
    ignore = int(layout.get("ignore_index", 255))
    n_cls = len(vocabulary)
    for img_path, ann_path in dataset_pairs(root, layout)[:limit]:
        gt = load_annotation(ann_path, bool(layout.get("reduce_zero_label")), ignore)
        seg = model.predict(img_path, vocabulary, output_size=gt.shape)
        pred = seg.labels.astype(np.int64)
        valid = gt != ignore
        p, g = pred[valid], gt[valid]
        inter = np.bincount(p[p == g], minlength=n_cls)[:n_cls]
        area_p = np.bincount(p[(p >= 0) & (p < n_cls)], minlength=n_cls)[:n_cls]
        area_g = np.bincount(g[(g >= 0) & (g < n_cls)], minlength=n_cls)[:n_cls]
        yield inter, area_p + area_g - inter


def evaluate(model: CASS, root: Path, vocabulary: Vocabulary, layout: dict, limit: int | None = None,
             progress: bool = True) -> EvalResult:
    pairs = dataset_pairs(root, layout)[:limit]
    it = iter_eval(model, root, vocabulary, layout, limit)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(pairs), desc=f"eval {model.preset.name}", unit="img")
    inter = np.zeros(len(vocabulary), dtype=np.float64)
    union = np.zeros(len(vocabulary), dtype=np.float64)
    for i, u in it:
        inter += i
        union += u
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return EvalResult(miou, iou, vocabulary.names, len(pairs))
