"""Brush RLE (label-studio-sdk's encoder): decoding gives back the mask; regions per label present."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backend.controls.label_parse import parse_label_config
from backend.controls.labels import NothingRule
from backend.controls.brush_rle import brush_regions, mask_to_rle, rle_to_mask
from cass.features import Segmentation
from tests.backend_fixtures import BRUSH_CONFIG


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 23), st.integers(1, 31))))
def test_rle_round_trip_random_masks(mask):
    h, w = mask.shape
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), h, w), mask)


@pytest.mark.parametrize("shape", [(1, 1), (300, 400), (257, 1031)])
def test_rle_round_trip_shapes_and_long_runs(shape):
    rng = np.random.default_rng(shape[0])
    mask = np.zeros(shape, dtype=bool)
    mask[: shape[0] // 2] = True  # one run longer than 2**16 values for the large shapes
    mask[rng.integers(0, shape[0], 50), rng.integers(0, shape[1], 50)] ^= True
    h, w = shape
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), h, w), mask)
    assert rle_to_mask(mask_to_rle(np.ones(shape, bool)), h, w).all()
    assert not rle_to_mask(mask_to_rle(np.zeros(shape, bool)), h, w).any()


def test_rle_decode_checks_the_size():
    rle = mask_to_rle(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match=r"the RLE declares 80 values, expected 5x5x4 = 100: refused before decoding"):
        rle_to_mask(rle, 5, 4 + 1)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.ones((2, 2, 2)))


def _segmentation(labels, names, background=None):
    n = len(names)
    counts = np.array([(labels == c).sum() for c in range(n)])
    scores = np.array([0.5 + 0.1 * c if counts[c] else 0.0 for c in range(n)], dtype=np.float32)
    return Segmentation(labels=labels, scores=scores, pixel_counts=counts, class_names=names)


def test_one_region_per_label_present_at_the_segmentation_size():
    (target,) = parse_label_config(BRUSH_CONFIG)
    labels = np.full((7, 11), -1, dtype=np.int32)
    labels[:3, :4] = 0
    labels[5:, 6:] = 2
    seg = _segmentation(labels, target.vocabulary.names)
    regions, score_sum, pixels = brush_regions(seg, target)
    assert [r["value"]["brushlabels"] for r in regions] == [["red thing"], ["blue thing"]]
    for region, cls in zip(regions, (0, 2)):
        assert region["type"] == "brushlabels"
        assert (region["from_name"], region["to_name"]) == ("tag", "image")
        assert (region["original_width"], region["original_height"]) == (11, 7)
        assert region["value"]["format"] == "rle"
        assert np.array_equal(rle_to_mask(region["value"]["rle"], 7, 11), labels == cls)
        assert region["score"] == pytest.approx(0.5 + 0.1 * cls, abs=1e-4)
    assert pixels == 12 + 10
    assert score_sum == pytest.approx(12 * 0.5 + 10 * 0.7, rel=1e-5)
    assert len({r["id"] for r in regions}) == 2


def test_background_class_never_becomes_a_region():
    (target,) = parse_label_config(BRUSH_CONFIG, NothingRule(background_prompts=("wall",)))
    labels = np.array([[0, 3], [3, 3]], dtype=np.int32)
    regions, _, pixels = brush_regions(_segmentation(labels, target.vocabulary.names), target)
    assert [r["value"]["brushlabels"] for r in regions] == [["red thing"]]
    assert pixels == 1
