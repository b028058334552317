"""Engine behaviour: the label-free boundary, text tower, resizing, errors for bad inputs."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import cass
from cass import weights as weights_mod
from cass.images import inference_size
from cass.text import encode_tokens, prompt_texts, tokenize
from tests.parity import gradient_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 640x480 synthetic 'photo' (smooth gradients plus shapes)."""
    return gradient_photo(480, 640, (100, 300, 200, 400))


@pytest.fixture(scope="module")
def features(model, photo):
    return model.encode(photo)


def test_encode_resizes_like_mmseg_and_returns_original_size(features):
    assert inference_size(480, 640, 336, 2048) == (336, 448)
    assert features.input_size == (336, 448)
    assert features.original_size == (480, 640)
    assert features.num_windows == 6  # 2 rows x 3 columns of 224 windows, stride 112
    assert features.grid == (14, 14)
    norms = features.patch_features.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_segment_needs_only_features_and_vocabulary(model, features, monkeypatch):
    """Same features, two label sets, no image access and no backbone call."""
    blob = features.to_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("segment touched an image backbone")

    monkeypatch.setattr(model.dino, "last_keys", forbidden)
    monkeypatch.setattr(model, "_clip_trunk", forbidden)
    monkeypatch.setattr(cass.image_input, "load_image", forbidden)  # the image side's input lives there
    restored = cass.ImageFeatures.from_bytes(blob, expected_fingerprint=model.fingerprint)
    a = model.segment(restored, cass.Vocabulary.from_names(["cat", "dog", "grass"]))
    b = model.segment(restored, cass.Vocabulary.from_spec("car,truck;road;sky;person"))
    assert a.labels.shape == b.labels.shape == (480, 640)
    assert a.class_names == ["cat", "dog", "grass"] and b.class_names == ["car", "road", "sky", "person"]
    assert set(np.unique(a.labels)) <= {0, 1, 2} and set(np.unique(b.labels)) <= {0, 1, 2, 3}
    assert a.pixel_counts.sum() == b.pixel_counts.sum() == 480 * 640


def test_features_contain_no_label_information(model, photo):
    """encode is deterministic and independent of any vocabulary used before."""
    f1 = model.encode(photo)
    model.segment(f1, cass.Vocabulary.from_names(["zebra", "boat"]))
    f2 = model.encode(photo)
    assert f1.to_bytes() == f2.to_bytes()


def test_serialisation_round_trip_is_exact(model, features):
    restored = cass.ImageFeatures.from_bytes(features.to_bytes(codec="raw"))
    voc = cass.Vocabulary.from_names(["a", "b"])
    s1, s2 = model.segment(features, voc), model.segment(restored, voc)
    np.testing.assert_array_equal(s1.labels, s2.labels)
    np.testing.assert_array_equal(s1.scores, s2.scores)


@pytest.mark.parametrize("blob", [b"", b"garbage", b"CASSFEAT\x05\x00\x00\x00{bad}"])
def test_corrupt_features_blob_is_a_clear_error(blob):
    with pytest.raises(cass.FeaturesFormatError):
        cass.ImageFeatures.from_bytes(blob)


def test_fingerprint_mismatch_is_rejected(features):
    with pytest.raises(cass.FeaturesFormatError, match="other weights"):
        cass.ImageFeatures.from_bytes(features.to_bytes(), expected_fingerprint="something-else")


def test_fingerprint_depends_on_image_params_only(model):
    assert model.with_preset(model.preset.replace(prob_thd=0.5, h_threshold=0.3)).fingerprint == model.fingerprint
    assert model.with_preset(model.preset.replace(slide_stride=100)).fingerprint != model.fingerprint


def test_probabilities_scores_and_threshold(model, features):
    voc = cass.Vocabulary.from_spec("cat,kitten;dog")
    seg = model.segment(features, voc, return_probs=True, output_size=(60, 80))
    assert seg.probs.shape == (2, 60, 80)
    assert np.all(seg.probs >= 0) and np.all(seg.probs <= 1)
    np.testing.assert_array_equal(seg.labels, seg.probs.argmax(0))
    for c in range(2):
        mask = seg.labels == c
        if mask.any():
            assert seg.scores[c] == pytest.approx(seg.probs[c][mask].mean(), rel=1e-5)
    # threshold above every probability: no label anywhere (no background class)
    params = model.preset.text.__class__(**{**model.preset.text.__dict__, "prob_thd": 1.0})
    none = model.segment(features, voc, params=params, output_size=(60, 80))
    assert (none.labels == -1).all() and none.pixel_counts.sum() == 0
    bg = model.segment(features, cass.Vocabulary.from_spec("sky;cat;dog", background=0), params=params,
                       output_size=(60, 80))
    assert (bg.labels == 0).all()


