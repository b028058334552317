"""Thin images (issue 9 item 9): a strip whose inference size has a side under one patch is padded to
the minimum inference size and its masks are cropped back to the original size; only 0 px is refused."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cass
from cass.head import Stitcher
from cass.features import ImageFeatures
from cass.images import ImageError, load_image, pad_to_min_side

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.fetch.images import LabelStudioAuth
from backend.controls.brush_rle import rle_to_mask
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeLabelStudio, ls_request, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")


def strip(height: int, width: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (220, 20, 20)
    img[:, width // 2:] = (20, 20, 220)
    return img


@pytest.mark.parametrize("shape", [(20, 4000), (4000, 20), (1, 5000)])
def test_thin_images_are_encoded_padded_and_segmented_at_their_original_size(model, shape):
    features = model.encode(strip(*shape))
    assert features.original_size == shape
    vh, vw = features.valid_size
    assert min(vh, vw) < 16 and features.input_size[0] >= vh and features.input_size[1] >= vw
    assert min(features.input_size) >= 16
    seg = model.segment(features, cass.Vocabulary.from_names(["red", "blue"]), return_probs=True)
    assert seg.labels.shape == shape and seg.probs.shape == (2, *shape)
    assert np.isfinite(seg.probs).all()
    restored = ImageFeatures.from_bytes(features.to_bytes())  # the cache keeps the padding
    assert restored.valid_size == features.valid_size


def test_ordinary_images_are_not_padded(model):
    assert model.encode(strip(48, 64)).valid_size is None


def test_stitcher_output_ignores_the_padded_part():
    windows, grid = [(0, 32, 0, 64)], (2, 4)
    base = Stitcher(windows, grid, (32, 64), (8, 64), valid_size=(8, 64))
    grids = torch.randn(1, 3, 2, 4)
    out = base.tile(grids, 0, 8, 0, 64)
    changed = grids.clone()
    changed[:, :, 1] += 100.0  # the grid row that covers input rows 16..31: padding only
    assert torch.allclose(base.tile(changed, 0, 8, 0, 64), out)
    plain = Stitcher(windows, grid, (32, 64), (8, 64))  # without valid_size: unchanged behaviour
    assert torch.allclose(plain.tile(grids, 0, 8, 0, 64),
                          Stitcher(windows, grid, (32, 64), (8, 64), valid_size=(32, 64)).tile(grids, 0, 8, 0, 64))


def test_padding_keeps_the_image_and_fills_with_the_mean_colour():
    rgb = strip(3, 50)
    padded = pad_to_min_side(rgb, 16, (122.771, 116.746, 104.094))
    assert padded.shape == (16, 50, 3)
    assert np.array_equal(padded[:3], rgb) and (padded[3:] == (123, 117, 104)).all()
    with pytest.raises(ImageError, match="empty size"):
        pad_to_min_side(np.zeros((0, 5, 3), np.uint8), 16, (0, 0, 0))


def test_zero_pixel_images_are_still_refused():
    with pytest.raises(ImageError):
        load_image(np.zeros((0, 40, 3), np.uint8))


def test_thin_png_through_the_app_is_predicted(model):
    ls = FakeLabelStudio()
    try:
        wide = ls.add_upload("/data/upload/1/wide.png", png_bytes(strip(20, 4000)))
        tall = ls.add_upload("/data/upload/1/tall.png", png_bytes(strip(4000, 20)))
        settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                            warmup_queue=0)
        client = create_app(settings, Predictor(model)).test_client()
        body = ls_request("predict")
        body["tasks"] = [{"id": 1, "data": {"image": wide}}, {"id": 2, "data": {"image": tall}}]
        resp = client.post("/predict", json=body)
    finally:
        ls.close()
        LabelStudioAuth._access.clear()
    assert resp.status_code == 200
    for prediction, (h, w) in zip(resp.get_json()["results"], [(20, 4000), (4000, 20)]):
        assert prediction.get("result"), prediction
        covered = np.zeros((h, w), bool)
        for region in prediction["result"]:
            assert (region["original_width"], region["original_height"]) == (w, h)
            covered |= rle_to_mask(region["value"]["rle"], h, w)
        assert covered.any()
