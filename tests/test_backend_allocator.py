"""backend.ops.allocator: glibc malloc settings (arenas, fixed mmap threshold) and the trim after a request.

The RSS check runs in a fresh subprocess (mallopt must precede the threads' first allocations): many
threads each allocate and free a model-sized working set of 2-8 MiB blocks; with the settings applied
the memory goes back to the system once the work is done. No timing assertions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.ops import allocator as memory

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading
sys.path.insert(0, sys.argv[1])
from backend.ops import allocator as memory
settings = memory.tune_malloc({}) if sys.argv[2] == "tuned" else {}
import numpy as np

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

start = rss()
def work():
    for _ in range(3):
        blocks = [np.ones((n << 20) // 8) for n in (2, 3, 5, 8) * 6]   # ~108 MiB alive at once
        del blocks
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
memory.trim(force=True)
print(json.dumps({"settings": settings, "start": start, "end": rss()}))
"""


def test_freed_working_sets_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), "tuned"], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if not report["settings"]:
        pytest.skip("not glibc: mallopt unavailable")
    assert report["settings"] == {"arena_max": 2, "mmap_threshold": 1 << 20}
    assert report["end"] - report["start"] < 40, report  # 8 threads x ~108 MiB were allocated


def test_glibc_environment_variables_win():
    done = memory.tune_malloc({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert done == {}


def test_arena_setting_is_validated():
    from backend.config import ConfigError, Settings

    assert Settings.from_env({}).malloc_arenas == memory.DEFAULT_ARENAS == 2
    assert Settings.from_env({"CASS_MALLOC_ARENAS": "3"}).malloc_arenas == 3
    with pytest.raises(ConfigError, match="CASS_MALLOC_ARENAS = 'many' is not an integer"):
        Settings.from_env({"CASS_MALLOC_ARENAS": "many"})
    with pytest.raises(ConfigError, match="must be at least 1"):
        Settings.from_env({"CASS_MALLOC_ARENAS": "0"})


def test_trim_is_rate_limited(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_INTERVAL_S", 3600.0)  # a stalled machine cannot make it due
    assert memory.trim(force=True) in (True, False)
    if memory._glibc() is not None:
        assert memory.trim() is False  # within TRIM_INTERVAL_S of the forced one
