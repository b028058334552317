"""Feature cache (cass/cache/__init__.py): the same tests against the in-process LRU and a real redis-server,
then what only one backend has (LRU bounds, Redis TTLs, outages, cross-process locking)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import cass
from backend.ops.cache_metrics import render_prometheus
from cass.cache import FeatureCache, MemoryCache, RedisCache, feature_key, make_cache, text_cache_key
from cass.cache.settings import make_cache_from_env, parse_size
from cass.features import FEATURES_FORMAT_VERSION, FeaturesFormatError, ImageFeatures
from cass.lru import ByteLRU
from cass.text import TextEncoder
from tests.redis_fixtures import free_port, redis_server, redis_server_fn, redis_url  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
FP = "f" * 24


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def synthetic(seed: int = 0, fingerprint: str = FP, windows: int = 1, dim: int = 32, heads: int = 6):
    """Small ImageFeatures with random content (no model needed)."""
    g = torch.Generator().manual_seed(seed)
    return ImageFeatures(
        patch_features=F.normalize(torch.randn(windows, 49, dim, generator=g), dim=-1),
        global_vectors=F.normalize(torch.randn(windows, dim, generator=g), dim=-1),
        windows=torch.tensor([[0, 112, 0, 112]] * windows, dtype=torch.int64),
        grid=(7, 7), input_size=(112, 112), original_size=(100, 100),
        head_pairing=torch.stack([torch.randperm(heads, generator=g) for _ in range(windows)]),
        matching_cost=torch.rand(windows, heads, heads, generator=g), fingerprint=fingerprint)


def same_features(a: ImageFeatures, b: ImageFeatures) -> bool:
    """Bitwise equal arrays (and dtypes) and equal metadata, as the cache stores them (format v2:
    float16 features; rounding stored features again changes nothing)."""
    a, b = ImageFeatures.from_bytes(a.to_bytes()), ImageFeatures.from_bytes(b.to_bytes())
    for name in ImageFeatures._ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype != y.dtype or x.shape != y.shape or x.numpy().tobytes() != y.numpy().tobytes():
            return False
    return ((a.grid, a.input_size, a.original_size, a.fingerprint) ==
            (b.grid, b.input_size, b.original_size, b.fingerprint))


class Compute:
    """A counting compute function; with ``gate`` it blocks until the test opens it."""

    def __init__(self, features: ImageFeatures | None = None, gate: threading.Event | None = None):
        self.features = features if features is not None else synthetic()
        self.gate = gate
        self.calls = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> ImageFeatures:
        with self._lock:
            self.calls += 1
        self.started.set()
        if self.gate is not None and not self.gate.wait(60):
            raise AssertionError("test gate never opened")
        return self.features


def wait_until(predicate, what: str, timeout_s: float = 60.0) -> None:
    """Synchronisation point (not a timing assertion): fail only if it never happens."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


def run_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def png_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def make(request):
    """``make(**options)`` -> a cache of the parametrised backend (Redis: a flushed real server)."""
    made = []

    def factory(**options):
        url = request.getfixturevalue("redis_url") if request.param == "redis" else None
        cache = make_cache(url, **options)
        made.append(cache)
        return cache

    factory.backend = request.param
    yield factory
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make):
    return make()


@pytest.fixture(scope="module")
def small_model(tiny_weights):
    """Tiny-weight engine with a small inference size (one window): fast encodes."""
    preset = cass.load_preset("default").replace(short_side=112, long_side=224)
    return cass.create_model(*tiny_weights, preset=preset, device="cpu")


# ---------------------------------------------------------------------------------------------
# both backends
# ---------------------------------------------------------------------------------------------
def test_implements_the_interface(cache):
    assert isinstance(cache, FeatureCache)
    assert cache.health()["backend"] == cache.stats()["backend"] in ("memory", "redis")
    assert cache.health()["reachable"] is True


def test_miss_then_hit_computes_once(cache):
    c = Compute()
    first, hit1 = cache.get_or_compute(b"image", FP, c)
    second, hit2 = cache.get_or_compute(b"image", FP, c)
    assert (hit1, hit2, c.calls) == (False, True, 1)
    assert same_features(first, c.features) and same_features(second, c.features)
    assert second is not first  # a hit is a private copy


