"""python -m backend report (table, JSON, PNG) and the agreement gauges, on a real redis-server."""
from __future__ import annotations

import json

import numpy as np
import redis
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest

from backend.__main__ import main
from backend.corrections.agreement import compare
from backend.corrections.metrics import AgreementCollector
from backend.corrections.store import RedisStore
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401


def masks():
    cat, dog = np.zeros((10, 20), bool), np.zeros((10, 20), bool)
    cat[:, :10] = True
    dog[:, 10:] = True
    half = np.zeros((10, 20), bool)
    half[:, 5:15] = True
    return cat, dog, half


def fill(url):
    store = RedisStore(redis.Redis.from_url(url))
    cat, dog, half = masks()
    store.replace(4, 1, compare({"cat": cat, "dog": dog}, {"cat": cat, "dog": dog}), "t1")
    store.replace(4, 2, compare({"cat": cat}, {"cat": half, "dog": dog}), "t2")
    return store


def test_report_table_json_and_png(redis_url, tmp_path, capsys):
    fill(redis_url)
    png = tmp_path / "out.png"
    assert main(["report", "--project", "4", "--png", str(png), "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[3:]}
    # cat: tp 100 + 50, annotated 200, predicted 200 -> IoU 150/250 = 60 %; 50 px under no prediction
    assert lines["cat"].split()[1:5] == ["2", "60.0", "75.0", "75.0"] and "(none) 25%" in lines["cat"]
    # dog: tp 100, annotated 100, predicted 200 -> IoU 50 %, precision 50 %, recall 100 %
    assert lines["dog"].split()[1:5] == ["2", "50.0", "50.0", "100.0"]
    assert out.splitlines()[3].startswith("dog")  # worst first
    image = Image.open(png)
    assert image.format == "PNG" and image.size[0] >= 400
    assert main(["report", "--project", "4", "--json", "--redis-url", redis_url]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"]["cat"]["iou"] == 0.6 and summary["labels"]["cat"]["top_confusion"] == ["", 0.25]


def test_report_without_redis_says_where_the_totals_are(monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CASS_STATE_REDIS_URL", raising=False)
    assert main(["report", "--project", "4"]) == 2
    assert "REDIS_URL is not set" in capsys.readouterr().err


def test_report_of_an_empty_project(redis_url, capsys):
    assert main(["report", "--project", "99", "--redis-url", redis_url]) == 0
    assert "no corrected annotation compared yet" in capsys.readouterr().out


def test_gauges_per_project_and_label(redis_url):
    store = fill(redis_url)
    registry = CollectorRegistry()
    registry.register(AgreementCollector(store))
    text = generate_latest(registry).decode()
    assert 'cass_agreement_iou{label="cat",project="4"} 0.6' in text
    assert 'cass_agreement_recall{label="dog",project="4"} 1.0' in text
    assert 'cass_agreement_annotations{label="dog",project="4"} 2.0' in text
    assert 'cass_agreement_pixels{label="cat",project="4",side="both"} 150.0' in text


def test_report_reads_the_state_redis_of_cass_state_redis_url(redis_url, monkeypatch, capsys):  # noqa: F811
    """Issue 21's two Redis roles: the agreement totals live in the state Redis, so ``report`` finds
    them through ``CASS_STATE_REDIS_URL`` (else ``REDIS_URL``) as the backend does."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("CASS_STATE_REDIS_URL", redis_url)
    assert main(["report", "--project", "99", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["project"] == "99"
