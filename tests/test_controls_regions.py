"""Regions an annotator keeps (issue 22): specks merged into their surroundings on the label map
before any adapter (brush and polygon agree), no degenerate polygons, ``cass_min_area`` /
``cass_instances`` on both tags, and ``CASS_MIN_REGION_AREA``. Label maps are built here, not by a model.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ConfigError, Settings
from backend.controls import parse_controls, regions_for
from backend.controls.brush_rle import rle_to_mask
from backend.controls.labels import LabelConfigError
from backend.controls.polygon import component_polygons, rasterize
from backend.controls.region_options import MinArea, RegionDefaults
from backend.controls.specks import merge_specks
from cass.features import Segmentation

NAMES = ["a", "b", "c"]


def config(tag: str, **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return (f'<View><Image name="image" value="$image"/><{tag} name="out" toName="image"{extra}>'
            f'<Label value="a"/><Label value="b"/><Label value="c"/></{tag}></View>')


def target(tag: str = "BrushLabels", **attrs: str):
    return parse_controls(config(tag, **attrs)).outputs[0]


def segmentation(labels: np.ndarray, probs: np.ndarray | None = None) -> Segmentation:
    counts = np.array([(labels == c).sum() for c in range(3)], np.int64)
    return Segmentation(labels=labels, scores=np.array([0.75, 0.5, 0.25], np.float32), pixel_counts=counts,
                        class_names=NAMES, probs=probs)


def masks_of(regions: list[dict], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Label name -> union of its regions' masks (brush RLE or rasterised polygon)."""
    h, w = shape
    out: dict[str, np.ndarray] = {}
    for r in regions:
        value = r["value"]
        name = (value.get("brushlabels") or value.get("polygonlabels"))[0]
        mask = rle_to_mask(value["rle"], h, w) if "rle" in value else rasterize(value["points"], w, h)
        out[name] = out.get(name, np.zeros(shape, bool)) | mask
    return out


def speck_map() -> np.ndarray:
    """40x40: "a" left, "b" right; a 2x2 "c" speck inside "a", a 3x3 "a" speck inside "b", and a 2x2 "b"
    speck in a 6x6 hole of nothing inside "a"."""
    labels = np.zeros((40, 40), np.int32)
    labels[:, 20:] = 1
    labels[5:7, 5:7] = 2        # c in a  -> a
    labels[10:13, 30:33] = 0    # a in b  -> b
    labels[25:31, 5:11] = -1    # a hole of nothing in a ...
    labels[27:29, 7:9] = 1      # ... holding a b speck surrounded by nothing -> dropped
    return labels


def expected_after_merge() -> np.ndarray:
    labels = np.zeros((40, 40), np.int32)
    labels[:, 20:] = 1
    labels[25:31, 5:11] = -1
    return labels


# --- the label map -------------------------------------------------------------------------------
def test_merge_specks_golden():
    out = merge_specks(speck_map(), 16)
    assert out.dtype == np.int32 and out.shape == (40, 40)
    assert np.array_equal(out, expected_after_merge())


def test_merge_specks_border_majority_and_chains():
    labels = np.full((30, 30), 1, np.int32)
    labels[:, :12] = 0
    labels[10:13, 11:14] = 2  # 9 px of c across the a/b edge: its border holds 7 a pixels, 9 b pixels -> b
    out = merge_specks(labels, 16)
    assert (out[10:13, 11:14] == 1).all() and (out != 2).all()
    chain = np.zeros((20, 20), np.int32)
    chain[8:10, 8:10] = 1   # b speck next to ...
    chain[8:10, 10:12] = 2  # ... a c speck: both inside a -> both a
    assert (merge_specks(chain, 16) == 0).all()


def test_merge_specks_keeps_everything_at_min_area_0_or_1_and_on_thumbnails():
    labels = speck_map()
    assert np.array_equal(merge_specks(labels, 0), labels)
    assert np.array_equal(merge_specks(labels, 1), labels)
    tiny = np.array([[0, 1], [2, 2]], np.int32)  # 4 px: every component is under 16 px
    assert np.array_equal(merge_specks(tiny, 16), tiny)  # thumbnails keep their regions


def test_merge_specks_is_vectorised_on_large_maps():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 3, (256, 256)).astype(np.int32), 8, 0), 8, 1)  # 2048x2048
    labels[rng.integers(0, 2048, 5000), rng.integers(0, 2048, 5000)] = 2
    import time
    t0 = time.perf_counter()
    out = merge_specks(labels, 16)
    assert time.perf_counter() - t0 < 10.0
    assert out.shape == labels.shape


# --- adapters agree ------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["BrushLabels", "PolygonLabels"])
def test_specks_merged_before_the_adapter(tag):
    labels = speck_map()
    regions, score_sum, pixels = regions_for(segmentation(labels), target(tag, cass_tolerance="0"))
    got = masks_of(regions, labels.shape)
    want = expected_after_merge()
    assert sorted(got) == ["a", "b"]  # the c specks are gone
    for index, name in enumerate(["a", "b"]):
        if tag == "BrushLabels":
            assert np.array_equal(got[name], want == index), name
        inter = (got[name] & (want == index)).sum()
        assert inter / (got[name] | (want == index)).sum() >= 0.98, name
    assert pixels == int((want >= 0).sum())
    assert score_sum == pytest.approx(0.75 * (want == 0).sum() + 0.5 * (want == 1).sum(), rel=1e-5)