def test_hit_segments_bitwise_like_miss(cache, small_model):
    img = png_bytes(1)
    fp = small_model.fingerprint
    miss, was_hit = cache.get_or_compute(img, fp, lambda: small_model.encode(img))
    assert not was_hit
    hit, was_hit = cache.get_or_compute(img, fp, lambda: pytest.fail("a hit must not encode"))
    assert was_hit
    assert miss.patch_features.dtype == hit.patch_features.dtype == torch.float32
    assert same_features(miss, hit)
    vocab = cass.Vocabulary.from_spec("cat,kitten;dog;grass")
    a = small_model.segment(miss, vocab, return_probs=True)
    b = small_model.segment(hit, vocab, return_probs=True)
    assert a.labels.tobytes() == b.labels.tobytes()
    assert a.scores.tobytes() == b.scores.tobytes()
    assert a.pixel_counts.tobytes() == b.pixel_counts.tobytes()
    assert a.probs.tobytes() == b.probs.tobytes()


def test_label_swap_on_cached_image_runs_neither_image_tower(cache, small_model, monkeypatch):
    counts = {"clip": 0, "dino": 0}

    def count_clip(*_):
        counts["clip"] += 1

    real_last_keys = small_model.dino.last_keys

    def counting_last_keys(*args, **kwargs):
        counts["dino"] += 1
        return real_last_keys(*args, **kwargs)

    handle = small_model.clip.visual.conv1.register_forward_hook(count_clip)
    monkeypatch.setattr(small_model.dino, "last_keys", counting_last_keys)
    img, fp = png_bytes(2), small_model.fingerprint

    def request(spec: str):
        features, was_hit = cache.get_or_compute(img, fp, lambda: small_model.encode(img))
        return small_model.segment(features, cass.Vocabulary.from_spec(spec)), was_hit

    try:
        first, hit = request("cat;dog")
        assert not hit and counts["clip"] >= 1 and counts["dino"] >= 1  # the counters see the towers
        before = dict(counts)
        second, hit = request("tree;sky;road")
        assert hit and counts == before
        assert second.class_names == ["tree", "sky", "road"]
        assert second.labels.shape == first.labels.shape == (48, 64)
    finally:
        handle.remove()


def test_key_is_image_digest_plus_fingerprint(cache):
    img = b"encoded picture"
    key = cache.key_for(img, FP)
    assert key == feature_key(hashlib.sha256(img).hexdigest(), FP)
    assert hashlib.sha256(img).hexdigest() in key and FP in key
    c = Compute()
    cache.get_or_compute(img, FP, c)
    _, hit = cache.get_or_compute(bytes(bytearray(img)), FP, c)  # same bytes from another URL
    assert hit and c.calls == 1
    _, hit = cache.get_or_compute(img + b" ", FP, c)  # other bytes
    assert not hit and c.calls == 2
    other = Compute(synthetic(fingerprint="e" * 24))  # other weights / image parameters
    _, hit = cache.get_or_compute(img, "e" * 24, other)
    assert not hit and other.calls == 1


def test_text_side_params_share_entries_image_side_params_do_not(cache, small_model):
    img, fp = b"picture", small_model.fingerprint
    cache.get_or_compute(img, fp, Compute(synthetic(fingerprint=fp)))
    text_changed = small_model.with_preset(small_model.preset.replace(prob_thd=0.5, logit_scale=10.0, topk=3))
    assert text_changed.fingerprint == fp
    c = Compute(synthetic(fingerprint=fp))
    _, hit = cache.get_or_compute(img, text_changed.fingerprint, c)
    assert hit and c.calls == 0
    image_changed = small_model.with_preset(small_model.preset.replace(slide_stride=56))
    assert image_changed.fingerprint != fp
    c = Compute(synthetic(fingerprint=image_changed.fingerprint))
    _, hit = cache.get_or_compute(img, image_changed.fingerprint, c)
    assert not hit and c.calls == 1


