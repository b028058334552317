"""Which weight files to load, and every missing one reported at once (the CLI and the backend share this).

Each model part has one source, chosen in this order (first that is set wins):

1. the command-line flag (``--clip-weights``, ``--dino-weights``, ``--global-clip-weights``; CLI only),
2. the environment variable (``CASS_CLIP_WEIGHTS``, ``CASS_DINO_WEIGHTS``, ``CASS_GLOBAL_CLIP_WEIGHTS``;
   empty or blank counts as unset),
3. the default (``openai``, ``dino_vitb8``, none).

A source is a named checkpoint (looked up in, or downloaded into, the model dir ``$CASS_MODEL_DIR``,
default ``~/.cache/cass``) or a local file; :func:`cass.weights.resolve` turns it into a file.
:func:`check_sources` resolves every chosen source and collects the failures, and
:func:`missing_weights_message` turns them into one message: each file with its variable and flag, the
model dir and the offline recipe. ``cass.weights.resolve`` alone stops at the first bad source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from cass.weights import CLIP_SOURCES, DINO_SOURCES, GLOBAL_CLIP_SOURCES, WeightsError, model_dir, resolve

DOCS = 'docs/backend.md, "Weights"'


@dataclass(frozen=True)
class WeightSource:
    """One model part's weights: its name, how it is chosen and its named checkpoints."""

    kind: str            # "CLIP" / "DINO" / "global CLIP"
    variable: str        # the environment variable that chooses it
    flag: str            # the CLI flag that chooses it (overrides the variable)
    default: str | None  # used when neither is set (None: the part is optional and off)
    registry: dict       # named checkpoints of this kind (cass.weights)


SOURCES: tuple[WeightSource, ...] = (
    WeightSource("CLIP", "CASS_CLIP_WEIGHTS", "--clip-weights", "openai", CLIP_SOURCES),
    WeightSource("DINO", "CASS_DINO_WEIGHTS", "--dino-weights", "dino_vitb8", DINO_SOURCES),
    WeightSource("global CLIP", "CASS_GLOBAL_CLIP_WEIGHTS", "--global-clip-weights", None, GLOBAL_CLIP_SOURCES),
)
BY_KIND = {s.kind: s for s in SOURCES}


def _set(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


def chosen_sources(env: Mapping[str, str] | None = None,
                   flags: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """``kind -> source`` for every part: ``flags[kind]``, else the environment variable, else the default.

    Args:
        env: the environment (default ``os.environ``).
        flags: command-line values by kind; ``None`` or missing = not given.
    """
    env = os.environ if env is None else env
    flags = flags or {}
    return {s.kind: _set(flags.get(s.kind)) or _set(env.get(s.variable)) or s.default for s in SOURCES}


@dataclass(frozen=True)
class WeightsProblem:
    """A chosen source that did not resolve to a file."""

    source: WeightSource
    value: str           # the chosen source (flag, variable or default)
    reason: str          # the WeightsError text (names the file that was looked for)

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def variable(self) -> str:
        return self.source.variable

    @property
    def registry(self) -> dict:
        return self.source.registry


def check_sources(values: Mapping[str, str | None],
                  download: Callable[..., None] | None = None) -> list[WeightsProblem]:
    """Resolve every chosen source (``kind -> source``, None = part off); one problem per failure.

    A named checkpoint already in the model dir is used as is; a missing one is downloaded as at a
    normal start (``download(url, target, sha256=...)`` replaces the real download in tests).
    """
    problems = []
    for kind, value in values.items():
        if value is None:
            continue
        source = BY_KIND[kind]
        try:
            resolve(value, source.registry, kind, download=download)
        except WeightsError as exc:
            problems.append(WeightsProblem(source, value, str(exc)))
    return problems


def missing_weights_message(problems: list[WeightsProblem]) -> str:
    """One message for all ``problems``: each file with its variable and flag, the model dir, the offline
    recipe (which URL goes to which file) and where the docs explain it."""
    where = model_dir()
    n = len(problems)
    lines = [f"{n} weight file{'s are' if n != 1 else ' is'} missing or unusable:"]
    for p in problems:
        lines.append(f"  - {p.kind}: {p.variable} = {p.value!r} (or {p.source.flag}): {p.reason}")
    lines.append(f"  model dir (CASS_MODEL_DIR): {where}")
    lines.append("Offline: on a machine with internet download the official checkpoint(s)")
    for p in problems:
        name = p.value[len("local-file:"):] if p.value.startswith("local-file:") else p.value
        entries = [p.registry[name]] if name in p.registry else list(p.registry.values())
        for entry in entries:
            lines.append(f"    {p.kind}: {entry['url']}\n        -> {where / entry['filename']}")
    lines.append(f"  and copy them to those paths (or set CASS_MODEL_DIR to the folder holding them), "
                 f"or point {' / '.join(p.variable for p in problems)} (flags "
                 f"{' / '.join(p.source.flag for p in problems)}) at local weight files ({DOCS}).")
    return "\n".join(lines)