def test_tiled_stitching_equals_official_canvas_then_resize(model, features):
    """Stitcher (separable, tiled) == per-window upsample, canvas average, bilinear resize."""
    import torch.nn.functional as F

    from cass.head import Stitcher, cluster_queries, window_logits

    voc = cass.Vocabulary.from_names(["a", "b", "c"])
    text = model.text_features(voc)
    grids = window_logits(features, text, cluster_queries(text, 0.1), 0.25, 0.03, 2)
    h, w = features.input_size
    canvas, count = torch.zeros(3, h, w), torch.zeros(1, h, w)
    for g, (y1, y2, x1, x2) in zip(grids, features.windows.tolist()):
        canvas[:, y1:y2, x1:x2] += F.interpolate(g[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                 align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
    ref = F.interpolate((canvas / count)[None], size=(480, 640), mode="bilinear", align_corners=False)[0]
    st = Stitcher(features.windows.tolist(), features.grid, features.input_size, (480, 640))
    torch.testing.assert_close(st.tile(grids, 0, 480, 0, 640), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.tile(grids, 100, 131, 300, 377), ref[:, 100:131, 300:377], rtol=1e-5, atol=1e-5)
    full = model.segment(features, voc, return_probs=True)
    from cass.head import postprocess

    tiled = postprocess(grids, st, voc, 40.0, 0.0, True, max_tile_elems=5000)
    np.testing.assert_allclose(tiled.probs, full.probs, atol=1e-6)
    np.testing.assert_array_equal(tiled.labels, full.labels)


def test_adjust_text_batched_equals_per_cluster_loop(model, features):
    import torch.nn.functional as F

    from cass.head import adjust_text

    voc = cass.Vocabulary.from_names(["a", "b", "c", "d", "e"])
    text = model.text_features(voc)
    clusters = np.array([0, 1, 0, 2, 1])
    sims = features.global_vectors @ text.T
    got = adjust_text(text, features.patch_features, sims, clusters, 0.05, 2)
    for w in range(features.num_windows):  # the official loop, window by window
        ref = text.clone()
        for cid in range(3):
            members = np.flatnonzero(clusters == cid)
            best = int(members[np.argmax(sims[w].numpy()[members])])
            t = F.normalize(text[best], dim=0)
            top = torch.topk(features.patch_features[w] @ t, 2).indices
            m = F.normalize(features.patch_features[w][top].mean(0), dim=0)
            ref[best] = F.normalize(0.95 * t + 0.05 * m, dim=0)
        torch.testing.assert_close(got[w], ref, rtol=1e-6, atol=1e-6)


def test_text_tower_truncation_equals_full_open_clip_encode_text(model):
    tokens = tokenize(prompt_texts("traffic light"))
    ours = encode_tokens(model.clip, tokens)
    ref = model.clip.encode_text(tokens)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_text_cache_counts_each_prompt_once(model):
    before = model.text.encoded_prompts
    model.text_features(cass.Vocabulary.from_names(["unique-label-xyz", "another-unique-label"]))
    model.text_features(cass.Vocabulary.from_names(["another-unique-label", "unique-label-xyz"]))
    assert model.text.encoded_prompts - before == 2


# --- vocabularies -------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: cass.Vocabulary.from_names([]), "empty"),
    (lambda: cass.Vocabulary.from_names(["cat", "cat"]), "duplicate class"),
    (lambda: cass.Vocabulary.from_names(["cat", " "]), "non-empty"),
    (lambda: cass.Vocabulary.from_spec("cat,dog;dog"), "used by two classes"),
    (lambda: cass.Vocabulary.from_spec("cat,,dog"), "empty synonym"),
    (lambda: cass.Vocabulary.from_spec(" ; "), "empty"),
    (lambda: cass.Vocabulary.from_class_file("\n\n"), "empty"),
    (lambda: cass.Vocabulary.from_names(["a"], background=3), "background index"),
])
def test_bad_vocabularies_are_clear_errors(make, message):
    with pytest.raises(cass.VocabularyError, match=message):
        make()


def test_class_file_parsing_matches_official_rules():
    voc = cass.Vocabulary.from_class_file("background, wall\ncup, mug\na,b\n")
    assert voc.queries == ("background", "wall", "cup", "mug", "a,b")
    assert voc.query_class == (0, 0, 1, 1, 2)
    assert voc.background == 0


# --- images ------------------------------------------------------------------------------
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image", "not a readable image"),
    (_png(Image.new("RGB", (64, 64)))[:60], "truncated|not a readable"),
])
def test_bad_images_are_clear_errors(model, data, message):
    with pytest.raises(cass.ImageError, match=message):
        model.encode(data)


def test_missing_image_file(model, tmp_path):
    with pytest.raises(cass.ImageError, match="not found"):
        model.encode(tmp_path / "nope.jpg")


def test_extreme_aspect_ratio_is_padded_and_predicted_at_the_original_size(model):
    features = model.encode(np.zeros((2, 4000, 3), dtype=np.uint8))  # was refused (issue 9 item 9)
    assert features.original_size == (2, 4000) and features.valid_size is not None
    seg = model.segment(features, cass.Vocabulary.from_names(["a", "b"]))
    assert seg.labels.shape == (2, 4000)