@pytest.mark.parametrize("tag", ["BrushLabels", "PolygonLabels"])
def test_min_area_attribute_in_pixels_and_percent(tag):
    labels = speck_map()
    kept = regions_for(segmentation(labels), target(tag, cass_min_area="1"))[0]
    assert "c" in masks_of(kept, labels.shape)
    merged = regions_for(segmentation(labels), target(tag, cass_min_area="0.3%"))[0]  # 4.8 px of 1600
    names = masks_of(merged, labels.shape)
    assert "c" not in names  # the 4 px c specks are under 4.8 px
    assert names["a"][10:13, 30:33].all()  # the 9 px "a" speck is not
    assert not names["b"][27:29, 7:9].any()  # the 4 px "b" speck in nothing is dropped


def test_polygon_never_emits_two_points_or_zero_area():
    labels = np.full((60, 300), -1, np.int32)
    labels[38, 289:300] = 0   # a one-pixel line: the 2-point "polygon" of the issue
    labels[10:12, 10:40] = 1  # two pixels high: area 29 px², kept
    regions, _, pixels = regions_for(segmentation(labels), target("PolygonLabels", cass_min_area="1"))
    assert [r["value"]["polygonlabels"] for r in regions] == [["b"]]
    for r in regions:
        pts = np.array(r["value"]["points"]) / 100 * [300, 60]
        assert len({tuple(p) for p in pts.round(6)}) >= 3
        x, y = pts[:, 0], pts[:, 1]
        assert 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) >= 1.0
    assert pixels == 60
    mask = labels == 0
    assert component_polygons(mask, 1.0, 1) == []
    diagonal = np.eye(20, dtype=bool)
    assert component_polygons(diagonal, 0.0, 1) == []


# --- instances -----------------------------------------------------------------------------------
def two_blobs() -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((30, 40), -1, np.int32)
    labels[2:12, 2:12] = 0
    labels[15:28, 20:38] = 0
    labels[2:8, 25:35] = 1
    probs = np.zeros((3, 30, 40), np.float32)
    probs[0, 2:12, 2:12] = 0.9
    probs[0, 15:28, 20:38] = 0.6
    probs[1] = 0.4
    return labels, probs


@pytest.mark.parametrize("tag", ["BrushLabels", "PolygonLabels"])
def test_instances_one_region_per_component_with_its_own_score(tag):
    labels, probs = two_blobs()
    seg = segmentation(labels, probs)
    plain = regions_for(seg, target(tag))[0]
    split, score_sum, pixels = regions_for(seg, target(tag, cass_instances="true"))
    if tag == "BrushLabels":
        assert [r["value"]["brushlabels"] for r in plain] == [["a"], ["b"]]
    assert [(r["value"].get("brushlabels") or r["value"]["polygonlabels"])[0] for r in split] == ["a", "a", "b"]
    assert [r["score"] for r in split] == [0.9, 0.6, 0.4]
    assert pixels == int((labels >= 0).sum())
    assert score_sum == pytest.approx(0.9 * 100 + 0.6 * 13 * 18 + 0.4 * 60, rel=1e-5)
    no_probs = regions_for(segmentation(labels), target(tag, cass_instances="true"))[0]
    assert [r["score"] for r in no_probs] == [0.75, 0.75, 0.5]  # the class score without probabilities


# --- parsing and settings ------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["BrushLabels", "PolygonLabels"])
def test_parsed_attributes_and_defaults(tag):
    plain = target(tag)
    assert plain.min_area == MinArea(16.0) and plain.instances is False
    t = target(tag, cass_min_area="0.05%", cass_instances="true")
    assert t.min_area == MinArea(0.05, percent=True) and t.instances is True
    assert t.min_area.pixels(2000, 1000) == pytest.approx(1000.0)
    assert target(tag, cass_min_area="40").min_area.pixels(10, 10) == 40.0
    other = parse_controls(config(tag), regions=RegionDefaults(MinArea(0.1, percent=True))).outputs[0]
    assert other.min_area == MinArea(0.1, percent=True)


@pytest.mark.parametrize("tag", ["BrushLabels", "PolygonLabels"])
@pytest.mark.parametrize("attr, value, message", [
    ("cass_min_area", "x", "is not a number of pixels or a percent"),
    ("cass_min_area", "-3", "must be >= 0"),
    ("cass_min_area", "150%", "percent must be in"),
    ("cass_min_area", "nan", "must be >= 0"),
    ("cass_instances", "maybe", "is not a boolean"),
])
def test_bad_region_attributes_are_named(tag, attr, value, message):
    with pytest.raises(LabelConfigError, match=rf"<{tag} name='out'> {attr} = '{value}' .*{message}"):
        parse_controls(config(tag, **{attr: value}))


def test_min_region_area_setting():
    assert Settings.from_env({}).regions == RegionDefaults(MinArea(16.0))
    assert Settings.from_env({"CASS_MIN_REGION_AREA": "0.05%"}).regions.min_area == MinArea(0.05, True)
    assert Settings.from_env({"CASS_MIN_REGION_AREA": "0"}).regions.min_area == MinArea(0.0)
    with pytest.raises(ConfigError, match="CASS_MIN_REGION_AREA = 'big'"):
        Settings.from_env({"CASS_MIN_REGION_AREA": "big"})


def test_a_speck_bordered_by_a_speck_and_nothing_waits_for_it():
    labels = np.full((30, 30), -1, np.int32)
    labels[:, :15] = 0
    labels[10:13, 15:17] = 1  # b speck touching a ...
    labels[10:13, 17:19] = 2  # ... and a c speck touching only b and nothing: takes b's new class, a
    out = merge_specks(labels, 16)
    assert (out[10:13, 15:19] == 0).all()
