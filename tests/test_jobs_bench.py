"""backend.jobs.bench without running it: bad arguments stop it before anything starts; the machine
fields every JSON line carries."""
from __future__ import annotations

import pytest

from backend.jobs import bench as jobbench


@pytest.mark.parametrize("argv", [["--tasks", "0"], ["--chunk-size", "0"], ["--full", "-1"]])
def test_bad_arguments_stop_before_anything_starts(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        jobbench.main(argv)
    assert exc.value.code == 2 and "must be at least" in capsys.readouterr().err


def test_machine_fields(monkeypatch):
    monkeypatch.setenv("CASS_JOB_BATCH", "4")
    m = jobbench.machine()
    assert set(m) == {"cpu", "cpu_count", "load_avg_1m", "device", "job_batch"} and m["job_batch"] == "4"
