"""Property-based tests (hypothesis): environment parsing, allowed-host entries, label configs, brush RLE."""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend.config import ConfigError, Settings
from backend.fetch.images import HostRule, parse_allowed_hosts
from backend.controls.label_parse import parse_label_config
from backend.controls.labels import LabelConfigError
from backend.controls.brush_rle import mask_to_rle, rle_to_mask

MiB = 1 << 20

label = st.from_regex(r"[a-z0-9](?:[a-z0-9_-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda h: any(c.isalpha() for c in h))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
port = st.none() | st.integers(1, 65535)


def with_port(host_and_port) -> str:
    host, p = host_and_port
    return host + (f":{p}" if p is not None else "")


entry = st.one_of(
    st.tuples(domain, port).map(with_port),
    st.tuples(domain.map(lambda h: "*." + h), port).map(with_port),
    st.tuples(ipv4, port).map(with_port),
    st.tuples(ipv6, port).map(with_port),
    st.tuples(st.just("*"), port).map(with_port),
)


def messy(text: str, draw_case: list[bool], spaces: int) -> str:
    cased = "".join(c.upper() if i < len(draw_case) and draw_case[i] else c for i, c in enumerate(text))
    return " " * spaces + cased + " " * spaces


# ---------------------------------------------------------------------------------------------
# CASS_ALLOWED_HOSTS
# ---------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(entry, max_size=6), st.lists(st.booleans(), max_size=40), st.integers(0, 2))
def test_allowed_hosts_parse_normalise_and_round_trip(entries, case, spaces):
    text = ",".join(messy(e, case, spaces) for e in entries) + ("," if spaces else "")
    parsed = Settings.from_env({"CASS_ALLOWED_HOSTS": text}).allowed_hosts
    expected = []
    for e in entries:
        normal = str(HostRule.parse(e))
        if normal not in expected:
            expected.append(normal)
    assert parsed == tuple(expected)
    assert parse_allowed_hosts(",".join(parsed)) == parsed  # normal form is a fixed point
    assert all(p == p.lower() and " " not in p for p in parsed)


@settings(max_examples=200, deadline=None)
@given(domain, st.integers(1, 65534), label)
def test_host_rules_match_what_they_name(host, p, sub):
    exact = HostRule.parse(f"{host}:{p}")
    assert exact.matches(host.upper(), p) and exact.matches(host + ".", p)
    assert not exact.matches(host, p + 1) and not exact.matches(f"{sub}.{host}", p)
    assert HostRule.parse(host).matches(host, p)  # no port: any port
    wildcard = HostRule.parse(f"*.{host}")
    assert wildcard.matches(f"{sub}.{host}", p) and not wildcard.matches(host, p)
    assert not wildcard.matches(f"{sub}{host}", p)  # a suffix, not a subdomain
    assert HostRule.parse("*").matches(f"{sub}.{host}", p) and exact.exact and not wildcard.exact


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.tuples(st.sampled_from(["http://", "https://", "user@", "//"]), domain).map("".join),
    st.tuples(domain, st.sampled_from(["/", "/path", "?q", "#f", " x"])).map("".join),
    st.tuples(domain, st.sampled_from([":0", ":65536", ":http", ":", ":-1", ":99999999"])).map("".join),
    st.tuples(st.just("*."), ipv4).map("".join),
    st.just("::1"), st.just("[::1"), st.just("[example.com]:80"), st.just("a..b"), st.just("-a.com"),
))
def test_bad_allowed_host_entries_name_the_variable(bad):
    with pytest.raises(ConfigError, match="^CASS_ALLOWED_HOSTS: "):
        Settings.from_env({"CASS_ALLOWED_HOSTS": f"minio:9000, {bad}"})


# ---------------------------------------------------------------------------------------------
# numbers, flags, basic auth; any value either parses or names its variable
# ---------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=0.001, max_value=1e6, allow_nan=False), st.floats(min_value=0.001, max_value=1e4),
       st.integers(1, 10_000), st.integers(0, 10_000))
