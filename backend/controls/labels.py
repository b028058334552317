"""Label Studio label config -> what CASS segments: one :class:`BrushTarget` per ``BrushLabels``.

Parsing goes through label-studio-sdk's :class:`LabelInterface`. Rules:

* every ``<BrushLabels>`` control becomes a vocabulary for the ``<Image>`` its ``toName`` names;
* every ``<Label>`` inside it is a class named like Label Studio names it in results (``alias`` if
  set, else ``value``); its prompts are ``value`` plus the comma-separated ``predicted_values``;
* the optional "nothing" rule: pixels whose best class probability is under ``threshold`` get no
  region, and ``background`` prompts compete like a class whose pixels get no region. Both come from
  the environment (``CASS_THRESHOLD``, ``CASS_BACKGROUND``) and can be overridden per project with the
  control attributes ``cass_threshold="0.3"`` / ``cass_background="sky, wall"`` (an empty
  ``cass_background=""`` switches the environment's background prompts off);
* PAMR boundary refinement: ``CASS_PAMR`` for every project, ``cass_pamr="true"``/``"false"`` on the
  control for one (docs/options.md).

Anything CASS cannot work with raises :class:`LabelConfigError` naming what is missing; so does a
project over :class:`~backend.controls.limits.VocabularyLimits` (``CASS_MAX_CLASSES`` / ``CASS_MAX_PROMPTS``).
Parsing is linear in the config's size (one pass over the XML tree), and parsed configs are cached by
digest, bounded in bytes (the config text itself is not kept).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from cass.vocabulary import Vocabulary, VocabularyClass, VocabularyError

from backend.controls.digest_cache import DigestCache, config_digest  # noqa: F401  (config_digest re-exported)
from backend.controls.limits import VocabularyLimits
from backend.controls.region_options import MinArea

log = logging.getLogger("backend.controls.labels")

THRESHOLD_ATTR = "cass_threshold"
BACKGROUND_ATTR = "cass_background"
PAMR_ATTR = "cass_pamr"
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


#: Parsed configs by (digest, rule, limits); bounded in bytes (``PARSED_CACHE_BYTES``).
PARSED_CACHE_BYTES = 32 * 1024 * 1024


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


_parsed: DigestCache = DigestCache(PARSED_CACHE_BYTES, max_entries=256, sizeof=targets_size)


def parse_label_config(config: str, default_rule: NothingRule = NothingRule(),
                       limits: VocabularyLimits | None = None) -> tuple[BrushTarget, ...]:
    """All brush targets of ``config`` (cached by digest: Label Studio sends the same config on every
    call). ``limits``: default ``VocabularyLimits()`` (the backend passes the environment's)."""
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty: CASS needs a <BrushLabels> control with "
                               "<Label> children and the <Image> it points to")
    limits = limits or VocabularyLimits()
    return _parsed.get_or_parse(config, lambda text: _parse(text, default_rule, limits), default_rule, limits)


def _parse(config: str, default_rule: NothingRule, limits: VocabularyLimits) -> tuple[BrushTarget, ...]:
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(config)
    except Exception as exc:  # XML syntax and the SDK's own checks
        raise LabelConfigError(f"the label config could not be parsed: {exc}") from exc

    controls = list(interface.controls or [])
    brushes = [c for c in controls if c.tag.lower() == "brushlabels"]
    if not brushes:
        found = ", ".join(f"<{c.tag} name={c.name!r}>" for c in controls[:20]) or "no control tags"
        if len(controls) > 20:
            found += f" and {len(controls) - 20} more"
        raise LabelConfigError(
            "the label config has no <BrushLabels> control (found: " + found + "). CASS predicts brush "
            "masks: add e.g. <BrushLabels name=\"tag\" toName=\"image\"><Label value=\"cat\"/></BrushLabels> "
            "next to <Image name=\"image\" value=\"$image\"/>")
    objects = {o.name: o for o in (interface.objects or [])}
    labels_of = _label_elements(interface, {c.name for c in controls})
    check_label_count(sum(len(labels_of.get(c.name, ())) if labels_of is not None else
                          len(c.labels_attrs or {}) for c in brushes), limits)
    targets = tuple(_target(control, objects, default_rule,
                            labels_of.get(control.name, []) if labels_of is not None else None)
                    for control in brushes)
    check_limits(targets, limits)
    return targets


def check_label_count(labels: int, limits: VocabularyLimits) -> None:
    """Early refusal, before any prompt is split: more ``<Label>`` elements than classes allowed."""
    if labels > limits.max_classes:
        raise LabelConfigError(f"the label config has {labels} brush <Label>s, over the limit of "
                               f"{limits.max_classes} classes per project (CASS_MAX_CLASSES); split the "
                               f"label set across projects or raise CASS_MAX_CLASSES")


def check_limits(targets: tuple[BrushTarget, ...], limits: VocabularyLimits) -> None:
    """:class:`LabelConfigError` when all targets together exceed the classes or prompts limit."""
    classes = sum(len(t.vocabulary) for t in targets)
    prompts = sum(len(t.vocabulary.queries) for t in targets)
    if classes > limits.max_classes:
        raise LabelConfigError(f"the label config has {classes} classes, over the limit of "
                               f"{limits.max_classes} classes per project (CASS_MAX_CLASSES)")
    if prompts > limits.max_prompts:
        raise LabelConfigError(f"the label config has {prompts} prompts (label values, predicted_values "
                               f"and background prompts of all BrushLabels), over the limit of "
                               f"{limits.max_prompts} prompts per project (CASS_MAX_PROMPTS); use fewer "
                               f"predicted_values or raise CASS_MAX_PROMPTS")


