"""One weight resolution for the CLI and the backend (``cass.weight_sources``): flag, else environment
variable, else default; every missing file reported in one message naming its variable and CLI flag."""
from __future__ import annotations

from pathlib import Path

from backend.config import Settings
from backend.predict.weights_check import check_weights
from cass.weight_sources import SOURCES, check_sources, chosen_sources, missing_weights_message


def failing_download(url: str, target: Path, **_) -> None:  # a fake: this machine has no internet
    raise OSError(f"no route to host for {url}")


def test_flags_override_environment_which_overrides_defaults():
    env = {"CASS_CLIP_WEIGHTS": "/env/clip.pt", "CASS_DINO_WEIGHTS": " ", "CASS_GLOBAL_CLIP_WEIGHTS": ""}
    assert chosen_sources(env) == {"CLIP": "/env/clip.pt", "DINO": "dino_vitb8", "global CLIP": None}
    assert chosen_sources(env, {"CLIP": "/flag/clip.pt", "DINO": None}) == \
        {"CLIP": "/flag/clip.pt", "DINO": "dino_vitb8", "global CLIP": None}
    assert chosen_sources({}) == {"CLIP": "openai", "DINO": "dino_vitb8", "global CLIP": None}


def test_backend_settings_resolve_like_the_cli():
    env = {"CASS_CLIP_WEIGHTS": "/env/clip.pt", "CASS_GLOBAL_CLIP_WEIGHTS": "openai-vit-l-14"}
    s = Settings.from_env(env)
    assert chosen_sources(env) == {"CLIP": s.clip_weights, "DINO": s.dino_weights,
                                   "global CLIP": s.global_clip_weights}
    assert [src.variable for src in SOURCES] == ["CASS_CLIP_WEIGHTS", "CASS_DINO_WEIGHTS",
                                                 "CASS_GLOBAL_CLIP_WEIGHTS"]


def test_one_message_names_every_file_its_variable_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("CASS_MODEL_DIR", str(tmp_path / "models"))
    problems = check_sources({"CLIP": "openai", "DINO": "/nowhere/dino.pth", "global CLIP": None},
                             download=failing_download)
    msg = missing_weights_message(problems)
    assert "2 weight files are missing" in msg
    assert str(tmp_path / "models" / "ViT-B-16.pt") in msg and "/nowhere/dino.pth" in msg
    for text in ("CASS_CLIP_WEIGHTS", "CASS_DINO_WEIGHTS", "--clip-weights", "--dino-weights"):
        assert text in msg
    # the backend's check is the same check
    backend = check_weights(Settings(clip_weights="openai", dino_weights="/nowhere/dino.pth"),
                            download=failing_download)
    assert missing_weights_message(backend) == msg


def test_global_clip_is_checked_only_when_chosen(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    assert check_sources({"CLIP": str(clip), "DINO": str(dino), "global CLIP": None}) == []
    problems = check_sources({"CLIP": str(clip), "DINO": str(dino), "global CLIP": str(tmp_path / "l14.pt")})
    assert [p.variable for p in problems] == ["CASS_GLOBAL_CLIP_WEIGHTS"]
    assert "--global-clip-weights" in missing_weights_message(problems)
