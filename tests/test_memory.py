"""cass.memory: prototypes, bound, serialisation, digest; empty memory = plain CASS bit for bit;
and the honest test: constructed features where one label's text embedding points the wrong way,
fixed on other images by a memory built from one corrected image (IoU printed and asserted)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cass import Vocabulary, testing
from cass.features import ImageFeatures
from cass.memory import ProjectMemory, mask_fractions, prototypes_from_masks
from cass.memory_entry import MemoryEntry, ProjectMemoryError
from cass.presets import PresetError, TextParams
from tests.parity import case_dirs, load_case, tiny_model

D = 256  # the tiny CLIP's embed dim (the honest test runs through the tiny engine's segment)
LABELS = ("cat", "grass", "sky")


# --------------------------------------------------------------------------------------------
# constructed features
# --------------------------------------------------------------------------------------------
def scene(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """``(size, size)`` int ground truth: sky on top, grass below, a random cat rectangle."""
    gt = np.full((size, size), 1, dtype=np.int64)
    gt[: rng.integers(size // 4, size // 2)] = 2
    h, w = rng.integers(size // 4, size // 2, size=2)
    y, x = rng.integers(0, size - h), rng.integers(0, size - w)
    gt[y:y + h, x:x + w] = 0
    return gt


def constructed_features(gt: np.ndarray, rng: np.random.Generator, noise: float = 0.45) -> ImageFeatures:
    """One whole-image window of 14x14 patches; patch = normalise(e_label + noise * random unit
    vector in the coordinates >= 8): cosine to its label's axis about 0.9, orthogonal to the others."""
    grid = 14
    patch_gt = gt.reshape(grid, 16, grid, 16).transpose(0, 2, 1, 3).reshape(grid * grid, 256)
    labels = np.array([np.bincount(p, minlength=3).argmax() for p in patch_gt])
    pf = torch.zeros(grid * grid, D)
    pf[torch.arange(grid * grid), torch.from_numpy(labels)] = 1.0
    n = torch.from_numpy(rng.standard_normal((grid * grid, D - 8))).float()
    pf[:, 8:] = noise * F.normalize(n, dim=-1)
    pf = F.normalize(pf, dim=-1).unsqueeze(0)
    g = F.normalize(pf[0].mean(0), dim=0).unsqueeze(0)
    size = gt.shape
    return ImageFeatures(patch_features=pf, global_vectors=g, windows=torch.tensor([[0, size[0], 0, size[1]]]),
                         grid=(grid, grid), input_size=size, original_size=size,
                         head_pairing=torch.zeros(1, 6, dtype=torch.int64),
                         matching_cost=torch.zeros(1, 6, 6), fingerprint="constructed")


