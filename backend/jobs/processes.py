"""Worker processes started from Python (the job benchmark, the Redis outage test): start ``n``
``python -m backend worker`` processes with their logs, stop them (TERM, then KILL)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[2]


def start_workers(logs: Iterable[Path | str], env: dict) -> list[subprocess.Popen]:
    """One worker per log file (stdout and stderr), each in its own session, run from the repository."""
    return [subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=REPO, env=env,
                             stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            for log in logs]


def stop_workers(procs: Iterable[subprocess.Popen], timeout_s: float = 30.0) -> None:
    """TERM every worker (they finish the task in hand), then KILL those still running after ``timeout_s``."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
