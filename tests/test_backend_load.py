"""A short run of ``scripts/loadtest.py`` (gunicorn + the tiny weights, loopback only): concurrent
clients are all served without 5xx or transport errors; beyond the queue they get 503 "busy" with
Retry-After, never a timeout. The 2-minute figures are in docs/security.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def loadtest(*args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "loadtest.py"), "--images", "12", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.returncode, json.loads(lines[-1])


def test_concurrent_clients_are_all_served(tiny_weights, tmp_path):
    records = tmp_path / "records.jsonl"
    rc, report = loadtest("--clients", "4", "--batch-clients", "1", "--batch-size", "4", "--duration", "8",
                          "--records", str(records))
    assert rc == 0, report
    assert set(report["status"]) == {"200"} and report["requests"] >= 4
    assert report["errors"] == {} and report["server_errors"] == 0 and report["task_errors"] == 0
    assert report["tasks"] >= report["requests"]
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    assert report["rss_mb"]["peak"] >= report["rss_mb"]["end"] > 0
    assert report["inference"]["rejected"] == 0 and report["inference"]["peak_requests"] <= 4
    assert report["health_degraded"] == []
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == report["requests"] and {r["client"] for r in rows} == {0, 1, 2, 3}
    assert all(r["status"] == 200 and r["latency"] > 0 for r in rows)
    assert [r["tasks"] for r in rows if r["client"] == 0][0] == 4  # the batch client
    assert report["inference"]["task_s"] > 0 and report["cpu_count"] >= 1


def test_clients_beyond_the_queue_get_busy_503_not_timeouts(tiny_weights):
    rc, report = loadtest("--clients", "6", "--batch-clients", "0", "--duration", "6",
                          "--env", "CASS_INFERENCE_SLOTS=1", "--env", "CASS_MAX_QUEUE=0")
    assert rc == 1  # 503s are 5xx: the script reports them
    assert set(report["status"]) == {"200", "503"}, report["status"]
    assert report["busy_503"] > 0 and report["busy_503"] == report["busy_503_with_retry_after"]
    assert report["errors"] == {}  # no timeouts, no dropped connections
    assert report["inference"]["peak_requests"] == 1 and report["inference"]["rejected"] == report["busy_503"]