def _label_elements(interface, control_names: set) -> dict[str, list[dict]] | None:
    """Control name -> the attributes of every ``<Label>`` under it in config order, duplicates
    included (``labels_attrs`` keeps one per name); None if the SDK's parsed tree is not available.

    One depth-first pass over the tree: a label belongs to its nearest enclosing control.
    """
    tree = getattr(interface, "_tree", None)
    if tree is None or not hasattr(tree, "iter"):
        return None
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    out: dict[str, list[dict]] = {}
    stack = [(root, None)]
    while stack:
        element, owner = stack.pop()
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag.lower() == "label":
            if owner is not None:
                out.setdefault(owner, []).append(dict(element.attrib))
        name = element.attrib.get("name") if tag else None
        inner = name if name in control_names else owner
        children = list(element)
        stack.extend((child, inner) for child in reversed(children))
    return out


def _target(control, objects: dict, default_rule: NothingRule, labels: list[dict] | None = None) -> BrushTarget:
    where = f"<BrushLabels name={control.name!r}>"
    names = [n for n in control.to_name if n]
    if len(names) != 1:
        raise LabelConfigError(f"{where} has toName={','.join(control.to_name)!r}: CASS needs exactly "
                               f"one <Image> per BrushLabels")
    to_name = names[0]
    obj = objects.get(to_name)
    if obj is None:
        raise LabelConfigError(f"{where} points to toName={to_name!r}, but the config has no object tag "
                               f"named {to_name!r} (add <Image name={to_name!r} value=\"$image\"/>)")
    if obj.tag.lower() != "image":
        raise LabelConfigError(f"{where} points to <{obj.tag} name={to_name!r}>, which is not an <Image>")
    if "valueList" in obj.attr:
        raise LabelConfigError(f"<Image name={to_name!r}> uses valueList (a list of images); CASS "
                               f"predicts one image per task")
    image_value = obj.value or ""
    if image_value.startswith("$") and not obj.value_is_variable:
        raise LabelConfigError(f"<Image name={to_name!r}> has value={image_value!r}: expected one "
                               f"task data field such as \"$image\"")

    rule = _rule(control, where, default_rule)
    if labels is None:
        labels = [label.attr for label in (control.labels_attrs or {}).values()]
    if not labels:
        raise LabelConfigError(f"{where} has no <Label> children: add at least one "
                               f"<Label value=\"...\"/>")
    prompts_of: dict[str, dict[str, None]] = {}  # class name -> prompts (ordered set), config order
    count: dict[str, int] = {}
    ignored = []
    for position, attr in enumerate(labels, 1):
        name = attr.get("alias") or attr.get("value")  # how Label Studio names the label in results
        value = (attr.get("value") or "").strip()
        prompts = split_prompts(",".join([value, attr.get("predicted_values", "")]))
        if name is None or not name.strip():
            ignored.append(f"<Label> #{position} has an empty value")
            continue
        if not prompts:
            ignored.append(f"<Label> #{position} ({name!r}) has no value or predicted_values to prompt with")
            continue
        if name == BACKGROUND_CLASS:
            raise LabelConfigError(f"{where}: the label name {BACKGROUND_CLASS!r} is reserved")
        merged = prompts_of.setdefault(name, {})
        merged.update(dict.fromkeys(prompts))
        count[name] = count.get(name, 0) + 1
    for reason in ignored:
        log.warning("%s: %s: ignored (no prediction for it)", where, reason)
    for name, n in count.items():
        if n > 1:
            log.warning("%s: label %r appears %d times: predicted as one label with the prompts %s", where,
                        name, n, ", ".join(prompts_of[name]))
    if not prompts_of:
        raise LabelConfigError(f"{where} has no usable <Label>: " + "; ".join(ignored) +
                               " (give each <Label> a value)")
    classes = [VocabularyClass(name, tuple(prompts)) for name, prompts in prompts_of.items()]
    background = None
    if rule.background_prompts:
        classes.append(VocabularyClass(BACKGROUND_CLASS, rule.background_prompts))
        background = len(classes) - 1
    try:
        vocabulary = Vocabulary(tuple(classes), background=background)
    except VocabularyError as exc:
        raise LabelConfigError(f"{where}: {exc}".replace(repr(BACKGROUND_CLASS), "the background prompts")) \
            from exc
    return BrushTarget(control.name, to_name, image_value, vocabulary, rule, _pamr(control, where))


def _pamr(control, where: str) -> bool | None:
    if PAMR_ATTR not in control.attr:
        return None
    text = str(control.attr[PAMR_ATTR]).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise LabelConfigError(f"{where} {PAMR_ATTR} = {control.attr[PAMR_ATTR]!r} is not a boolean "
                           f"(use \"true\" or \"false\")")


def _rule(control, where: str, default: NothingRule) -> NothingRule:
    threshold = default.threshold
    if THRESHOLD_ATTR in control.attr:
        threshold = parse_threshold(control.attr[THRESHOLD_ATTR], f"{where} {THRESHOLD_ATTR}")
    prompts = default.background_prompts
    if BACKGROUND_ATTR in control.attr:
        prompts = split_prompts(control.attr[BACKGROUND_ATTR])
    return NothingRule(threshold, prompts)
