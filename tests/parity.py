"""Helpers to run the official-implementation parity cases (``../shared/parity``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

import cass

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CASS_SHARED_DIR", REPO.parent / "shared"))
PARITY = SHARED / "parity"
TINY_CLIP = PARITY / "weights" / "clip_tiny.safetensors"
TINY_DINO = PARITY / "weights" / "dino_tiny.safetensors"


def case_dirs() -> list[Path]:
    """Directories from ``CASS_PARITY_CASES`` (os.pathsep-separated), else every shared case."""
    env = os.environ.get("CASS_PARITY_CASES")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    root = PARITY / "cases"
    return sorted(p for p in root.iterdir() if (p / "case.json").is_file()) if root.is_dir() else []


@dataclass
class Case:
    name: str
    path: Path
    meta: dict
    expected: dict
    image: np.ndarray

    @property
    def config(self) -> dict:
        return self.meta["config"]

    def weights(self) -> tuple[Path, Path]:
        w = self.meta.get("weights", {})
        clip = (self.path / w["clip"]).resolve() if "clip" in w else TINY_CLIP
        dino = (self.path / w["dino"]).resolve() if "dino" in w else TINY_DINO
        return clip, dino

    def preset(self, base: cass.Preset) -> cass.Preset:
        """The case's configuration as a preset (image already at inference size)."""
        c = self.config
        return base.replace(
            slide_crop=int(c["slide_crop"]), slide_stride=int(c["slide_stride"]),
            gaussian_std=float(c["gaussian_std"]), eigenvalue_scaling=bool(c["eigenvalue_scaling"]),
            global_prior="window" if c["dataset"] == "city_scapes" else "image",
            k_eigen=int(c.get("k_eigen", 20)), lowrank_rank=int(c.get("svd_lowrank_q", 10)),
            scale_factor=float(c.get("scale_factor", 10.0)),
            pixel_mean=tuple(c["pixel_mean"]), pixel_std=tuple(c["pixel_std"]),
            global_semantics_weight=float(c["global_semantics_weight"]),
            mean_vector_weight=float(c["mean_vector_weight"]), h_threshold=float(c["h_threshold"]),
            prob_thd=float(c["prob_thd"]), logit_scale=float(c["logit_scale"]),
            topk=int(c.get("topk", 2)))

    def vocabulary(self) -> cass.Vocabulary:
        return cass.Vocabulary.from_class_file(self.meta["labels_file_content"], background=0)


def load_case(path: Path) -> Case:
    meta = json.loads((path / "case.json").read_text())
    with np.load(path / "expected.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    image = np.asarray(Image.open(path / meta.get("image", "input.png")).convert("RGB"))
    return Case(meta.get("name", path.name), path, meta, expected, image)


@lru_cache(maxsize=4)
def tiny_model(clip: Path = TINY_CLIP, dino: Path = TINY_DINO) -> cass.CASS:
    return cass.create_model(clip, dino, preset="default", device="cpu")


def tolerance(name: str) -> dict:
    tol = json.loads((PARITY / "tolerance.json").read_text())
    return tol["per_case"].get(name, tol["global_default"]) | {"_all": tol}


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two flat cluster labelings define the same partition (ids may differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    fwd: dict = {}
    back: dict = {}
    for x, y in zip(a.tolist(), b.tolist()):
        if fwd.setdefault(x, y) != y or back.setdefault(y, x) != x:
            return False
    return True
