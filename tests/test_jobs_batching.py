"""Batched encodes in a chunk (CASS_JOB_BATCH; backend.jobs.batching) with fakes: FakeEngine has
``encode_many``, FakeCache is a dict with cass.cache's lookup methods, FakeBatchPredictor has
``Predictor``'s ``features``/``predict_task`` shape; Label Studio is tests.test_jobs.FakeProjects and
Redis is real."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import redis as redis_lib

from backend.config import Settings
from backend.fetch.images import ImageFetchError
from backend.jobs.queue import Jobs
from backend.jobs.runner import ChunkRun, WorkerContext
from backend.jobs.spec import JobSpec
from backend.jobs.store import JobStore
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401
from backend.controls.config import parse_controls
from backend.predict.pipeline import Pipeline
from backend.predict.projects import ProjectRegistry
from tests.test_jobs import FakePipeline, FakeProjects


class FakeFeatures:
    def __init__(self, image: bytes):
        self.image = image


class FakeEngine:
    """``encode``/``encode_many`` record their inputs; an image starting with b"bad" fails to decode."""

    fingerprint = "fake-fp"
    device = "cpu"

    def __init__(self):
        self.singles: list[bytes] = []
        self.batches: list[list[bytes]] = []

    def encode(self, image: bytes) -> FakeFeatures:
        self.singles.append(image)
        if image.startswith(b"bad"):
            raise ImageFetchError(f"{image.decode()}: not an image")
        return FakeFeatures(image)

    def encode_many(self, images: list[bytes]) -> list[FakeFeatures]:
        self.batches.append(list(images))
        if any(i.startswith(b"bad") for i in images):
            raise ValueError("cannot identify image file")
        return [FakeFeatures(i) for i in images]


class FakeCache:
    def __init__(self):
        self.store: dict = {}

    def key_for(self, image_bytes, fingerprint):
        return (fingerprint, image_bytes)

    def peek(self, image_bytes, fingerprint):
        return self.store.get((fingerprint, image_bytes))

    def get_or_compute(self, image_bytes, fingerprint, compute):
        key = (fingerprint, image_bytes)
        if key in self.store:
            return self.store[key], True
        self.store[key] = compute()
        return self.store[key], False


class FakeBatchPredictor:
    model_version = "cass-fake-1"

    def __init__(self):
        self.engine, self.cache = FakeEngine(), FakeCache()
        self.slots = threading.Lock()  # the inference slot (Predictor.slots)
        self.counters: Counter = Counter()

    def _count(self, name, n=1):
        self.counters[name] += n

    def features(self, image_bytes, info=None, prefill=None):
        found = prefill.take(image_bytes) if prefill is not None else None
        features, hit = found if found is not None else self.cache.get_or_compute(
            image_bytes, self.engine.fingerprint, lambda: self.engine.encode(image_bytes))
        self._count("cache_hits" if hit else "cache_misses")
        return features

    def predict_task(self, task, targets, fetch, info=None, prefill=None):
        features = self.features(fetch(targets[0].image_url(task), task["id"]), info, prefill)
        return {"result": [{"type": "brushlabels", "value": {"from": features.image.decode()}}], "score": 0.5,
                "model_version": self.model_version}


class UrlFetcher:
    """Each image's bytes are its URL (``bad`` ones decode-fail in FakeEngine)."""

    def __init__(self, bad=()):
        self.bad = set(bad)

    def fetch(self, url, task_id):
        return (b"bad:" if task_id in self.bad else b"") + url.encode()


@pytest.fixture
def conn(redis_url):  # noqa: F811
    c = redis_lib.Redis.from_url(redis_url)
    yield c
    c.close()


def run(conn, n: int, batch: int, bad=(), cached=()):
    projects, predictor = FakeProjects(n), FakeBatchPredictor()
    for t in cached:
        predictor.cache.store[("fake-fp", f"/data/upload/{t}.png".encode())] = FakeFeatures(b"cached")
    rec = Jobs(conn, projects).start(JobSpec(1), predictor.model_version)
    ctx = WorkerContext(FakePipeline(predictor), Settings(), projects, JobStore(conn), post_every=3, batch=batch,
                        prefetch=1, fetch=UrlFetcher(bad).fetch)
    counts = ChunkRun(ctx, rec["id"], list(range(1, n + 1))).run()
    return counts, projects, predictor, Jobs(conn, projects).get(rec["id"])


