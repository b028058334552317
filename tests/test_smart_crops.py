"""backend.controls.crops.CropEncoder: the background worker of smart-rectangle crop encodes (real
thread; the encodes are plain callables)."""
from __future__ import annotations

import threading

import pytest

from backend.controls.crops import CropEncoder


def test_an_encode_runs_once_and_its_key_is_ready_after():
    crops, calls = CropEncoder(), []
    assert crops.submit("a", lambda: calls.append("a")) is True
    assert crops.wait(10) and crops.ready("a") and calls == ["a"]
    assert crops.submit("a", lambda: calls.append("again")) is False  # done: not again
    assert crops.wait(10) and calls == ["a"]


def test_a_full_queue_drops_new_crops_and_a_queued_key_is_not_queued_twice():
    crops, gate, calls = CropEncoder(pending=1), threading.Event(), []
    assert crops.submit("a", lambda: (gate.wait(10), calls.append("a")))
    assert crops.submit("a", lambda: calls.append("a2")) is False
    assert crops.submit("b", lambda: calls.append("b")) is False  # one pending at most
    gate.set()
    assert crops.wait(10) and calls == ["a"] and not crops.ready("b")


def test_a_failed_encode_is_not_ready_and_the_worker_goes_on():
    crops = CropEncoder()
    crops.submit("bad", lambda: 1 / 0)
    crops.submit("good", lambda: None)
    assert crops.wait(10)
    assert not crops.ready("bad") and crops.ready("good") and crops.failures == 1


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match=r"pending \(0\) and remember \(5\) must be >= 1"):
        CropEncoder(pending=0, remember=5)
