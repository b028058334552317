"""Check both weight sources before loading the engine, and report every problem in one message.

``cass.weights.resolve`` stops at the first bad source; a user then fixes CLIP, restarts, and only
then learns about DINO. :func:`check_weights` resolves each source (a named checkpoint already in the
model dir is used as is, a missing one is downloaded as at a normal start) and collects the errors;
:func:`missing_weights_message` turns them into one message: every missing file with the variable
that chose it, the model dir, and the offline recipe (which URL goes to which file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cass.weights import CLIP_SOURCES, DINO_SOURCES, WeightsError, model_dir, resolve

from backend.config import Settings


@dataclass(frozen=True)
class WeightsProblem:
    kind: str          # "CLIP" / "DINO"
    variable: str      # the environment variable that selects this source
    value: str         # its value (or the default)
    registry: dict     # the named sources of this kind (for the offline recipe)
    reason: str        # the WeightsError text


def _sources(settings: Settings) -> list[tuple[str, str, str, dict]]:
    return [("CLIP", "CASS_CLIP_WEIGHTS", settings.clip_weights, CLIP_SOURCES),
            ("DINO", "CASS_DINO_WEIGHTS", settings.dino_weights, DINO_SOURCES)]


def check_weights(settings: Settings, download: Callable[[str, Path], None] | None = None) -> list[WeightsProblem]:
    """Resolve every weight source of ``settings``; one :class:`WeightsProblem` per source that fails
    (empty: all files are there). ``download(url, target)`` replaces the real download (tests)."""
    problems = []
    for kind, variable, value, registry in _sources(settings):
        try:
            resolve(value, registry, kind, download=download)
        except WeightsError as exc:
            problems.append(WeightsProblem(kind, variable, value, registry, str(exc)))
    return problems


def missing_weights_message(problems: list[WeightsProblem]) -> str:
    """One message for all ``problems``: each file and its variable, the model dir, the offline recipe."""
    where = model_dir()
    n = len(problems)
    lines = [f"{n} weight file{'s are' if n != 1 else ' is'} missing or unusable:"]
    for p in problems:
        lines.append(f"  - {p.kind}: {p.variable} = {p.value!r}: {p.reason}")
    lines.append(f"  model dir (CASS_MODEL_DIR): {where}")
    lines.append("Offline: on a machine with internet download the official checkpoint(s)")
    for p in problems:
        name = p.value[len("local-file:"):] if p.value.startswith("local-file:") else p.value
        entries = [p.registry[name]] if name in p.registry else list(p.registry.values())
        for entry in entries:
            lines.append(f"    {p.kind}: {entry['url']}\n        -> {where / entry['filename']}")
    lines.append(f"  and copy them to those paths (or set CASS_MODEL_DIR to the folder holding them), "
                 f"or set {' / '.join(p.variable for p in problems)} to local weight files "
                 f"(docs/backend.md, \"Weights\").")
    return "\n".join(lines)


def weights_error(settings: Settings, download: Callable[[str, Path], None] | None = None) -> str | None:
    """The :func:`missing_weights_message` for ``settings``, or None when every source resolves."""
    problems = check_weights(settings, download)
    return missing_weights_message(problems) if problems else None
