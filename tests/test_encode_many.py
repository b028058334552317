"""``CASS.encode_many``: several images' windows batched into shared backbone calls give the same
features as encoding each image alone (tiny official-format weights, every preset window layout)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cass
from cass.images import ImageError
from tests.parity import PARITY, TINY_CLIP, TINY_CLIP_L14, TINY_DINO, complete_global_clip

TINY_DINOV2 = PARITY / "weights" / "dinov2_tiny.safetensors"
ATOL = 1e-4  # float32 batched-vs-single GEMM blocking differences; features are unit vectors


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic photo: gradients, a coloured block and noise (different per seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], axis=-1)
    img = img + rng.normal(0, 20, img.shape)
    img[height // 4: height // 2, width // 3: width // 2] = rng.integers(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


# same window shape (batched together), another inference size, a portrait, a thin padded strip
IMAGES = [(240, 320, 0), (240, 320, 1), (200, 200, 2), (320, 240, 3), (10, 400, 4)]


def window_layouts() -> list[str]:
    """One preset per distinct image-side configuration (the text side does not touch encode)."""
    seen, out = set(), []
    for name in cass.list_presets():
        key = repr(cass.load_preset(name).image)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def assert_same(a: cass.ImageFeatures, b: cass.ImageFeatures) -> None:
    assert (a.grid, a.input_size, a.original_size, a.valid_size) == (b.grid, b.input_size, b.original_size,
                                                                     b.valid_size)
    assert a.windows.tolist() == b.windows.tolist()
    assert a.fingerprint == b.fingerprint
    assert a.head_pairing.tolist() == b.head_pairing.tolist()
    torch.testing.assert_close(a.matching_cost, b.matching_cost, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(a.patch_features, b.patch_features, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.global_vectors, b.global_vectors, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def images():
    return [photo(*spec) for spec in IMAGES]


@pytest.mark.parametrize("preset", window_layouts())
def test_encode_many_equals_encode_per_image_for_every_preset(model, images, preset):
    m = model.with_preset(preset)
    batched = m.encode_many(images)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        assert_same(got, m.encode(image))


def test_windows_of_same_shape_share_one_backbone_call(model, images, monkeypatch):
    """Spy (a counting wrapper round the real backbone): images whose windows have one shape share
    one DINO and one CLIP trunk call."""
    m = model.with_preset("default")
    calls = {"dino": [], "clip": []}
    dino_keys, trunk = m.dino.last_keys, m._clip_trunk

    def counting_keys(x):
        calls["dino"].append(x.shape[0])
        return dino_keys(x)

    def counting_trunk(x, clip=None):
        calls["clip"].append(x.shape[0])
        return trunk(x, clip)

    monkeypatch.setattr(m.dino, "last_keys", counting_keys)
    monkeypatch.setattr(m, "_clip_trunk", counting_trunk)
    feats = m.encode_many(images)
    keys = [m._prepare(image, True).batch_key for image in images]
    groups = {}
    for key, f in zip(keys, feats):
        groups.setdefault(key, []).append(f.num_windows)
    assert len(groups) < len(images)  # something was batched
    assert sorted(calls["dino"]) == sorted(sum(g) for g in groups.values())
    # CLIP: one trunk call per window group plus the whole-image passes (one per size per group)
    sizes = {(key, f.input_size) for key, f in zip(keys, feats)}
    assert len(calls["clip"]) == len(groups) + len(sizes)


def test_timings_count_every_image(model, images):
    m = model.with_preset("default")
    m.encode_many(images[:3])
    t = m.timings
    assert t.encode_calls == 3
    assert 0 < t.dino_s + t.clip_s + t.spectral_s + t.global_s <= t.encode_s


def test_scale_up_and_dinov2_models_batch_identically(images):
    """scale_up (second CLIP for the global vector, whole image) and DINOv2 (window prior)."""
    scale_up = cass.create_model(TINY_CLIP, TINY_DINO,
                                 global_clip_weights=complete_global_clip(TINY_CLIP_L14, TINY_CLIP))
    dinov2 = cass.create_model(TINY_CLIP, TINY_DINOV2).with_preset("cityscapes")
    for m in (scale_up, dinov2):
        for image, got in zip(images[:2], m.encode_many(images[:2])):
            assert_same(got, m.encode(image))


def test_empty_and_bad_inputs(model, images):
    assert model.encode_many([]) == []
    with pytest.raises(TypeError, match="sequence of images"):
        model.encode_many(images[0])
    with pytest.raises(ImageError, match="image 1"):
        model.encode_many([images[0], b"not an image"])