def _future_version(blob: bytes) -> bytes:
    current = f'"version": {FEATURES_FORMAT_VERSION},'.encode()
    assert current in blob
    return blob.replace(current, b'"version": 9,', 1)


CORRUPTIONS = {
    "garbage": lambda blob: b"not a features blob",
    "truncated": lambda blob: blob[: len(blob) // 2],
    "other_fingerprint": lambda blob: synthetic(fingerprint="e" * 24).to_bytes(),
    "other_format_version": _future_version,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_unreadable_entry_is_recomputed_and_overwritten(cache, corruption):
    img = b"image"
    key = cache.key_for(img, FP)
    good = synthetic().to_bytes()
    bad = CORRUPTIONS[corruption](good)
    with pytest.raises(FeaturesFormatError):
        ImageFeatures.from_bytes(bad, expected_fingerprint=FP)
    cache._store(key, bad)
    assert cache._load(key) == bad
    c = Compute()
    features, hit = cache.get_or_compute(img, FP, c)
    assert not hit and c.calls == 1 and same_features(features, c.features)
    assert cache._load(key) == good
    assert cache.stats()["corrupt"] == 1
    _, hit = cache.get_or_compute(img, FP, c)
    assert hit and c.calls == 1


def test_concurrent_requests_for_one_image_compute_once(cache):
    gate = threading.Event()
    c = Compute(gate=gate)
    runs = [run_thread(lambda: cache.get_or_compute(b"image", FP, c)) for _ in range(4)]
    wait_until(lambda: c.started.is_set() and cache.stats()["waiting"] == 3,
               "three requests waiting for the one computation")
    gate.set()
    for thread, _ in runs:
        thread.join(60)
    outs = [out for _, out in runs]
    assert all("result" in out for out in outs), outs
    assert c.calls == 1
    assert sorted(out["result"][1] for out in outs) == [False, True, True, True]
    assert all(same_features(out["result"][0], c.features) for out in outs)
    stats = cache.stats()
    assert (stats["misses"], stats["hits"], stats["coalesced"], stats["computing"]) == (1, 3, 3, 0)


def test_failed_computation_is_not_cached_and_waiting_requests_retry(cache):
    gate = threading.Event()
    calls = []

    def compute():
        calls.append(1)
        if len(calls) == 1:
            gate.wait(60)
            raise RuntimeError("encode failed")
        return synthetic()

    t1, out1 = run_thread(lambda: cache.get_or_compute(b"image", FP, compute))
    wait_until(lambda: len(calls) == 1, "first computation started")
    t2, out2 = run_thread(lambda: cache.get_or_compute(b"image", FP, compute))
    wait_until(lambda: cache.stats()["waiting"] == 1, "second request waiting")
    gate.set()
    t1.join(60)
    t2.join(60)
    assert isinstance(out1.get("error"), RuntimeError)
    features, hit = out2["result"]
    assert not hit and len(calls) == 2 and same_features(features, synthetic())
    assert cache.stats()["compute_errors"] == 1
    _, hit = cache.get_or_compute(b"image", FP, compute)
    assert hit and len(calls) == 2


def test_features_of_another_engine_are_returned_but_not_cached(cache):
    c = Compute(synthetic(fingerprint="e" * 24))
    features, hit = cache.get_or_compute(b"image", FP, c)
    assert not hit and features is c.features
    _, hit = cache.get_or_compute(b"image", FP, c)
    assert not hit and c.calls == 2
    assert cache.stats()["not_stored"] == 2


def test_text_embeddings_cached_per_prompt_and_model(cache, small_model):
    assert cache.get_text("clip-a:cat") is None
    cache.set_text("clip-a:cat", b"\x00\x01\x02\x03")
    assert cache.get_text("clip-a:cat") == b"\x00\x01\x02\x03"
    assert cache.get_text("clip-b:cat") is None  # another model
    assert cache.get_text("clip-a:dog") is None  # another prompt
    queries = ["a cat", "green grass"]
    first = TextEncoder(small_model.clip, fingerprint=small_model.text.fingerprint, external=cache)
    a = first(queries)
    assert first.encoded_prompts == 2
    other_worker = TextEncoder(small_model.clip, fingerprint=small_model.text.fingerprint, external=cache)
    b = other_worker(queries)
    assert other_worker.encoded_prompts == 0
    assert a.numpy().tobytes() == b.numpy().tobytes()
    stats = cache.stats()
    assert stats["text_hits"] == 3 and stats["text_misses"] == 5


def test_stats_and_prometheus_lines(cache):
    c = Compute()
    size = len(c.features.to_bytes())
    cache.get_or_compute(b"a", FP, c)
    cache.get_or_compute(b"a", FP, c)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (1, 1, 0)
    assert stats["bytes_stored"] == size and stats["bytes_served"] == size
    assert stats["compute_seconds"] >= 0.0
    metrics = parse_metrics(render_prometheus(cache))
    assert metrics["cass_feature_cache_hits_total"] == 1
    assert metrics["cass_feature_cache_misses_total"] == 1
    assert metrics["cass_feature_cache_errors_total"] == 0
    assert metrics["cass_feature_cache_stored_bytes_total"] == size
    assert metrics["cass_feature_cache_up"] == 1
    assert metrics[f'cass_feature_cache_info{{backend="{stats["backend"]}"}}'] == 1
    assert "cass_feature_cache_bytes" in metrics
    assert render_prometheus(stats) == render_prometheus(cache)


# ---------------------------------------------------------------------------------------------
# in-process LRU
# ---------------------------------------------------------------------------------------------
def test_memory_lru_evicts_least_recently_used_by_bytes():
    sizes = {name: len(synthetic(seed=i).to_bytes()) for i, name in enumerate("abc")}  # compressed: differ
    assert 3 * min(sizes.values()) > 2.5 * max(sizes.values())
    cache = MemoryCache(max_bytes=int(max(sizes.values()) * 2.5))
    c = {name: Compute(synthetic(seed=i)) for i, name in enumerate("abc")}
    cache.get_or_compute(b"a", FP, c["a"])
    cache.get_or_compute(b"b", FP, c["b"])
    cache.get_or_compute(b"a", FP, c["a"])  # a is now the most recently used
    cache.get_or_compute(b"c", FP, c["c"])  # over budget: evicts b
    stats = cache.stats()
    size = sizes["a"] + sizes["c"]
    assert (stats["entries"], stats["bytes"], stats["evictions"]) == (2, size, 1)
    assert parse_metrics(render_prometheus(stats))["cass_feature_cache_bytes"] == size
    _, hit = cache.get_or_compute(b"a", FP, c["a"])
    assert hit
    _, hit = cache.get_or_compute(b"b", FP, c["b"])
    assert not hit and c["b"].calls == 2


def test_memory_entry_larger_than_the_cache_is_served_not_stored():
    cache = MemoryCache(max_bytes=1000)
    c = Compute()
    features, hit = cache.get_or_compute(b"x", FP, c)
    assert not hit and same_features(features, c.features)
    assert (cache.stats()["entries"], cache.stats()["bytes"]) == (0, 0)
    _, hit = cache.get_or_compute(b"x", FP, c)
    assert not hit and c.calls == 2


def test_memory_entries_expire_ttl_after_last_use():
    now = [0.0]
    cache = MemoryCache(ttl_s=100, clock=lambda: now[0])
    c = Compute()
    cache.get_or_compute(b"x", FP, c)
    cache.set_text("k", b"v")
    for t in (90.0, 180.0):  # each hit renews the TTL
        now[0] = t
        _, hit = cache.get_or_compute(b"x", FP, c)
        assert hit
    now[0] = 281.0
    _, hit = cache.get_or_compute(b"x", FP, c)
    assert not hit and c.calls == 2
    assert cache.get_text("k") is None


def test_memory_text_store_is_bounded_in_entries():
    cache = MemoryCache(text_max_entries=2)
    for key in "abc":
        cache.set_text(key, key.encode())
    assert cache.get_text("a") is None
    assert (cache.get_text("b"), cache.get_text("c")) == (b"b", b"c")


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 40), st.booleans()), max_size=40),
       max_bytes=st.integers(1, 100))