def test_image_modes_are_converted():
    gray16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    for img in (gray16, rgba, Image.new("L", (5, 7)), Image.new("P", (5, 7))):
        arr = cass.load_image(_png(img))
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert (cass.load_image(_png(rgba)) == 255).all()  # transparent -> white


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert cass.load_image(buf.getvalue()).shape == (40, 20, 3)


def test_tiny_image_is_upscaled_and_segmented(model):
    seg = model.predict(np.full((1, 1, 3), 127, dtype=np.uint8), cass.Vocabulary.from_names(["x", "y"]))
    assert seg.labels.shape == (1, 1)


# --- weights -----------------------------------------------------------------------------
def test_wrong_weight_files_are_clear_errors(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    with pytest.raises(cass.WeightsError, match="DINO checkpoint"):
        cass.create_model(dino, dino)
    with pytest.raises(cass.WeightsError, match="not an official DINO"):
        cass.create_model(clip, clip)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(cass.WeightsError, match="not a readable checkpoint"):
        cass.create_model(junk, dino)
    with pytest.raises(cass.WeightsError, match="no such file"):
        cass.create_model(tmp_path / "missing.safetensors", dino)


def test_unreachable_named_source_fails_fast_with_offline_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path))

    def offline(url, target, **_):
        raise OSError("network is unreachable")

    with pytest.raises(cass.WeightsError) as err:
        weights_mod.resolve("openai", weights_mod.CLIP_SOURCES, "CLIP", download=offline)
    text = str(err.value)
    assert str(tmp_path / "ViT-B-16.pt") in text and "openaipublic" in text and "Offline" in text


def test_named_source_found_in_model_dir_without_network(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path))
    (tmp_path / "dino_vitbase8_pretrain.pth").write_bytes(b"x")

    def offline(url, target, **_):
        raise AssertionError("should not download")

    got = weights_mod.resolve("dino_vitb8", weights_mod.DINO_SOURCES, "DINO", download=offline)
    assert got.path == tmp_path / "dino_vitbase8_pretrain.pth"


def test_pth_and_training_checkpoint_formats_load(tiny_weights, tmp_path):
    from safetensors.torch import load_file

    clip, dino = tiny_weights
    sd = load_file(str(dino))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "ckpt.pth")
    torch.save(load_file(str(clip)), tmp_path / "clip.pt")
    m = cass.create_model(tmp_path / "clip.pt", tmp_path / "ckpt.pth")
    assert m.heads == 6 and m.dino.cfg.patch_size == 8 and m.patch_size == 16


def test_architecture_mismatch_is_a_clear_error(tiny_weights, tmp_path):
    from safetensors.torch import save_file

    from cass.backbones import DinoConfig, DinoViT

    clip, _ = tiny_weights
    small = DinoViT(DinoConfig(embed_dim=128, depth=1, heads=2, patch_size=8, grid=4, mlp_hidden=256))
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "dino_small.safetensors"))
    with pytest.raises(cass.WeightsError, match="same heads"):
        cass.create_model(clip, tmp_path / "dino_small.safetensors")


# --- engine API (issue 14) -----------------------------------------------------------------------
def test_public_encode_and_segment_have_no_parity_hooks():
    import inspect

    assert set(inspect.signature(cass.CASS.encode).parameters) == {"self", "image", "resize"}
    assert "trace" not in inspect.signature(cass.CASS.segment).parameters
    assert "extras" not in {f.name for f in __import__("dataclasses").fields(cass.ImageFeatures)}


def test_testing_entry_point_injects_pairing_and_traces(model, photo):
    from cass import testing

    small = photo[:224, :224]
    pairing = np.tile(np.arange(model.heads)[::-1], (1, 1))
    trace: dict = {}
    feats = testing.encode(model, small, resize=False, head_pairing=pairing, trace=trace)
    assert feats.head_pairing.tolist() == pairing.tolist() and "window0_dino_input" in trace
    seg_trace: dict = {}
    testing.segment(model, feats, cass.Vocabulary.from_spec("a;b"), trace=seg_trace)
    assert {"text_features", "cluster_info", "window0_logits"} <= set(seg_trace)


def test_create_model_threads_do_not_change_torch_globally(tiny_weights, photo):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    m = cass.create_model(*tiny_weights, threads=wanted)
    assert torch.get_num_threads() == before
    seen = []
    original = m._encode

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    m._encode = spy
    m.encode(photo[:224, :224], resize=False)
    assert seen == [wanted] and torch.get_num_threads() == before


def test_with_preset_has_its_own_timings(model, photo):
    view = model.with_preset("voc21")
    assert view.timings is not model.timings
    calls = model.timings.encode_calls
    view.encode(photo[:224, :224], resize=False)
    assert model.timings.encode_calls == calls and view.timings.encode_calls == 1