def test_limits_and_slots(request_mb, image_mp, slots, queue):
    s = Settings.from_env({"CASS_MAX_REQUEST_MB": repr(request_mb), "CASS_MAX_IMAGE_MP": f" {image_mp!r} ",
                           "CASS_INFERENCE_SLOTS": str(slots), "CASS_MAX_QUEUE": str(queue)})
    assert s.max_request_bytes == int(request_mb * MiB)
    assert s.max_image_pixels == int(image_mp * 1e6)
    assert (s.inference_slots, s.max_queue) == (slots, queue)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["1", "true", "yes", "on", "0", "false", "no", "off"]), st.lists(st.booleans(), max_size=5))
def test_flags_any_case(word, case):
    value = messy(word, case, 0)
    assert Settings.from_env({"CASS_ALLOW_PRIVATE_HOSTS": value}).allow_private_hosts is (
        word in ("1", "true", "yes", "on"))


VARIABLES = ["CASS_ALLOWED_HOSTS", "CASS_ALLOW_PRIVATE_HOSTS", "CASS_MAX_REQUEST_MB", "CASS_MAX_IMAGE_MP",
             "CASS_INFERENCE_SLOTS", "CASS_MAX_QUEUE", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "CASS_MAX_IMAGE_MB",
             "CASS_FETCH_TIMEOUT_S", "CASS_THRESHOLD", "LABEL_STUDIO_URL"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(VARIABLES), st.text(max_size=20), max_size=5))
def test_any_environment_parses_or_names_a_variable(env):
    try:
        s = Settings.from_env(env)
    except ConfigError as exc:
        assert any(name in str(exc) for name in env), (env, str(exc))
    else:
        assert s.inference_slots >= 1 and s.max_queue >= 0 and s.max_request_bytes > 0
        assert (s.basic_auth_user is None) == (s.basic_auth_pass is None)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda u: u.strip() and ":" not in u),
       st.text(min_size=1, max_size=30).filter(str.strip))
def test_basic_auth_pairs(user, password):
    s = Settings.from_env({"BASIC_AUTH_USER": user, "BASIC_AUTH_PASS": password})
    assert (s.basic_auth_user, s.basic_auth_pass) == (user.strip(), password.strip())
    assert "basic_auth_pass" not in repr(s)  # the password never appears in a repr (logs)
    for half in ({"BASIC_AUTH_USER": user}, {"BASIC_AUTH_PASS": password}):
        with pytest.raises(ConfigError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS go together"):
            Settings.from_env(half)


# ---------------------------------------------------------------------------------------------
# label configs
# ---------------------------------------------------------------------------------------------
label_name = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=","),
                     min_size=1, max_size=12).filter(lambda s: s.strip() and s != "__cass_background__")


@settings(max_examples=80, deadline=None)
@given(st.lists(label_name, min_size=1, max_size=8))
def test_label_configs_give_one_class_per_distinct_label(names):
    config = ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>"
              + "".join(f"<Label value={quoteattr(n)}/>" for n in names) + "</BrushLabels></View>")
    distinct = list(dict.fromkeys(names))
    prompts = [n.strip() for n in distinct]
    if len(set(prompts)) < len(prompts):  # e.g. "a" and " a": one prompt, two labels
        with pytest.raises(LabelConfigError, match="is used by two classes"):
            parse_label_config(config)
        return
    (target,) = parse_label_config(config)
    assert target.vocabulary.names == distinct
    assert [c.prompts for c in target.vocabulary.classes] == [(p,) for p in prompts]


# ---------------------------------------------------------------------------------------------
# brush RLE round trips (long runs, all shapes)
# ---------------------------------------------------------------------------------------------
@st.composite
def run_masks(draw):
    h, w = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    runs = draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=12))
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, draw(st.booleans())
    for run in runs:
        flat[pos:pos + run] = value
        pos += run
        value = not value
    return flat.reshape(h, w)


@settings(max_examples=60, deadline=None)
@given(run_masks())
def test_rle_round_trip_masks_made_of_runs(mask):
    h, w = mask.shape
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), h, w), mask)
    assume(mask.any())
    assert rle_to_mask(mask_to_rle(~mask), h, w).sum() == mask.size - mask.sum()
