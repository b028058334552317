"""A cache entry is checked before anything is built from it (issue 21): a crafted entry in a real
Redis is a miss, logged once and overwritten (cass.cache.validate)."""
from __future__ import annotations

import json
import re
import logging
import struct

import pytest
import torch

from cass.cache import RedisCache
from cass.cache.validate import check_blob, image_size
from cass.features import FeaturesFormatError, ImageFeatures
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401
from tests.test_cache import FP, png_bytes, synthetic

MAGIC = b"CASSFEAT"


def rewrite(blob: bytes, **changes) -> bytes:
    """``blob`` with its JSON header changed (``arrays__<name>`` updates that array's spec)."""
    (hlen,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(blob[start:start + hlen])
    for key, value in changes.items():
        if key.startswith("arrays__"):
            header["arrays"][key[len("arrays__"):]].update(value)
        else:
            header[key] = value
    new = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(new)) + new + blob[start + hlen:]


def tiny_features(image: bytes) -> ImageFeatures:
    features = synthetic()
    h, w = image_size(image)
    features.original_size = (h, w)
    return features


def test_a_bomb_entry_in_redis_is_a_miss_logged_once_and_overwritten(redis_url, caplog):
    image = png_bytes(1)  # 64 x 48
    good = tiny_features(image)
    cache = RedisCache(redis_url)
    key = cache.key_for(image, FP)
    bomb = rewrite(good.to_bytes(), original_size=[12000, 12000])
    cache._redis.set(key, bomb)
    calls = []

    def compute():
        calls.append(1)
        return good

    caplog.set_level(logging.WARNING, logger="cass.cache")
    assert cache.peek(image, FP) is None
    features, hit = cache.get_or_compute(image, FP, compute)
    assert not hit and calls == [1] and tuple(features.original_size) == (48, 64)
    stored = ImageFeatures.from_bytes(cache._redis.get(key))
    assert tuple(stored.original_size) == (48, 64)  # overwritten by the computed entry
    lines = [r.getMessage() for r in caplog.records if "12000x12000" in r.getMessage()]
    assert len(lines) == 1, lines  # peek's line; get_or_compute found it discarded
    assert "larger than the image (48x64" in lines[0]
    assert cache.stats()["corrupt"] == 1
    _, hit = cache.get_or_compute(image, FP, compute)
    assert hit and calls == [1]


def test_check_blob_refuses_before_decoding():
    image = png_bytes(2)
    size = image_size(image)
    blob = tiny_features(image).to_bytes()
    check_blob(blob, size)  # the honest entry passes
    cases = {
        "larger than the image": rewrite(blob, original_size=[12000, 12000]),
        "input_size": rewrite(blob, input_size=[50000, 50000]),
        "version": rewrite(blob, version=1),
        "cannot hold": rewrite(blob, arrays__patch_features={"shape": [100000, 49, 100000]}),
        "dtype": rewrite(blob, arrays__windows={"dtype": "|O"}),
        "does not fit": rewrite(blob, grid=[8, 8]),
        "not [height, width]": rewrite(blob, original_size=[1, 2, 3]),
        "bad magic": b"XXXX" + blob[4:],
    }
    for reason, crafted in cases.items():
        with pytest.raises(FeaturesFormatError, match=re.escape(reason)):
            check_blob(crafted, size)
    rotated = rewrite(blob, original_size=[64, 48])  # EXIF-rotated: allowed
    check_blob(rotated, size)


def test_an_f16z_array_declaring_billions_of_values_is_refused_without_allocating(redis_url):
    image = png_bytes(3)
    good = tiny_features(image)
    cache = RedisCache(redis_url)
    crafted = rewrite(good.to_bytes(), arrays__patch_features={"shape": [1, 49, 10 ** 9]})
    cache._redis.set(cache.key_for(image, FP), crafted)
    features, hit = cache.get_or_compute(image, FP, lambda: good)
    assert not hit and torch.equal(features.windows, good.windows)
