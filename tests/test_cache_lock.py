"""The Redis feature cache's cross-process lock (redis-py's ``Lock``) against a real redis-server and
real processes: a holder that is killed does not block others beyond the lock's lifetime, and a
holder whose lock expired while computing never deletes the lock another process took since."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from cass.cache import RedisCache
from tests.redis_fixtures import free_port, redis_server, redis_url  # noqa: F401
from tests.test_cache import FP, Compute, same_features, synthetic, wait_until

REPO = Path(__file__).resolve().parents[1]

_HOLDER = r"""
import sys, time
import redis
from cass.cache import RedisCache

url = sys.argv[1]
r = redis.Redis.from_url(url)

def compute():
    r.set("test:holder-computing", 1)
    time.sleep(600)  # killed by the test while holding the lock

RedisCache(url, lock_ttl_s=float(sys.argv[2])).get_or_compute(b"image", "f" * 24, compute)
"""


def test_lock_of_a_killed_holder_process_expires_and_is_taken_over(redis_server, redis_url):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, redis_url, "1.0"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = redis_server.client()
        wait_until(lambda: r.exists("test:holder-computing") or holder.poll() is not None, "holder computing")
        assert holder.poll() is None, holder.communicate()
        cache = RedisCache(redis_url, poll_interval_s=0.01, lock_wait_s=30)
        key = cache.key_for(b"image", FP)
        assert r.exists(key + ":lock")  # the holder's lock
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        t0 = time.monotonic()
        c = Compute()
        features, hit = cache.get_or_compute(b"image", FP, c)
        waited = time.monotonic() - t0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not hit and c.calls == 1 and same_features(features, synthetic())
    stats = cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["errors"]) == (1, 0, 0)
    assert waited < 30  # taken over when the dead holder's lock expired, not after lock_wait_s
    assert r.exists(key) and not r.exists(key + ":lock")


def test_expired_lock_taken_by_another_process_is_not_released_by_the_first(redis_server, redis_url):
    cache = RedisCache(redis_url, lock_ttl_s=0.2)
    r = redis_server.client()
    key = cache.key_for(b"image", FP)

    def slow():
        wait_until(lambda: not r.exists(key + ":lock"), "our lock expiring")
        assert r.set(key + ":lock", "another-process", nx=True, px=60_000)
        return synthetic()

    _, hit = cache.get_or_compute(b"image", FP, slow)
    assert not hit
    assert r.get(key + ":lock") == b"another-process"  # not ours any more: left alone
    assert cache.stats()["errors"] == 0  # an expired lock is not a Redis error
    assert r.exists(key)


def test_lock_value_is_a_fresh_token_per_computation(redis_server, redis_url):
    cache = RedisCache(redis_url)
    r = redis_server.client()
    seen = []

    def compute(name):
        def run():
            seen.append(r.get(cache.key_for(name, FP) + ":lock"))
            return synthetic()
        return run

    cache.get_or_compute(b"one", FP, compute(b"one"))
    cache.get_or_compute(b"two", FP, compute(b"two"))
    assert len(seen) == 2 and all(seen) and seen[0] != seen[1]
    assert json.dumps([s.decode() for s in seen])  # tokens are text