def test_byte_lru_matches_a_reference_lru(ops, max_bytes):
    lru, ref = ByteLRU(max_bytes), OrderedDict()
    for key, size, is_put in ops:
        if is_put:
            value = key.encode() * size
            assert lru.put(key, value) == (size <= max_bytes)
            ref.pop(key, None)
            if size <= max_bytes:
                ref[key] = value
                while sum(map(len, ref.values())) > max_bytes:
                    ref.popitem(last=False)
        else:
            assert lru.get(key) == ref.get(key)
            if key in ref:
                ref.move_to_end(key)
        assert lru.nbytes == sum(map(len, ref.values())) <= max_bytes
        assert lru.keys() == list(ref)


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------
def test_redis_entries_have_a_ttl_renewed_by_hits(redis_server, redis_url):
    cache = RedisCache(redis_url, ttl_s=1000)
    r = redis_server.client()
    cache.get_or_compute(b"image", FP, Compute())
    key = cache.key_for(b"image", FP)
    cache.set_text("clip-a:cat", b"1234")
    tkey = text_cache_key("clip-a:cat")
    assert {k.decode() for k in r.keys("*")} == {key, tkey}  # the lock key is gone
    assert 0 < r.ttl(key) <= 1000 and 0 < r.ttl(tkey) <= 1000
    r.expire(key, 5)
    r.expire(tkey, 5)
    _, hit = cache.get_or_compute(b"image", FP, Compute())
    assert hit and r.ttl(key) > 5
    assert cache.get_text("clip-a:cat") == b"1234" and r.ttl(tkey) > 5


