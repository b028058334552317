"""Label Studio label config -> what CASS segments: one :class:`~backend.controls.labels.BrushTarget`
per ``BrushLabels`` (:func:`parse_label_config`).

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

Anything CASS cannot work with raises :class:`~backend.controls.labels.LabelConfigError` naming what is
missing; so does a project over :class:`~backend.controls.limits.VocabularyLimits` (``CASS_MAX_CLASSES``
/ ``CASS_MAX_PROMPTS``). Parsing is linear in the config's size (one pass over the XML tree), and
parsed configs are cached by digest, bounded in bytes (the config text itself is not kept).
:mod:`backend.controls.config` applies the same per-control rules to ``<PolygonLabels>``.
"""
from __future__ import annotations

import logging

from cass.vocabulary import Vocabulary, VocabularyClass, VocabularyError

from backend.controls.digest_cache import DigestCache
from backend.controls.labels import (BACKGROUND_CLASS, BrushTarget, LabelConfigError, NothingRule, parse_threshold,
                                     split_prompts, targets_size)
from backend.controls.limits import VocabularyLimits

log = logging.getLogger("backend.controls.label_parse")

THRESHOLD_ATTR = "cass_threshold"
BACKGROUND_ATTR = "cass_background"
PAMR_ATTR = "cass_pamr"
#: Parsed configs by (digest, rule, limits); bounded in bytes (``PARSED_CACHE_BYTES``).
PARSED_CACHE_BYTES = 32 * 1024 * 1024
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
