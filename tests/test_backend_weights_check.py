"""Missing weights are reported all at once: every missing file, its variable, the model dir and the
offline recipe; ``python -m backend --check`` says the same without serving."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import Settings
from backend.predict.weights_check import check_weights, missing_weights_message
from cass.weights import CLIP_SOURCES, DINO_SOURCES

REPO = Path(__file__).resolve().parents[1]


def failing_download(url: str, target: Path) -> None:  # a fake: this machine has no internet
    raise OSError(f"no route to host for {url}")


def test_every_missing_file_is_listed_with_its_variable_the_model_dir_and_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    problems = check_weights(Settings(clip_weights="openai", dino_weights="/nowhere/dino.pth"),
                             download=failing_download)
    assert [p.variable for p in problems] == ["CASS_CLIP_WEIGHTS", "CASS_DINO_WEIGHTS"]
    msg = missing_weights_message(problems)
    assert "2 weight files are missing" in msg
    assert "CASS_CLIP_WEIGHTS = 'openai'" in msg and "CASS_DINO_WEIGHTS = '/nowhere/dino.pth'" in msg
    assert str(tmp_path / "models" / CLIP_SOURCES["openai"]["filename"]) in msg
    assert f"model dir (CASS_MODEL_DIR): {tmp_path / 'models'}" in msg
    # the offline recipe names both official downloads and where they go
    assert CLIP_SOURCES["openai"]["url"] in msg and DINO_SOURCES["dino_vitb8"]["url"] in msg
    assert "Offline:" in msg


def test_weights_present_give_no_problem(tiny_weights):
    clip, dino = tiny_weights
    assert check_weights(Settings(clip_weights=str(clip), dino_weights=str(dino))) == []


def test_named_checkpoints_already_in_the_model_dir_are_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path))
    (tmp_path / CLIP_SOURCES["openai"]["filename"]).write_bytes(b"x")
    (tmp_path / DINO_SOURCES["dino_vitb8"]["filename"]).write_bytes(b"x")
    assert check_weights(Settings(), download=failing_download) == []


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASS_", "LABEL_STUDIO_", "REDIS_URL"))}
    return {**env, "CASS_ALLOW_UNAUTHENTICATED": "true"}  # past backend.startup's basic-auth check


@pytest.mark.parametrize("args", [["--check"], []])
def test_the_command_reports_both_missing_files_at_once(args, tmp_path):
    env = {**clean_env(), "CASS_CLIP_WEIGHTS": "/nowhere/clip.safetensors",
           "CASS_DINO_WEIGHTS": "/nowhere/dino.pth", "CASS_MODEL_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "backend", *args, "--port", "1"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out
    assert "2 weight files are missing" in out.stderr
    assert "CASS_CLIP_WEIGHTS = '/nowhere/clip.safetensors'" in out.stderr
    assert "CASS_DINO_WEIGHTS = '/nowhere/dino.pth'" in out.stderr
    assert f"model dir (CASS_MODEL_DIR): {tmp_path}" in out.stderr


def test_the_message_points_to_a_docs_section_that_exists():
    """The missing-weights message names a file and a section; both must exist."""
    import re

    from cass.weight_sources import DOCS

    path, section = re.fullmatch(r'(\S+), "([^"]+)"', DOCS).groups()
    headings = [line.lstrip("#").strip() for line in (REPO / path).read_text().splitlines()
                if line.startswith("#")]
    assert section in headings, (path, section)
    assert DOCS in missing_weights_message(check_weights(Settings(clip_weights="/nowhere/c.pt",
                                                                  dino_weights="/nowhere/d.pth")))
