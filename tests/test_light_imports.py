"""Imports cost what they do (issue 20): the settings, the job CLI and ``--help`` never load torch.

Each check runs in a fresh interpreter (the test process itself has torch loaded long ago), and
reports which heavy modules ended up in ``sys.modules``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision")

# Runs ``python -m backend ARGS`` the way the shell does, then names the heavy modules it loaded.
DRIVER = """
import runpy, sys
sys.argv = ["backend", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("backend", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    if isinstance(exc.code, str):
        print(exc.code, file=sys.stderr)
        code = 1
    else:
        code = exc.code or 0
loaded = [m for m in %r if m in sys.modules]
print("LOADED=" + ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def _env() -> dict[str, str]:
    """The environment without the backend's settings (no REDIS_URL, no Label Studio)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CASS_", "LABEL_STUDIO_")) and k != "REDIS_URL"}


def _loaded(stderr: str) -> list[str]:
    line = [x for x in stderr.splitlines() if x.startswith("LOADED=")][-1]
    return [m for m in line[len("LOADED="):].split(",") if m]


def run_backend(*args: str, watch: tuple[str, ...] = HEAVY) -> subprocess.CompletedProcess:
    """``python -m backend *args`` in a fresh interpreter (stderr ends with the LOADED= line)."""
    return subprocess.run([sys.executable, "-c", DRIVER % (list(watch),), *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["backend", "backend.config", "backend.jobs.cli", "backend.corrections.report",
                                    "cass", "cass.imageformat", "cass.images", "cass.vocabulary", "cass.lru",
                                    "cass.weights", "cass.presets"])
def test_light_module_does_not_import_torch(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


@pytest.mark.parametrize("args, message", [
    (("jobs",), "jobs need REDIS_URL"),
    (("jobs", "--json"), "jobs need REDIS_URL"),
    (("jobs", "cancel", "abc"), "jobs need REDIS_URL"),
    (("preannotate", "--project", "3"), "jobs need REDIS_URL"),
    (("report", "--project", "3"), "REDIS_URL is not set"),
])
def test_commands_without_redis_exit_2_without_torch(args, message):
    out = run_backend(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert _loaded(out.stderr) == []


def test_help_lists_every_sub_command_and_imports_none_of_them():
    out = run_backend("--help", watch=HEAVY + ("backend.jobs.cli", "backend.corrections.report",
                                               "backend.http.app", "backend.jobs.worker"))
    assert out.returncode == 0, out.stderr
    for command in ("serve", "worker", "preannotate", "jobs", "report"):
        assert f"    {command} " in out.stdout, out.stdout
    assert "--host" in out.stdout and "--port" in out.stdout  # serving stays the default command
    assert _loaded(out.stderr) == []


@pytest.mark.parametrize("command", ["jobs", "preannotate", "report", "worker", "serve"])
def test_sub_command_help_is_its_own(command):
    out = run_backend(command, "--help", watch=())
    assert out.returncode == 0, out.stderr
    assert f"usage: python -m backend {command}" in out.stdout


def test_jobs_command_wall_time(capsys):
    """A benchmark, not an assertion: the target is under 1.5 s (it was 9.4 s with torch)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "backend", "jobs"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert out.returncode == 2 and "jobs need REDIS_URL" in out.stderr, out.stderr
    with capsys.disabled():
        print(f"\n`python -m backend jobs` (no REDIS_URL): {wall:.2f} s wall (target < 1.5 s)")


def test_cass_names_stay_reachable():
    """The lazy ``cass`` package still hands out every name of ``__all__`` (the engine on first use)."""
    import cass
    import cass.engine
    import cass.vocabulary

    assert cass.create_model is cass.engine.create_model
    assert cass.Vocabulary is cass.vocabulary.Vocabulary
    assert set(cass.__all__) <= set(dir(cass))
    namespace: dict = {}
    exec("from cass import *", namespace)
    assert set(cass.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cass.nope  # noqa: B018