@pytest.mark.parametrize("retry_interval_s", [0.0, 3600.0])
def test_redis_down_at_start_serves_without_it_and_warns_once(caplog, retry_interval_s):
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="cass.cache"):
        cache = make_cache(url, retry_interval_s=retry_interval_s)
        c = Compute()
        features, hit = cache.get_or_compute(b"image", FP, c)
        assert not hit and same_features(features, c.features)
        _, hit = cache.get_or_compute(b"image", FP, c)  # from the in-process fallback
        assert hit and c.calls == 1
        cache.set_text("k", b"v")
        assert cache.get_text("k") == b"v"
        health = cache.health()
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    assert health["backend"] == "redis" and health["reachable"] is False and health["last_error"]
    assert "s3cret" not in json.dumps(health) and "s3cret" not in caplog.text
    stats = cache.stats()
    assert stats["errors"] >= 1 and stats["reachable"] is False and stats["outages"] == 1
    if retry_interval_s:  # backing off: only the start-up probe touched the network
        assert stats["redis_errors"] == 1
    else:  # every call retried, still one warning
        assert stats["redis_errors"] > 3
    assert parse_metrics(render_prometheus(cache))["cass_feature_cache_up"] == 0


def test_redis_killed_mid_run_requests_succeed_then_it_reconnects(redis_server_fn, caplog):
    cache = make_cache(redis_server_fn.url, retry_interval_s=0.0)
    a, b = Compute(synthetic(seed=1)), Compute(synthetic(seed=2))
    cache.get_or_compute(b"a", FP, a)
    _, hit = cache.get_or_compute(b"a", FP, a)
    assert hit
    with caplog.at_level(logging.INFO, logger="cass.cache"):
        redis_server_fn.kill()
        features, hit = cache.get_or_compute(b"a", FP, a)
        assert not hit and a.calls == 2 and same_features(features, a.features)
        _, hit = cache.get_or_compute(b"b", FP, b)
        assert not hit
        _, hit = cache.get_or_compute(b"b", FP, b)
        assert hit and b.calls == 1
        assert cache.health()["reachable"] is False
        redis_server_fn.start()  # same port, empty (no persistence)
        assert cache.health()["reachable"] is True
        _, hit = cache.get_or_compute(b"b", FP, b)
        assert hit and b.calls == 1
    assert redis_server_fn.client().exists(cache.key_for(b"b", FP))  # shared again
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    stats = cache.stats()
    assert (stats["outages"], stats["reconnects"]) == (1, 1)


