"""backend/controls/digest_cache.py: parsed label configs remembered by the sha256 of their text (the text
itself is not kept), shared by backend.controls.label_parse.parse_label_config and the controls parser."""
from __future__ import annotations

import pytest

from backend.controls import label_parse
from backend.controls.digest_cache import DigestCache, config_digest

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""


def test_parses_each_config_once_per_extra_key():
    cache, calls = DigestCache(1 << 20, max_entries=8, sizeof=lambda v: 100), []

    def parse(text):
        calls.append(text)
        return ("parsed", len(text))

    assert cache.get_or_parse("<View/>", parse, "rule-a") == ("parsed", 7)
    assert cache.get_or_parse("<View/>", parse, "rule-a") == ("parsed", 7)
    cache.get_or_parse("<View/>", parse, "rule-b")
    assert calls == ["<View/>", "<View/>"] and len(cache) == 2
    assert all("<View/>" not in repr(key) for key in cache.keys())  # only the digest is kept
    assert config_digest("<View/>") in repr(cache.keys())


def test_bounded_in_bytes_and_errors_are_not_cached():
    cache = DigestCache(1000, max_entries=8, sizeof=lambda v: 400)
    for text in "abc":
        cache.get_or_parse(text, lambda t: t)
    assert len(cache) == 1 and cache.bytes <= 1000  # 400 + 256 per entry: one fits

    def bad(text):
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        cache.get_or_parse("x", bad)
    assert config_digest("x") not in repr(cache.keys())
    with pytest.raises(TypeError, match="label config must be a str"):
        cache.get_or_parse(b"<View/>", bad)


def test_parse_label_config_uses_the_shared_helper():
    label_parse._parsed.clear()
    first = label_parse.parse_label_config(CONFIG)
    assert isinstance(label_parse._parsed, DigestCache) and len(label_parse._parsed) == 1
    assert label_parse.parse_label_config(CONFIG) is first
