"""What CASS segments for one ``BrushLabels`` control, and the errors of a label config or task.

:class:`BrushTarget` (the control, the ``<Image>`` it labels and its vocabulary), :class:`NothingRule`
(when a pixel gets no label), :class:`LabelConfigError` / :class:`TaskDataError`, and the small
attribute parsers the rules and the settings share (:func:`parse_threshold`, :func:`split_prompts`).
Parsing a whole label config into targets is :mod:`backend.controls.label_parse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cass.vocabulary import Vocabulary

from backend.controls.region_options import MinArea

#: Name of the extra class that holds the background prompts (never emitted as a region).
BACKGROUND_CLASS = "__cass_background__"


class LabelConfigError(ValueError):
    """A label config that CASS cannot produce brush predictions for."""


@dataclass(frozen=True)
class NothingRule:
    """When a pixel gets no label: below ``threshold`` (None: the preset's), or won by a background prompt."""

    threshold: float | None = None
    background_prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrushTarget:
    """One ``BrushLabels`` control and the ``Image`` it labels.

    ``vocabulary`` classes are the control's labels in config order, then (when the rule has
    background prompts) the background class, which is also ``vocabulary.background``.
    """

    from_name: str
    to_name: str
    image_value: str  # the Image tag's value, e.g. "$image" (a task data key) or a fixed URL
    vocabulary: Vocabulary
    rule: NothingRule
    pamr: bool | None = None  # cass_pamr on the control; None: the backend's default (CASS_PAMR)
    min_area: MinArea = MinArea()  # cass_min_area, else CASS_MIN_REGION_AREA (backend.controls.specks)
    instances: bool = False  # cass_instances: one region per connected component (docs/polygons.md)

    @property
    def data_key(self) -> str | None:
        """Task data key of the image (``"image"`` for ``$image``), None for a fixed URL."""
        return self.image_value[1:] if self.image_value.startswith("$") else None

    def is_background(self, class_index: int) -> bool:
        return self.vocabulary.classes[class_index].name == BACKGROUND_CLASS

    def image_url(self, task: dict) -> str:
        """The image reference of ``task`` for this target; :class:`TaskDataError` if absent."""
        key = self.data_key
        if key is None:
            return self.image_value
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise TaskDataError(f"task {_task_id(task)} has no 'data' object")
        value = data.get(key)
        if value is None or value == "":
            raise TaskDataError(f"task {_task_id(task)} has no data field {key!r} (needed by "
                                f"<Image name={self.to_name!r} value={self.image_value!r}>); it has "
                                f"{sorted(data)}")
        if not isinstance(value, str):
            raise TaskDataError(f"task {_task_id(task)}: data field {key!r} must be an image URL "
                                f"string, got {type(value).__name__}")
        return value


class TaskDataError(ValueError):
    """A task whose data does not hold what the label config needs."""


def _task_id(task) -> str:
    return str(task.get("id")) if isinstance(task, dict) and task.get("id") is not None else "?"


def parse_threshold(text: str, where: str) -> float:
    """``"0.3"`` -> 0.3; anything that is not a number in [0, 1] -> :class:`LabelConfigError`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LabelConfigError(f"{where} = {text!r} is not a number (expected a probability in [0, 1])") \
            from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise LabelConfigError(f"{where} = {text!r} is outside [0, 1] (it is a probability)")
    return value


def split_prompts(text: str) -> tuple[str, ...]:
    """``"sky, wall,,floor "`` -> ``("sky", "wall", "floor")`` (order kept, blanks and repeats dropped)."""
    out: dict[str, None] = {}  # insertion-ordered set: linear, not quadratic
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            out[part] = None
    return tuple(out)


def targets_size(targets) -> int:
    """Approximate bytes held by parsed targets (strings plus per-object overhead), for the cache."""
    targets = getattr(targets, "outputs", targets)  # backend.controls.Controls: its output targets
    if not isinstance(targets, tuple):
        return 200
    size = 64
    for t in targets:
        size += 600 + len(t.from_name) + len(t.to_name) + len(t.image_value)
        for cls in t.vocabulary.classes:
            size += 200 + 2 * len(cls.name) + sum(120 + 2 * len(p) for p in cls.prompts)
    return size
