"""``python -m backend``: startup errors name their cause; ``--check`` loads the engine."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.__main__ import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CASS_", "LABEL_STUDIO_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CASS_ALLOW_UNAUTHENTICATED", "true")  # a test process (backend.startup)
    levels = {name: logging.getLogger(name).level for name in ("", "label_studio_ml")}
    yield monkeypatch
    for name, level in levels.items():  # main() configures logging
        logging.getLogger(name).setLevel(level)


def test_bad_environment_exits_2_naming_the_variable(clean_env, capsys):
    clean_env.setenv("CASS_THREADS", "lots")
    assert main([]) == 2
    assert "configuration error: CASS_THREADS = 'lots' is not an integer" in capsys.readouterr().err


def test_missing_weights_exit_1_with_the_reason(clean_env, capsys, tmp_path):
    clean_env.setenv("CASS_CLIP_WEIGHTS", "/nonexistent/clip.safetensors")
    clean_env.setenv("CASS_DINO_WEIGHTS", "/nonexistent/dino.pth")  # (no download attempt)
    clean_env.setenv("CASS_MODEL_DIR", str(tmp_path))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "could not load the model: 2 weight files are missing" in err
    assert "CASS_CLIP_WEIGHTS = '/nonexistent/clip.safetensors' (or --clip-weights): CLIP weights " \
           "'/nonexistent/clip.safetensors': no such file" in err


@pytest.mark.parametrize("args", [["--port", "http"], ["--log-level", "LOUD"]])
def test_bad_arguments(args):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2


def test_module_entry_point_check_loads_the_engine(tiny_weights):
    clip, dino = tiny_weights
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASS_", "LABEL_STUDIO_", "REDIS_URL"))}
    env.update(CASS_CLIP_WEIGHTS=str(clip), CASS_DINO_WEIGHTS=str(dino), CASS_WARMUP="0",
               CASS_ALLOW_UNAUTHENTICATED="true")
    out = subprocess.run([sys.executable, "-m", "backend", "--check"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("cass-default-clip.")
