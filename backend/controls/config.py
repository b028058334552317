"""Label config -> the controls CASS answers: output controls (brush, polygon) and smart tools.

* every ``<BrushLabels>`` becomes a :class:`~backend.controls.labels.BrushTarget` (brush RLE regions);
* every ``<PolygonLabels>`` becomes a :class:`PolygonTarget` (the same vocabulary rules: ``<Label>``
  value/alias/predicted_values, ``cass_threshold``, ``cass_background``) plus the polygon attribute
  ``cass_tolerance`` (simplification tolerance in pixels of the original image, default 1.0);
* both take the region attributes ``cass_min_area`` (pixels of the original image or a percent such
  as ``"0.05%"``; default ``regions.min_area``, i.e. ``CASS_MIN_REGION_AREA``) and ``cass_instances``
  (``"true"``: one region per connected component; default off), see docs/polygons.md;
* every ``<RectangleLabels>`` / ``<KeyPointLabels>`` with ``smart="true"`` becomes a :class:`SmartTool`
  (interactive refinement, docs/interactive.md). Smart tools produce nothing on ``/predict`` without
  ``context``; their labels must name labels of an output control on the same ``<Image>``.

A config with BrushLabels and PolygonLabels gets both. A config with no output control raises
:class:`~backend.controls.labels.LabelConfigError` naming what was found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from backend.controls import label_parse
from backend.controls.digest_cache import DigestCache
from backend.controls.label_parse import check_limits, parse_label_config
from backend.controls.labels import BrushTarget, LabelConfigError, NothingRule, targets_size
from backend.controls.limits import VocabularyLimits
from backend.controls.region_options import MinArea, RegionDefaults

OUTPUT_TAGS = ("brushlabels", "polygonlabels")
SMART_TAGS = {"rectanglelabels": "rectangle", "keypointlabels": "keypoint"}
TOLERANCE_ATTR = "cass_tolerance"
MIN_AREA_ATTR = "cass_min_area"
INSTANCES_ATTR = "cass_instances"
DEFAULT_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class PolygonTarget(BrushTarget):
    """A ``<PolygonLabels>`` control: a :class:`BrushTarget` plus the polygon parameters."""

    tolerance_px: float = DEFAULT_TOLERANCE_PX

    kind = "polygon"


@dataclass(frozen=True)
class SmartTool:
    """A ``<RectangleLabels smart="true">`` (``kind="rectangle"``) or ``<KeyPointLabels smart="true">``
    (``kind="keypoint"``) control: ``labels`` are its label names (alias or value)."""

    from_name: str
    to_name: str
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Controls:
    """What a label config asks of CASS: ``outputs`` (BrushTarget / PolygonTarget, config order) and
    ``smart`` tools. Iterating yields the outputs (so it stands in for the old targets tuple)."""

    outputs: tuple[BrushTarget, ...]
    smart: tuple[SmartTool, ...] = ()

    def __iter__(self):
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, index):
        return self.outputs[index]

    def __bool__(self) -> bool:
        return bool(self.outputs)

    def output_for(self, to_name: str, label: str) -> BrushTarget | None:
        """The first output control on image ``to_name`` that has class ``label`` (None if none)."""
        for target in self.outputs:
            if target.to_name == to_name and label in target.vocabulary.names:
                return target
        return None


#: Parsed configs by (digest, rule, limits), bounded in bytes (the config text itself is not kept).
_parsed: DigestCache = DigestCache(32 * 1024 * 1024, max_entries=256,
                                   sizeof=lambda c: targets_size(tuple(c.outputs)) + 200 * len(c.smart))


def parse_controls(config: str, default_rule: NothingRule = NothingRule(),
                   limits: VocabularyLimits | None = None, regions: RegionDefaults | None = None) -> Controls:
    """All controls of ``config`` (cached by digest: Label Studio sends the same config on every call).
    ``limits``: the classes/prompts bound of all outputs together (default ``VocabularyLimits()``);
    ``regions``: the minimum region area of controls without ``cass_min_area`` (``Settings.regions``)."""
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty: CASS needs a <BrushLabels> or <PolygonLabels> "
                               "control with <Label> children and the <Image> it points to")
    limits = limits or VocabularyLimits()
    regions = regions or RegionDefaults()
    return _parsed.get_or_parse(config, lambda text: _parse(text, default_rule, limits, regions),
                                default_rule, limits, regions)


def _parse(config: str, default_rule: NothingRule, limits: VocabularyLimits, regions: RegionDefaults) -> Controls:
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(config)
    except Exception as exc:  # XML syntax and the SDK's own checks
        raise LabelConfigError(f"the label config could not be parsed: {exc}") from exc
    controls = list(interface.controls or [])
    objects = {o.name: o for o in (interface.objects or [])}
    # BrushLabels: backend.controls.label_parse's own parse, unchanged; PolygonLabels: the same vocabulary rules
    brushes = {t.from_name: t for t in parse_label_config(config, default_rule, limits)} \
        if any(c.tag.lower() == "brushlabels" for c in controls) else {}
    outputs = []
    for control in controls:
        tag = control.tag.lower()
        if tag == "brushlabels":
            outputs.append(_region_options(brushes[control.name], control, regions))
        elif tag == "polygonlabels":
            outputs.append(_region_options(_polygon_target(
                _vocabulary_target(interface, control, objects, default_rule), control), control, regions))
    if not outputs:
        found = ", ".join(f"<{c.tag} name={c.name!r}>" for c in controls) or "no control tags"
        raise LabelConfigError(
            "the label config has no <BrushLabels> control (found: " + found + ") and no <PolygonLabels>. "
            "CASS predicts masks: add e.g. <BrushLabels name=\"tag\" toName=\"image\"><Label value=\"cat\"/>"
            "</BrushLabels> (or <PolygonLabels ...>) next to <Image name=\"image\" value=\"$image\"/>")
    smart = tuple(_smart_tool(c, outputs) for c in controls
                  if c.tag.lower() in SMART_TAGS and str(c.attr.get("smart", "")).lower() == "true")
    check_limits(tuple(outputs), limits)  # brush and polygon vocabularies together
    return Controls(tuple(outputs), smart)


def _vocabulary_target(interface, control, objects, default_rule: NothingRule) -> BrushTarget:
    """backend.controls.label_parse's per-control parse (labels, prompts, duplicates, nothing rule) for any tag."""
    elements = label_parse._label_elements(interface, {control.name})
    labels = elements.get(control.name, []) if elements is not None else None
    try:
        return label_parse._target(control, objects, default_rule, labels)
    except LabelConfigError as exc:
        raise LabelConfigError(str(exc).replace("<BrushLabels ", f"<{control.tag} ")
                               .replace("per BrushLabels", f"per {control.tag}")) from None


