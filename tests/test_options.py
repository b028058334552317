"""The official CASS options beside the default path: PAMR, DINOv2 weights, scale_up (unit level).

Parity with the official code for each option is in tests/test_parity.py (cases_options).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cass
from cass import pamr
from cass.presets import PresetError
from tests.parity import PARITY, TINY_CLIP, TINY_CLIP_L14, TINY_DINO, complete_global_clip, gradient_photo

TINY_DINOV2 = PARITY / "weights" / "dinov2_tiny.safetensors"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return gradient_photo(240, 320, (60, 180, 100, 220))


# --- PAMR ---------------------------------------------------------------------------------------
def test_pamr_affinity_is_a_distribution_over_16_neighbours():
    img = torch.randn(3, 20, 30)
    w = pamr.affinity(img, (8, 16))
    assert w.shape == (16, 20, 30) and (w > 0).all()
    torch.testing.assert_close(w.sum(0), torch.ones(20, 30))


def test_pamr_matches_a_per_pixel_loop_of_the_spec():
    """Direct per-pixel implementation of README 7.1 on a small image (slow reference)."""
    g = torch.Generator().manual_seed(0)
    img, logits = torch.randn(3, 9, 11, generator=g), torch.randn(2, 9, 11, generator=g)
    dil = (1, 3)
    h, w = 9, 11

    def at(t, y, x):
        return t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    offs = [(dy * d, dx * d) for d in dil for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    nbrs = [o for i, o in enumerate(offs) if i % 9 != 4]
    weights = torch.empty(len(nbrs), h, w)
    for y in range(h):
        for x in range(w):
            samples = torch.stack([at(img, y + dy, x + dx) for dy, dx in offs])  # (18, 3)
            sigma = samples.std(dim=0, unbiased=True)
            a = torch.stack([(-(img[:, y, x] - at(img, y + dy, x + dx)).abs() / (1e-8 + 0.1 * sigma)).mean()
                             for dy, dx in nbrs])
            weights[:, y, x] = torch.softmax(a, 0)
    m = logits.clone()
    for _ in range(3):
        m = torch.stack([torch.stack([sum(weights[i, y, x] * at(m, y + dy, x + dx)
                                          for i, (dy, dx) in enumerate(nbrs)) for x in range(w)], -1)
                         for y in range(h)], 1)
    ours = pamr.refine(logits, img, pamr.PamrParams(steps=3, dilations=dil))
    torch.testing.assert_close(ours, m, atol=1e-5, rtol=1e-5)


def test_pamr_pulls_a_blurred_boundary_onto_the_image_edge():
    img = torch.zeros(3, 40, 40)
    img[:, :, 20:] = 3.0  # a sharp vertical edge at x = 20
    x = torch.arange(40).float()
    logit = torch.sigmoid((x - 20) / 6).expand(40, 40)  # a soft boundary
    logits = torch.stack([1 - logit, logit])
    out = pamr.refine(logits, img, pamr.PamrParams(steps=10, dilations=(2, 4)))
    before = (logits.argmax(0) != (x >= 20).long()).float().mean()
    after = (out.argmax(0) != (x >= 20).long()).float().mean()
    assert after <= before
    margin_before = (logits[1] - logits[0])[:, 17:23].abs().mean()
    margin_after = (out[1] - out[0])[:, 17:23].abs().mean()
    assert margin_after > margin_before  # sharper near the edge


@pytest.mark.parametrize("value, message", [
    ({"steps": 0}, "steps"), ({"dilations": []}, "dilations"), ({"dilations": [0]}, "dilations"),
    ({"step": 3}, "unknown pamr fields"), ("yes", "pamr must be"),
])
def test_bad_pamr_preset_values_are_clear_errors(value, message):
    with pytest.raises(PresetError, match=message):
        cass.load_preset("default").replace(pamr=value)


def test_pamr_preset_field_forms():
    p = cass.load_preset("default")
    assert p.text.pamr is None
    assert p.replace(pamr=True).text.pamr == pamr.PamrParams(10, (8, 16))
    assert p.replace(pamr={"steps": 3, "dilations": [4]}).text.pamr == pamr.PamrParams(3, (4,))
    assert cass.Preset.from_dict({"name": "x", "text": {"pamr": {"steps": 2}}}).text.pamr.steps == 2


def test_pamr_is_text_side_and_in_the_model_version(model, photo):
    on = model.with_preset(model.preset.replace(pamr=True))
    assert on.fingerprint == model.fingerprint  # cached features stay valid
    assert on.model_version != model.model_version and "pamr10d8-16" in on.model_version
    vocab = cass.Vocabulary.from_spec("red;blue;green")
    feats = model.encode(photo)
    plain = model.segment(feats, vocab, return_probs=True)
    refined = on.segment(feats, vocab, return_probs=True, image=photo)  # the same features
    assert refined.labels.shape == plain.labels.shape == photo.shape[:2]
    assert not np.allclose(refined.probs, plain.probs)
    again = model.segment(feats, vocab, params=on.preset.text, image=photo, return_probs=True)
    np.testing.assert_array_equal(again.labels, refined.labels)


def test_pamr_without_the_image_or_with_another_image_is_a_clear_error(model, photo):
    on = model.with_preset(model.preset.replace(pamr=True))
    feats = model.encode(photo)
    vocab = cass.Vocabulary.from_spec("a;b")
    with pytest.raises(ValueError, match="PAMR is on but segment"):
        on.segment(feats, vocab)
    with pytest.raises(cass.ImageError, match="features are of a 320x240"):
        on.segment(feats, vocab, image=photo[:200])


# --- DINOv2 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinov2_model():
    if not TINY_DINOV2.is_file():
        pytest.skip("no tiny DINOv2 weights")
    return cass.create_model(TINY_CLIP, TINY_DINOV2)


def test_dinov2_architecture_is_inferred_from_the_official_layout(dinov2_model):
    cfg = dinov2_model.dino.cfg
    assert (cfg.patch_size, cfg.registers, cfg.grid, cfg.input_size, cfg.depth) == (14, 4, 37, 518, 2)
    assert dinov2_model.dino.kind == "dinov2"


def test_dinov2_is_in_the_feature_cache_key(model, dinov2_model, photo):
    assert dinov2_model.fingerprint != model.fingerprint
    feats = dinov2_model.encode(photo)
    with pytest.raises(cass.FeaturesFormatError):
        cass.ImageFeatures.from_bytes(feats.to_bytes(), expected_fingerprint=model.fingerprint)


def test_dinov2_keys_drop_cls_and_registers(dinov2_model):
    """The keys of the patches do not change when the register tokens are dropped from the sequence
    only after the last block (they attend to registers, so removing registers earlier would)."""
    x = torch.randn(1, 3, 518, 518)
    keys = dinov2_model.dino.last_keys(x)
    assert keys.shape == (1, 6, 37 * 37, 64)


def test_bad_dinov2_file_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(TINY_DINOV2))
    state["blocks.0.bogus.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(cass.WeightsError, match="unexpected keys"):
        cass.create_model(TINY_CLIP, tmp_path / "bad.safetensors")


def test_dinov2_named_source_uses_the_official_file_name(tmp_path, monkeypatch):
    from cass import weights

    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path))
    (tmp_path / "dinov2_vitb14_reg4_pretrain.pth").write_bytes(b"x")
    got = weights.resolve("dinov2_vitb14", weights.DINO_SOURCES, "DINO",
                          download=lambda *a, **k: pytest.fail("no download expected"))
    assert got.path.name == "dinov2_vitb14_reg4_pretrain.pth"


# --- scale_up -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scale_up_model():
    if not TINY_CLIP_L14.is_file():
        pytest.skip("no tiny L/14 weights")
    return cass.create_model(TINY_CLIP, TINY_DINO, global_clip_weights=complete_global_clip(TINY_CLIP_L14, TINY_CLIP))


def test_scale_up_global_vector_is_the_second_clips_cls(scale_up_model, model):
    """At the second CLIP's native 224 input (no positional interpolation) the global vector equals
    open_clip's own ``encode_image``, and its similarity uses the second CLIP's text features."""
    from cass import testing
    from cass.text import prompt_texts, tokenize

    m = scale_up_model.with_preset(scale_up_model.preset.replace(slide_crop=0))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    feats = m.encode(img, resize=False)
    x, _ = m.normalized_input(img, resize=False)
    with torch.inference_mode():
        ref = F.normalize(m.global_clip.encode_image(x), dim=-1)
    assert feats.global_vectors.shape == (1, 192)
    torch.testing.assert_close(feats.global_vectors, ref, atol=2e-6, rtol=0)
    trace: dict = {}
    vocab = cass.Vocabulary.from_spec("cat;dog")
    testing.segment(m, feats, vocab, trace=trace)
    with torch.inference_mode():
        t = F.normalize(m.global_clip.encode_text(tokenize(prompt_texts("cat"))), dim=-1)
    torch.testing.assert_close(trace["global_text_features"][0], F.normalize(t.mean(0), dim=-1),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(trace["window0_global_sim"], feats.global_vectors[0] @ trace["global_text_features"].T)
    assert trace["text_features"].shape[1] == 256  # clustering and patches keep the first CLIP


def test_scale_up_is_in_the_cache_key_and_version(scale_up_model, model):
    assert scale_up_model.fingerprint != model.fingerprint
    assert "-gclip." in scale_up_model.model_version


def test_scale_up_segment_rejects_features_of_the_plain_model(scale_up_model, model, photo):
    feats = model.encode(photo)
    with pytest.raises(ValueError, match="without the scale_up CLIP"):
        scale_up_model.segment(feats, cass.Vocabulary.from_spec("a;b"))


def test_scale_up_text_features_are_cached_like_the_main_ones(scale_up_model, photo):
    feats = scale_up_model.encode(photo)
    vocab = cass.Vocabulary.from_spec("apple;pear")
    scale_up_model.segment(feats, vocab)
    calls = []
    original = scale_up_model.global_text.encode_uncached
    scale_up_model.global_text.encode_uncached = lambda q: calls.append(q) or original(q)
    try:
        scale_up_model.segment(feats, vocab)
    finally:
        del scale_up_model.global_text.encode_uncached
    assert calls == []
