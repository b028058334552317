"""Import contracts (``.importlinter``, import-linter): ``cass`` never imports ``backend``, and the
backend's families stay layered (no import circles between them).

Runs ``lint-imports`` in a fresh process and fails with its report. On a violation the report names
the contract and every offending chain, e.g. ``backend.predict.x -> backend.http.y (l.12)``.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports_command() -> list[str]:
    """``lint-imports`` of this interpreter's environment (the venv's script, else the module)."""
    script = Path(sys.executable).with_name("lint-imports")
    if script.exists():
        return [str(script)]
    found = shutil.which("lint-imports")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def test_the_config_declares_both_contracts():
    text = (REPO / ".importlinter").read_text()
    assert "[importlinter:contract:cass-is-standalone]" in text
    assert "[importlinter:contract:backend-layers]" in text


def test_import_contracts_hold():
    out = subprocess.run([*lint_imports_command(), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, f"lint-imports found broken import contracts:\n{report}"
    assert "Contracts: 2 kept, 0 broken." in report, report