def _number(control, attr: str, default: float, minimum: float) -> float:
    if attr not in control.attr:
        return default
    where = f"<{control.tag} name={control.name!r}> {attr}"
    text = control.attr[attr]
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LabelConfigError(f"{where} = {text!r} is not a number (pixels)") from None
    if not math.isfinite(value) or value < minimum:
        raise LabelConfigError(f"{where} = {text!r} must be a number >= {minimum:g} (pixels)")
    return value


def _polygon_target(base: BrushTarget, control) -> PolygonTarget:
    values = {f.name: getattr(base, f.name) for f in fields(BrushTarget)}
    return PolygonTarget(**values, tolerance_px=_number(control, TOLERANCE_ATTR, DEFAULT_TOLERANCE_PX, 0.0))


def _region_options(target: BrushTarget, control, defaults: RegionDefaults) -> BrushTarget:
    """``target`` with ``cass_min_area`` / ``cass_instances`` of ``control`` (brush and polygon alike)."""
    where = f"<{control.tag} name={control.name!r}>"
    min_area = defaults.min_area
    if MIN_AREA_ATTR in control.attr:
        text = control.attr[MIN_AREA_ATTR]
        try:
            min_area = MinArea.parse(text)
        except ValueError as exc:
            raise LabelConfigError(f"{where} {MIN_AREA_ATTR} = {text!r} {exc}") from None
    instances = False
    if INSTANCES_ATTR in control.attr:
        text = str(control.attr[INSTANCES_ATTR])
        if text.strip().lower() not in ("true", "false"):
            raise LabelConfigError(f"{where} {INSTANCES_ATTR} = {text!r} is not a boolean "
                                   f"(use \"true\" or \"false\")")
        instances = text.strip().lower() == "true"
    return replace(target, min_area=min_area, instances=instances)


def _smart_tool(control, outputs: list[BrushTarget]) -> SmartTool:
    where = f"<{control.tag} name={control.name!r} smart=\"true\">"
    names = [n for n in control.to_name if n]
    if len(names) != 1:
        raise LabelConfigError(f"{where} needs exactly one toName (an <Image>), got {control.to_name!r}")
    to_name = names[0]
    on_image = [t for t in outputs if t.to_name == to_name]
    if not on_image:
        raise LabelConfigError(f"{where} points to {to_name!r}, but no <BrushLabels>/<PolygonLabels> labels "
                               f"that image: a smart tool refines the regions of one of them")
    labels = tuple(attr.get("alias") or attr.get("value") for attr in
                   (a.attr for a in (control.labels_attrs or {}).values()))
    labels = tuple(name for name in labels if name)
    known = {name for t in on_image for name in t.vocabulary.names}
    unknown = [name for name in labels if name not in known]
    if unknown:
        raise LabelConfigError(f"{where}: label(s) {', '.join(map(repr, unknown))} are not labels of a "
                               f"<BrushLabels>/<PolygonLabels> on {to_name!r} (known: "
                               f"{', '.join(sorted(known))}); a smart tool's labels name the class to refine")
    return SmartTool(control.name, to_name, SMART_TAGS[control.tag.lower()], labels)
