"""Least-confident first: a prediction's ``score`` is the mean top-1 probability over every pixel of the
image (unlabelled pixels count 0, background-class pixels their probability), so sorting by score
puts the images the model is least sure of first. Fake engine (tests.backend_fixtures.FakeEngine)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.controls.label_parse import parse_label_config
from backend.controls.labels import NothingRule
from backend.predict.predictor import Predictor
from tests.backend_fixtures import BRUSH_CONFIG, FakeEngine, png_bytes


def image(confident_cols: int, width: int = 8) -> bytes:
    rgb = np.zeros((2, width, 3), np.uint8)
    rgb[:, :confident_cols, 0] = 255          # red at p = 1.0
    rgb[:, confident_cols:, 1] = 61           # green at p = 0.239: below a 0.5 threshold, unlabelled
    return png_bytes(rgb)


def predict(images: dict[str, bytes], rule=NothingRule(threshold=0.5), config=BRUSH_CONFIG):
    targets = parse_label_config(config, rule)
    tasks = [{"id": i, "data": {"image": name}} for i, name in enumerate(images)]
    return Predictor(FakeEngine()).predict(tasks, targets, lambda url, task_id: images[url])


def test_unlabelled_pixels_lower_the_score():
    (pred,) = predict({"half.png": image(4)})
    assert [r["score"] for r in pred["result"]] == pytest.approx([1.0])  # the region: its own pixels
    assert pred["score"] == pytest.approx(0.5, abs=1e-4)  # the image: 8 of 16 pixels sure, 8 unlabelled


def test_background_pixels_count_with_their_probability():
    config = BRUSH_CONFIG.replace('<Label value="blue thing"/>', "")
    (pred,) = predict({"half.png": image(4)}, NothingRule(threshold=0.5, background_prompts=("sky",)), config)
    # the fake engine puts low pixels into the background class; its pixels' mean p is 61/255
    assert pred["score"] == pytest.approx((8 * 1.0 + 8 * 61 / 255) / 16, abs=1e-4)


def test_sorting_by_score_puts_the_least_sure_first():
    images = {f"{letter}{k}.png": image(k) for letter, k in zip("abcd", (7, 1, 5, 3))}
    preds = predict(images)
    order = [name for _, name in sorted(zip([p["score"] for p in preds], images))]
    assert order == ["b1.png", "d3.png", "c5.png", "a7.png"]
