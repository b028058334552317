"""Cache warm-up queue (backend/predict/warmup.py): bounded, non-blocking submit, worker fills the cache."""
from __future__ import annotations

import logging
import threading

import pytest

import cass
from cass.cache import MemoryCache
from backend.predict.warmup import Warmer, render_prometheus
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401
from tests.test_cache import (FP, Compute, make, parse_metrics, png_bytes, run_thread,  # noqa: F401
                              same_features, small_model, synthetic, wait_until)


class FakeModel:
    """``fingerprint`` + ``encode(bytes)``; counts encodes; ``gate`` blocks them until opened."""

    fingerprint = FP

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.encoded: list[bytes] = []

    def encode(self, data: bytes):
        self.encoded.append(data)
        if data == b"undecodable":
            raise ValueError("cannot decode image")
        if self.gate is not None and not self.gate.wait(60):
            raise AssertionError("test gate never opened")
        return synthetic(seed=len(data))


def test_warmer_fills_the_cache_so_requests_hit(make):
    cache = make()
    model = FakeModel()
    images = {f"http://ls/data/{i}.png": f"image {i}".encode() for i in range(3)}
    warmer = Warmer(cache, model, images.__getitem__, max_queue=10)
    try:
        assert all(warmer.submit(url) for url in images)
        assert warmer.join(60)
        assert sorted(model.encoded) == sorted(images.values())
        for data in images.values():
            c = Compute()
            features, hit = cache.get_or_compute(data, FP, c)
            assert hit and c.calls == 0 and same_features(features, synthetic(seed=len(data)))
        stats = warmer.stats()
        assert (stats["submitted"], stats["computed"], stats["done"], stats["failed"], stats["queued"]) == \
            (3, 3, 3, 0, 0)
        assert warmer.submit(next(iter(images)))  # again: already cached, counted as a hit
        assert warmer.join(60) and warmer.stats()["hits"] == 1 and len(model.encoded) == 3
    finally:
        warmer.close()


def test_submit_never_blocks_and_refuses_when_the_queue_is_full():
    gate = threading.Event()

    def fetch(url: str) -> bytes:
        if url == "u0" and not gate.wait(60):
            raise AssertionError("test gate never opened")
        return url.encode()

    model = FakeModel()
    warmer = Warmer(MemoryCache(), model, fetch, max_queue=2)
    try:
        assert warmer.submit("u0")
        wait_until(lambda: warmer.stats()["in_progress"] == 1, "worker busy with u0")
        assert warmer.submit("u1") and warmer.submit("u2")
        thread, out = run_thread(lambda: warmer.submit("u3"))  # queue full
        thread.join(30)
        assert not thread.is_alive(), "submit blocked on a full queue"
        assert out["result"] is False
        assert warmer.submit("u1") is True  # already queued: accepted, not queued twice
        stats = warmer.stats()
        assert (stats["queued"], stats["rejected"], stats["duplicates"], stats["submitted"]) == (2, 1, 1, 3)
        gate.set()
        assert warmer.join(60)
        assert model.encoded == [b"u0", b"u1", b"u2"]
        assert warmer.submit("u3")  # room again
        assert warmer.join(60) and model.encoded[-1] == b"u3"
    finally:
        gate.set()
        warmer.close()


def test_failures_are_counted_and_the_worker_continues(caplog):
    def fetch(url: str) -> bytes:
        if url == "missing":
            raise OSError("404 Not Found")
        return url.encode()

    cache = MemoryCache()
    warmer = Warmer(cache, FakeModel(), fetch)
    try:
        with caplog.at_level(logging.WARNING, logger="cass.warmup"):
            for url in ("missing", "undecodable", "good"):
                assert warmer.submit(url)
            assert warmer.join(60)
        stats = warmer.stats()
        assert (stats["failed"], stats["computed"], stats["done"]) == (2, 1, 3)
        assert sum("warm-up of" in r.getMessage() for r in caplog.records) == 2
        _, hit = cache.get_or_compute(b"good", FP, Compute())
        assert hit
    finally:
        warmer.close()


def test_prediction_during_warm_up_of_the_same_image_waits_instead_of_encoding(make):
    cache = make()
    gate = threading.Event()
    model = FakeModel(gate=gate)
    warmer = Warmer(cache, model, lambda url: b"image bytes")
    try:
        assert warmer.submit("http://ls/a.png")
        wait_until(lambda: len(model.encoded) == 1, "warmer encoding")
        thread, out = run_thread(lambda: cache.get_or_compute(b"image bytes", FP,
                                                              lambda: model.encode(b"image bytes")))
        wait_until(lambda: cache.stats()["waiting"] == 1, "prediction waiting for the warm-up")
        gate.set()
        thread.join(60)
        assert warmer.join(60)
        features, hit = out["result"]
        assert hit and len(model.encoded) == 1 and same_features(features, synthetic(seed=11))
    finally:
        gate.set()
        warmer.close()


def test_warmed_image_is_segmented_without_image_towers(small_model):
    cache = MemoryCache()
    img = png_bytes(5)
    warmer = Warmer(cache, small_model, lambda url: img)
    try:
        assert warmer.submit("http://ls/photo.png") and warmer.join(120)
        assert warmer.stats()["computed"] == 1
    finally:
        warmer.close()
    calls = []
    handle = small_model.clip.visual.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        features, hit = cache.get_or_compute(img, small_model.fingerprint, lambda: small_model.encode(img))
        seg = small_model.segment(features, cass.Vocabulary.from_spec("cat;dog"))
    finally:
        handle.remove()
    assert hit and calls == [] and seg.labels.shape == (48, 64)


def test_close_drops_queued_urls_stops_workers_and_refuses_new_ones():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    warmer = Warmer(MemoryCache(), model, lambda url: url.encode(), max_queue=5, workers=2)
    assert warmer.submit("a") and warmer.submit("b")
    wait_until(lambda: len(model.encoded) == 2, "both workers busy")
    assert warmer.submit("c") and warmer.submit("d")
    closer, _ = run_thread(lambda: warmer.close(cancel_pending=True, timeout=60))
    wait_until(lambda: warmer._pending == {"a", "b"}, "queued URLs dropped")
    gate.set()
    closer.join(60)
    assert not closer.is_alive()
    assert not any(t.is_alive() for t in warmer._threads)
    assert sorted(model.encoded) == [b"a", b"b"]  # c and d were dropped
    assert warmer.submit("e") is False
    assert warmer.join(1)


def test_prometheus_lines_and_arguments():
    warmer = Warmer(MemoryCache(), FakeModel(), lambda url: url.encode(), max_queue=1)
    try:
        assert warmer.submit("x") and warmer.join(60)
        metrics = parse_metrics(render_prometheus(warmer))
        assert metrics["cass_warmup_submitted_total"] == 1 and metrics["cass_warmup_computed_total"] == 1
        assert metrics["cass_warmup_queued"] == 0 and metrics["cass_warmup_rejected_total"] == 0
    finally:
        warmer.close()
    with pytest.raises(ValueError):
        Warmer(MemoryCache(), FakeModel(), lambda url: b"", max_queue=0)
