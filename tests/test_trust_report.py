"""Issue 21, class 4: label names in the agreement report are data, not markup (table and PNG)."""
from __future__ import annotations

import pytest

from backend.corrections.report import chart, table

EVIL = ["cat\nforged    99  100.0  100.0  100.0  1  1  -", "$\\frac{a}{$", "dog\r\x1b[31m", "a$b$c", "tab\there"]


def row(iou: float, confusion=None) -> dict:
    return {"annotations": 3, "iou": iou, "precision": 0.5, "recall": 0.25, "annotated_px": 10, "predicted_px": 20,
            "top_confusion": confusion}


def test_a_newline_in_a_label_does_not_forge_table_rows():
    summary = {label: row(i / 10, (EVIL[0], 0.5)) for i, label in enumerate(EVIL)}
    text = table("7\nproject 8: forged", summary)
    lines = text.split("\n")
    assert len(lines) == 3 + len(EVIL), lines
    assert not any(line.startswith(("forged", "project 8")) for line in lines), lines
    assert "\x1b" not in text and "\r" not in text and "\t" not in text
    assert "cat\\nforged" in text


@pytest.mark.parametrize("label", EVIL)
def test_mathtext_labels_do_not_break_the_png(tmp_path, label):
    path = tmp_path / "chart.png"
    chart("$\\frac{", {label: row(0.4), "ok": row(0.9, (label, 0.2))}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_png_command_survives_a_mathtext_label(tmp_path, monkeypatch, capsys):
    from backend.corrections import report

    class Store:
        def totals(self, project):
            return {}

    monkeypatch.setattr(report, "store_for", lambda url: Store())
    monkeypatch.setattr(report, "summarize", lambda totals: {"$\\frac{a}{$": row(0.3)})
    assert report.main(["--project", "1", "--png", str(tmp_path / "c.png"), "--redis-url", "redis://x"]) == 0
    assert (tmp_path / "c.png").exists()


def test_the_report_does_not_print_the_redis_password(monkeypatch, capsys):
    from backend.corrections import report

    def down(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setattr(report, "store_for", down)
    assert report.main(["--project", "1", "--redis-url", "redis://:hunter2@cache:6379/0?password=hunter2"]) == 1
    assert "hunter2" not in capsys.readouterr().err
