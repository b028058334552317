"""CASS_JOB_* settings (one block of backend.config.Settings) and /metrics' pooled Redis client
(a real redis-server)."""
from __future__ import annotations

import pytest
import redis as redis_lib

from backend.config import ConfigError, JobSettings, Settings
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401


def test_job_settings_defaults_and_values():
    s = Settings.from_env({})
    assert s.jobs == JobSettings()
    assert (s.jobs.heartbeat_s, s.jobs.maintenance_s, s.jobs.prefetch, s.jobs.post_every) == (10.0, 30, 2, 8)
    assert (s.jobs.redis_wait_s, s.jobs.queue, s.jobs.batch, s.jobs.auto_preannotate) == \
        (300.0, "cass-preannotate", None, False)
    env = {"CASS_JOB_HEARTBEAT_S": "1.5", "CASS_JOB_MAINTENANCE_S": "5", "CASS_JOB_PREFETCH": "0",
           "CASS_JOB_POST_EVERY": "3", "CASS_JOB_REDIS_WAIT_S": "45", "CASS_JOB_QUEUE": "cass-big",
           "CASS_JOB_BATCH": "4", "CASS_JOB_CHUNK_TIMEOUT_S": "600", "CASS_AUTO_PREANNOTATE": "true",
           "CASS_JOB_MAX_TASKS": "500"}
    j = Settings.from_env(env).jobs
    assert (j.heartbeat_s, j.maintenance_s, j.prefetch, j.post_every, j.redis_wait_s, j.queue, j.batch,
            j.chunk_timeout_s, j.auto_preannotate, j.max_tasks) == (1.5, 5, 0, 3, 45.0, "cass-big", 4, 600, True, 500)
    assert s.jobs.max_tasks == 100_000
    assert JobSettings.from_env(env) == j  # the worker, CLI and /jobs read the same block


def test_job_batch_defaults_by_device():
    auto = JobSettings()
    assert auto.batch_for("cpu") == 1 and auto.batch_for("cuda") == 4 and auto.batch_for("cuda:1") == 4
    assert JobSettings(batch=2).batch_for("cuda") == 2 and JobSettings(batch=3).batch_for("cpu") == 3


@pytest.mark.parametrize("name, value, words", [
    ("CASS_JOB_HEARTBEAT_S", "0.1", "at least 0.5"),
    ("CASS_JOB_HEARTBEAT_S", "soon", "not a number"),
    ("CASS_JOB_MAINTENANCE_S", "2.5", "not an integer"),
    ("CASS_JOB_PREFETCH", "-1", "at least 0"),
    ("CASS_JOB_POST_EVERY", "0", "at least 1"),
    ("CASS_JOB_REDIS_WAIT_S", "nan", "at least 1"),
    ("CASS_JOB_BATCH", "0", "at least 1"),
    ("CASS_JOB_MAX_TASKS", "0", "at least 1"),
    ("CASS_JOB_BATCH", "many", "not an integer"),
    ("CASS_JOB_CHUNK_TIMEOUT_S", "5", "at least 60"),
    ("CASS_JOB_QUEUE", "my queue", "CASS_JOB_QUEUE"),
    ("CASS_AUTO_PREANNOTATE", "perhaps", "not a boolean"),
])
def test_bad_job_settings_name_the_variable(name, value, words):
    with pytest.raises(ConfigError, match=name) as exc:
        Settings.from_env({name: value})
    assert words in str(exc.value)


def test_metrics_reuse_one_redis_connection_per_url(redis_url):  # noqa: F811
    from backend.jobs.metrics import render_job_metrics
    from backend.jobs.queue import Jobs
    from backend.jobs.spec import JobSpec

    probe = redis_lib.Redis.from_url(redis_url)
    Jobs(probe, projects=None).start(JobSpec(1, task_ids=(1, 2)))
    render_job_metrics(redis_url)  # the first scrape may connect
    before = probe.info("stats")["total_connections_received"]
    for _ in range(5):
        text = render_job_metrics(redis_url).decode()
        assert 'state="total"} 2.0' in text
    after = probe.info("stats")["total_connections_received"]
    assert after == before, f"{after - before} new Redis connection(s) for 5 scrapes"
    probe.close()