def test_batches_encode_only_cache_misses_and_every_task_is_predicted_once(conn):
    counts, projects, predictor, rec = run(conn, 7, batch=3, cached=(2,))
    assert counts == {"done": 7, "skipped": 0, "failed": 0, "cancelled": False}
    url = lambda t: f"/data/upload/{t}.png".encode()  # noqa: E731
    assert predictor.engine.batches == [[url(1), url(3)], [url(4), url(5), url(6)]]  # task 2 was a hit
    assert predictor.engine.singles == [url(7)]  # the last group of one: the one-image path
    assert all(len(p) == 1 for p in projects.preds.values())
    assert projects.preds[2][0]["result"][0]["value"]["from"] == "cached"
    assert projects.preds[5][0]["result"][0]["value"]["from"] == url(5).decode()
    assert ("fake-fp", url(5)) in predictor.cache.store  # stored for the other workers
    assert predictor.counters == Counter(cache_hits=1, cache_misses=6)


def test_a_bad_image_fails_alone_not_its_batch_mates(conn):
    counts, projects, predictor, rec = run(conn, 4, batch=4, bad=(2,))
    assert counts == {"done": 3, "skipped": 0, "failed": 1, "cancelled": False}
    assert len(predictor.engine.batches) == 1  # tried together, failed, then one by one
    assert sorted(predictor.engine.singles) == sorted(f"{p}/data/upload/{t}.png".encode()
                                                      for t, p in [(1, ""), (2, "bad:"), (3, ""), (4, "")])
    assert [len(projects.preds[t]) for t in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert projects.preds[2][0]["result"] == [] and projects.preds[2][0]["model_version"].startswith("error: ")
    assert "not an image" in rec["failed_tasks"][2]


def test_batch_1_never_calls_encode_many(conn):
    counts, projects, predictor, rec = run(conn, 3, batch=1)
    assert counts["done"] == 3 and predictor.engine.batches == [] and len(predictor.engine.singles) == 3


def test_worker_batch_setting_reaches_the_context():
    assert Settings.from_env({"CASS_JOB_BATCH": "6"}).jobs.batch_for("cpu") == 6
    assert Settings.from_env({}).jobs.batch_for("cuda:0") == 4


def test_real_engine_batches_two_images_per_backbone_call(conn, tmp_path, monkeypatch):
    """The real engine (tiny weights, cass.engine.CASS.encode_many), the real Predictor and its
    in-process feature cache; Label Studio is FakeProjects, images come from PngFetcher (a fake)."""
    import io

    import numpy as np
    from PIL import Image

    from backend.predict.loading import build_predictor
    from tests.parity import TINY_CLIP, TINY_DINO, fast_preset

    if not TINY_CLIP.is_file():
        pytest.skip(f"tiny weights not found under {TINY_CLIP.parent}")
    monkeypatch.delenv("REDIS_URL", raising=False)
    predictor = build_predictor(Settings(clip_weights=str(TINY_CLIP), threads=1, dino_weights=str(TINY_DINO),
                                         warmup=False, preset=str(fast_preset(tmp_path, "batch-fast"))))
    calls = {"many": [], "one": 0}
    real_many, real_one = predictor.engine.encode_many, predictor.engine.encode
    monkeypatch.setattr(predictor.engine, "encode_many",
                        lambda images, **kw: calls["many"].append(len(images)) or real_many(images, **kw))
    monkeypatch.setattr(predictor.engine, "encode",
                        lambda image, **kw: calls.__setitem__("one", calls["one"] + 1) or real_one(image, **kw))

    class PngFetcher:
        def fetch(self, url, task_id):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(task_id).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
                buf, "PNG")
            return buf.getvalue()

    projects = FakeProjects(4)
    rec = Jobs(conn, projects).start(JobSpec(1), predictor.model_version)
    pipeline = Pipeline(predictor, Settings(), ProjectRegistry(Settings()))
    ctx = WorkerContext(pipeline, Settings(), projects, JobStore(conn), post_every=4, batch=2, prefetch=1,
                        fetch=PngFetcher().fetch)
    counts = ChunkRun(ctx, rec["id"], [1, 2, 3, 4]).run()
    assert counts == {"done": 4, "skipped": 0, "failed": 0, "cancelled": False}
    assert calls == {"many": [2, 2], "one": 0}
    version = predictor.version_of(parse_controls(projects.label_config(1)))
    assert all(len(p) == 1 and p[0]["model_version"] == version for p in projects.preds.values())