def constructed_text(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """CLIP-like text embeddings: cosine about 0.25 to their label's axis, except ``cat``, whose
    embedding points the wrong way (cosine -0.1 to the cat axis); the rest in coordinates 3..7 and
    >= 8 (a random direction), so labels do not see each other's axes."""
    out = {}
    for i, name in enumerate(LABELS):
        v = torch.zeros(D)
        v[i] = -0.1 if name == "cat" else 0.26
        r = torch.from_numpy(rng.standard_normal(D - 3)).float()
        v[3:] = 0.97 * F.normalize(r, dim=0)
        out[name] = F.normalize(v, dim=0)
    return out


def engine_with_text(text: dict[str, torch.Tensor]):
    """The tiny engine (a view: shared backbones) whose text encoder answers the constructed
    embeddings (a fake text tower, named as such: the rest of ``segment`` is the real one)."""
    engine = tiny_model().with_preset("default")
    engine.text = lambda queries: torch.stack([text[q] for q in queries])  # fake text tower
    return engine


def iou(pred: np.ndarray, gt: np.ndarray, c: int) -> float:
    inter = np.logical_and(pred == c, gt == c).sum()
    union = np.logical_or(pred == c, gt == c).sum()
    return float(inter / union) if union else 1.0


def test_memory_from_one_corrected_image_fixes_a_wrong_label_on_other_images(tiny_weights):
    rng = np.random.default_rng(12)
    engine = engine_with_text(constructed_text(rng))
    vocab = Vocabulary.from_names(LABELS)
    corrected_gt = scene(rng)
    memory = ProjectMemory()
    memory.add("annotation-1", constructed_features(corrected_gt, rng),
               {name: corrected_gt == i for i, name in enumerate(LABELS)})
    before, after = [], []
    for _ in range(6):  # other images
        gt = scene(rng)
        features = constructed_features(gt, rng)
        plain = engine.segment(features, vocab).labels
        fused = engine.segment(features, vocab, memory=memory).labels
        before.append([iou(plain, gt, c) for c in range(3)])
        after.append([iou(fused, gt, c) for c in range(3)])
    before_m, after_m = np.mean(before, axis=0), np.mean(after, axis=0)
    print(json.dumps({"test": "memory_fixes_wrong_label", "images": 6,
                      "iou_before": dict(zip(LABELS, before_m.round(3).tolist())),
                      "iou_after": dict(zip(LABELS, after_m.round(3).tolist())),
                      "miou_before": round(float(before_m.mean()), 3), "miou_after": round(float(after_m.mean()), 3),
                      "prototypes": memory.num_prototypes}))
    assert before_m[0] < 0.1, "the constructed text should get 'cat' wrong without the memory"
    assert after_m[0] > 0.6, f"the memory should fix 'cat' (IoU {after_m[0]:.3f})"
    assert after_m.mean() - before_m.mean() > 0.2
    assert (after_m[1:] >= before_m[1:] - 0.05).all(), "the memory must not break the other labels"


# --------------------------------------------------------------------------------------------
# empty memory: plain CASS, bit for bit
# --------------------------------------------------------------------------------------------
def test_empty_memory_is_bit_identical_on_tiny_weights(model):
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    features = model.encode(image)
    vocab = Vocabulary.from_names(["cat", "dog", "tree"])
    plain = model.segment(features, vocab, return_probs=True)
    other = ProjectMemory()
    other.add("a", features, {"not-in-vocabulary": np.ones((120, 200), bool)})
    for memory in (ProjectMemory(), other):
        seg = model.segment(features, vocab, return_probs=True, memory=memory)
        assert torch.equal(torch.from_numpy(seg.probs), torch.from_numpy(plain.probs))
        assert np.array_equal(seg.labels, plain.labels) and np.array_equal(seg.scores, plain.scores)
    used = ProjectMemory()
    used.add("b", features, {"dog": np.pad(np.ones((60, 100), bool), ((0, 60), (0, 100)))})
    changed = model.segment(features, vocab, return_probs=True, memory=used)
    assert not torch.equal(torch.from_numpy(changed.probs), torch.from_numpy(plain.probs))


def test_empty_memory_is_bit_identical_on_a_parity_case(tiny_weights):
    cases = [c for c in case_dirs() if c.name == "quick_gray_camera"] or case_dirs()[:1]
    if not cases:
        pytest.skip("no parity cases")
    case = load_case(cases[0])
    base = tiny_model(*case.weights(), case.global_clip())
    model = base.with_preset(case.preset(base.preset))
    features = testing.encode(model, case.image, resize=False, head_pairing=case.expected["hungarian_col_ind"])
    plain = testing.segment(model, features, case.vocabulary(), return_probs=True, image=case.image)
    empty = testing.segment(model, features, case.vocabulary(), return_probs=True, image=case.image,
                            memory=ProjectMemory())
    assert torch.equal(torch.from_numpy(empty.probs), torch.from_numpy(plain.probs))
    assert np.array_equal(empty.labels, plain.labels)


# --------------------------------------------------------------------------------------------
# prototypes, bound, serialisation, digest, errors
# --------------------------------------------------------------------------------------------
def test_mask_fractions_follow_the_windows_and_the_resize(model):
    features = model.encode(np.zeros((60, 90, 3), np.uint8))  # 336x504 inference, 8 windows of 14x14
    mask = np.zeros((60, 90), bool)
    mask[:, :45] = True  # the left half
    frac = mask_fractions(features, mask)
    assert frac.shape == (features.num_windows, 196)
    assert torch.all(frac[0] == 1.0)  # window 0 (x 0..224 of 504) is inside the left half
    assert torch.all(frac[features.num_windows // 2 - 1] == 0.0)  # the top row's last window: right
    protos = prototypes_from_masks(features, {"left": mask, "empty": np.zeros((60, 90), bool)})
    assert set(protos) == {"left"} and protos["left"].shape[1] == model.embed_dim
    assert torch.allclose(protos["left"].norm(dim=1), torch.ones(len(protos["left"])), atol=1e-5)


def test_bad_masks_and_features_are_named(model):
    features = model.encode(np.zeros((60, 90, 3), np.uint8))
    memory = ProjectMemory()
    with pytest.raises(ProjectMemoryError, match=r"\(H, W\) = \(60, 90\).*got shape \(90, 60\)"):
        memory.add("a", features, {"x": np.ones((90, 60), bool)})
    with pytest.raises(ProjectMemoryError, match="non-empty strings"):
        memory.add("a", features, {"": np.ones((60, 90), bool)})
    memory.add("a", features, {"x": np.ones((60, 90), bool)})
    other = ImageFeatures(**{**features.__dict__, "fingerprint": "other-weights"})
    with pytest.raises(ProjectMemoryError, match="fingerprint 'other-weights' do not match"):
        memory.add("b", other, {"x": np.ones((60, 90), bool)})
    with pytest.raises(ProjectMemoryError, match="bad magic"):
        ProjectMemory.from_bytes(b"nonsense")
    with pytest.raises(ProjectMemoryError, match="truncated"):
        MemoryEntry.from_bytes(memory.entries["a"].to_bytes()[:-10])
    with pytest.raises(PresetError, match="memory_temperature"):
        TextParams(memory_temperature=0)


def test_round_trip_digest_replace_remove(model):
    features = model.encode(np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    full = np.ones((60, 90), bool)
    memory = ProjectMemory()
    assert memory.digest == ""
    memory.add("1", features, {"x": full})
    d1 = memory.digest
    memory.add("2", features, {"y": full})
    d12 = memory.digest
    assert len(d12) == 12 and d12 != d1
    back = ProjectMemory.from_bytes(memory.to_bytes())
    assert back.digest == d12 and set(back.entries) == {"1", "2"}
    assert back.entries["2"].prototypes["y"].dtype == torch.float16
    assert torch.equal(back.entries["2"].prototypes["y"], memory.entries["2"].prototypes["y"])
    # 8 windows x 256-d float16 per label: the bytes are the prototypes plus a small header
    assert len(memory.entries["1"].to_bytes()) < 8 * 256 * 2 + 200
    assert memory.remove("2") and memory.digest == d1
    assert not memory.remove("2")
    memory.remove("1")
    assert memory.digest == "" and len(memory) == 0


def test_bound_keeps_the_newest_prototypes_per_label(model):
    features = model.encode(np.zeros((60, 90, 3), np.uint8))
    full = np.ones((60, 90), bool)
    memory = ProjectMemory(max_per_label=12)  # each entry brings 8 (one per window)
    for i in range(3):
        memory.add(f"a{i}", features, {"x": full})
    active = memory.active()
    assert active["x"].shape[0] == 12
    newest = memory.entries["a2"].prototypes["x"].float()
    assert torch.equal(active["x"][:8], newest)
    memory.remove("a2")
    assert memory.active()["x"].shape[0] == 12  # the older ones come back