def test_hung_redis_does_not_hang_requests():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # connections complete in the backlog; nothing ever answers
    port = server.getsockname()[1]
    try:
        def request():
            cache = make_cache(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.2, connect_timeout_s=0.2,
                               retry_interval_s=3600)
            return cache.get_or_compute(b"image", FP, Compute()), cache.health()

        thread, out = run_thread(request)
        thread.join(60)
        assert not thread.is_alive(), "a request hung on an unresponsive Redis"
        (features, hit), health = out["result"]
        assert not hit and same_features(features, synthetic())
        assert health["reachable"] is False and "Timeout" in health["last_error"]
    finally:
        server.close()


def test_redis_error_replies_fall_back_without_marking_it_down(redis_server_fn):
    r = redis_server_fn.client()
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")  # every write is refused with an OOM error
    cache = make_cache(redis_server_fn.url)
    c = Compute()
    _, hit = cache.get_or_compute(b"image", FP, c)
    assert not hit
    _, hit = cache.get_or_compute(b"image", FP, c)  # served by the fallback
    assert hit and c.calls == 1
    assert not r.exists(cache.key_for(b"image", FP))
    stats = cache.stats()
    assert stats["errors"] >= 1 and stats["outages"] == 0 and cache.health()["reachable"] is True


def test_two_redis_clients_compute_an_image_once(redis_url):
    first, second = RedisCache(redis_url, poll_interval_s=0.01), RedisCache(redis_url, poll_interval_s=0.01)
    gate = threading.Event()
    c = Compute(gate=gate)
    t1, out1 = run_thread(lambda: first.get_or_compute(b"image", FP, c))
    wait_until(c.started.is_set, "first client computing")
    t2, out2 = run_thread(lambda: second.get_or_compute(b"image", FP, c))
    wait_until(lambda: second.stats()["lock_waits"] == 1, "second client waiting on the lock")
    gate.set()
    t1.join(60)
    t2.join(60)
    assert c.calls == 1
    (f1, hit1), (f2, hit2) = out1["result"], out2["result"]
    assert (hit1, hit2) == (False, True) and same_features(f1, f2)
    assert second.stats()["lock_hits"] == 1


_CHILD = r"""
import json, sys, time
import redis
from cass.cache import RedisCache
from cass.features import ImageFeatures

url, blob_path = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(url)
calls = []

def compute():
    calls.append(1)
    r.set("test:child-computing", 1)
    deadline = time.monotonic() + 60
    while not r.exists("test:release") and time.monotonic() < deadline:
        time.sleep(0.01)
    return ImageFeatures.from_bytes(open(blob_path, "rb").read())

features, hit = RedisCache(url).get_or_compute(b"image", "f" * 24, compute)
print(json.dumps({"hit": hit, "calls": len(calls), "digest": features.to_bytes().hex()[-64:]}))
"""


def test_two_processes_compute_an_image_once(redis_server, redis_url, tmp_path):
    blob = synthetic().to_bytes()
    (tmp_path / "blob").write_bytes(blob)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, redis_url, str(tmp_path / "blob")], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = redis_server.client()
        wait_until(lambda: r.exists("test:child-computing") or child.poll() is not None, "child computing")
        assert child.poll() is None, child.communicate()
        cache = RedisCache(redis_url, poll_interval_s=0.01)
        c = Compute()
        thread, out = run_thread(lambda: cache.get_or_compute(b"image", FP, c))
        wait_until(lambda: cache.stats()["lock_waits"] == 1, "parent waiting on the child's lock")
        r.set("test:release", 1)
        thread.join(60)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result == {"hit": False, "calls": 1, "digest": blob.hex()[-64:]}
    features, hit = out["result"]
    assert hit and c.calls == 0 and same_features(features, synthetic())


