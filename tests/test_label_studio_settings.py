"""Without LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY the backend says so at start (one WARNING line)
and in ``/health`` (``label_studio.configured: false`` with the hint); the README's run command
sets both (issue 22)."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")
README = Path(__file__).resolve().parents[1] / "README.md"


def start(settings, caplog):
    with caplog.at_level(logging.INFO):
        app = create_app(settings, Predictor(FakeEngine()))
    return app.test_client()


def test_without_label_studio_settings_a_warning_at_start_and_health_says_so(caplog):
    client = start(Settings(warmup=False, warmup_queue=0), caplog)
    lines = [r for r in caplog.records if "LABEL_STUDIO_URL" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "\n" not in message and "LABEL_STUDIO_API_KEY" in message and "401" in message
    state = client.get("/health").get_json()["label_studio"]
    assert state["configured"] is False and state["url"] is None and state["api_key"] is False
    assert "LABEL_STUDIO_URL" in state["hint"] and "401" in state["hint"]


def test_url_without_key_is_also_not_configured(caplog):
    client = start(Settings(label_studio_url="http://ls:8080", warmup=False, warmup_queue=0), caplog)
    assert sum("LABEL_STUDIO_API_KEY" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records) == 1
    state = client.get("/health").get_json()["label_studio"]
    assert state == {"configured": False, "url": "http://ls:8080", "api_key": False, "hint": state["hint"]}


def test_with_both_no_warning_and_health_says_configured(caplog):
    client = start(Settings(label_studio_url="http://ls:8080", label_studio_api_key=LEGACY_TOKEN,
                            warmup=False, warmup_queue=0), caplog)
    assert not [r for r in caplog.records if "LABEL_STUDIO" in r.getMessage() and r.levelno >= logging.WARNING]
    state = client.get("/health").get_json()["label_studio"]
    assert state == {"configured": True, "url": "http://ls:8080", "api_key": True}
    assert LEGACY_TOKEN not in client.get("/health").get_data(as_text=True)


def test_readme_run_command_sets_both():
    text = README.read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    runs = [c for c in commands if "docker run" in c or "python -m backend" in c or "gunicorn" in c]
    assert runs, section[:500]
    assert any("LABEL_STUDIO_URL=" in c and "LABEL_STUDIO_API_KEY=" in c for c in runs), runs
