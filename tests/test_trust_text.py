"""Issue 21, classes 2 and 3: credentials in URLs are redacted wherever shown (one function,
``cass.redaction.redact``), and control characters cannot forge log lines."""
from __future__ import annotations

import io
import logging

import pytest

from backend.fetch.urls import show_url
from backend.ops.logs import install_redaction, redact
from cass.cache import redact_url

SECRET_URLS = [
    "redis://cache:6379/0?password=hunter2",
    "redis://:hunter2@cache:6379/0",
    "redis://user:hunter2@cache:6379?db=0&password=hunter2",
    "rediss://cache?socket_timeout=5&token=hunter2",
    "s3://bucket/key.png?X-Amz-Signature=hunter2",
    "https://host/a.png?sig=hunter2&se=2030",
    "https://host/a.png?signature=hunter2",
    "gs://b/o?key=hunter2",
    "http://h/x?client_secret=hunter2",
    "https://u:p%40ss@host/a.png",
    "redis://:p@ss@cache:6379/0",
]


@pytest.mark.parametrize("url", SECRET_URLS)
@pytest.mark.parametrize("shown_by", [redact, redact_url, show_url], ids=["logs", "cache", "fetch"])
def test_every_display_of_a_url_drops_its_credentials(url, shown_by):
    shown = shown_by(url)
    assert "hunter2" not in shown and "p%40ss" not in shown and "p@ss" not in shown and "ss@" not in shown, shown
    assert "cache" in shown or "host" in shown or "bucket" in shown or "//b/" in shown or "//h/" in shown, shown


def test_one_function_for_every_display():
    import backend.fetch.urls as urls
    import backend.ops.log_redaction as log_redaction
    import cass.cache.keys as keys
    from cass import redaction

    assert log_redaction.redact is redaction.redact and keys.redact_url is redaction.redact
    assert urls.redact is redaction.redact


class FakeRedis:
    def info(self, section=None):
        return {"used_memory": 1, "maxmemory": 1 << 30, "maxmemory_policy": "allkeys-lru"}


def test_health_does_not_show_the_redis_password():
    from backend.config import Settings
    from backend.http.app import create_app
    from backend.predict.predictor import Predictor
    from cass.cache.redis_store import RedisCache
    from tests.backend_fixtures import FakeEngine

    cache = RedisCache("redis://:hunter2@cache:6379/0?password=hunter2&db=0", client=FakeRedis())
    client = create_app(Settings(warmup=False), Predictor(FakeEngine(), cache)).test_client()
    resp = client.get("/health")
    assert resp.status_code == 200
    assert "hunter2" not in resp.get_data(as_text=True)
    assert resp.get_json()["cache"]["url"].startswith("redis://<redacted>@cache:6379/0?")


@pytest.fixture
def log_lines():
    install_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger = logging.getLogger("trust.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("evil", ["7\r\n[INFO] forged line", "7\n[INFO] forged", "7\x1b[2J\x1b]0;t\x07",
                                  "7\x85[INFO] nel", "7\u2028[INFO] ls", "7\x00\x7f\x9b"])
def test_control_characters_cannot_forge_a_log_line(log_lines, evil):
    logger, stream = log_lines
    logger.info("webhook %s for task %s", "ANNOTATION_CREATED", evil)
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n"), repr(out)
    body = out[:-1]
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" for c in body), repr(body)
    assert "7\\" in body


def test_a_forged_exception_message_stays_inside_its_traceback(log_lines):
    logger, stream = log_lines
    try:
        raise ValueError("bad project\n[INFO] forged\r\x1b[1m")
    except ValueError:
        logger.exception("failed on task %s", "1\n[INFO] forged")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[ERROR] failed on task 1\\n")
    assert not any(line.startswith("[INFO]") for line in lines), lines
    assert not any("\x1b" in line or "\r" in line for line in lines), lines