def compute_past_a_lock(cache: RedisCache, r, holder: str, ttl_ms: int) -> str:
    """``get_or_compute`` of an image whose lock ``holder`` (another process) holds for ``ttl_ms``:
    computed here once, no hit; the image's key."""
    key = cache.key_for(b"image", FP)
    r.set(key + ":lock", holder, px=ttl_ms)
    c = Compute()
    _, hit = cache.get_or_compute(b"image", FP, c)
    assert not hit and c.calls == 1
    return key


def test_lock_of_a_dead_holder_expires_and_is_taken_over(redis_server, redis_url):
    cache = RedisCache(redis_url, poll_interval_s=0.01)
    r = redis_server.client()
    key = compute_past_a_lock(cache, r, "a-process-that-died", 300)
    stats = cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"]) == (1, 0)
    assert r.exists(key) and not r.exists(key + ":lock")


def test_waiting_for_another_process_is_bounded(redis_server, redis_url):
    cache = RedisCache(redis_url, lock_wait_s=0.2, poll_interval_s=0.01)
    r = redis_server.client()
    key = compute_past_a_lock(cache, r, "a-slow-process", 600_000)
    assert cache.stats()["lock_timeouts"] == 1
    assert r.exists(key) and r.get(key + ":lock") == b"a-slow-process"  # not ours: left alone


def test_lock_released_when_compute_fails(redis_server, redis_url):
    cache = RedisCache(redis_url)
    r = redis_server.client()
    key = cache.key_for(b"image", FP)

    def boom():
        assert r.exists(key + ":lock")  # held while computing
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        cache.get_or_compute(b"image", FP, boom)
    assert not r.exists(key + ":lock") and not r.exists(key)


def test_make_cache_from_env(redis_url):
    memory = make_cache_from_env({"CASS_CACHE_MAX_BYTES": "1MiB", "CASS_CACHE_TTL_S": "60"})
    assert isinstance(memory, MemoryCache) and (memory.max_bytes, memory.ttl_s) == (1 << 20, 60)
    shared = make_cache_from_env({"REDIS_URL": redis_url, "CASS_REDIS_RETRY_S": "7", "CASS_CACHE_LOCK_WAIT_S": "3",
                                  "CASS_CACHE_LOCK_TTL_S": "9", "CASS_CACHE_FALLBACK_MAX_BYTES": "2M"})
    assert isinstance(shared, RedisCache) and isinstance(shared, FeatureCache)
    assert (shared.retry_interval_s, shared.lock_wait_s, shared.lock_ttl_s, shared.fallback_max_bytes) == \
        (7.0, 3.0, 9.0, 2 << 20)
    assert isinstance(make_cache_from_env({"REDIS_URL": " "}), MemoryCache)
    assert parse_size("512MiB") == 512 << 20 and parse_size("2g") == 2 << 30 and parse_size("10") == 10
    with pytest.raises(ValueError):
        parse_size("lots")


def test_lru_bounds_are_checked_and_entries_capped():
    with pytest.raises(ValueError, match="max_bytes"):
        ByteLRU(-1)
    with pytest.raises(ValueError, match="max_entries"):
        ByteLRU(100, max_entries=0)
    lru = ByteLRU(100, max_entries=2)
    for key in "abc":
        assert lru.put(key, b"x")
    assert (lru.keys(), lru.nbytes, lru.evictions) == (["b", "c"], 2, 1)


def test_text_encoder_keeps_the_most_recently_used_prompts():
    class FakeClip:
        """Unit-test fake: only the shapes TextEncoder reads at construction."""
        positional_embedding = torch.zeros(77, 8)
        text_projection = torch.zeros(8, 4)

    enc = TextEncoder(FakeClip(), "fp", max_entries=2)
    enc.encode_uncached = lambda q: torch.full((4,), float(len(q)))
    for batch in (["a"], ["bb"], ["a"], ["ccc"]):  # "bb" is the least recently used when "ccc" comes
        enc(batch)
    assert enc.encoded_prompts == 3
    assert torch.equal(enc(["a"]), torch.full((1, 4), 1.0)) and enc.encoded_prompts == 3
    enc(["bb"])
    assert enc.encoded_prompts == 4
