"""Label config -> brush targets: vocabularies, prompt mapping, the "nothing" rule, clear errors."""
from __future__ import annotations

import pytest

from backend.controls.label_parse import parse_label_config
from backend.controls.labels import BACKGROUND_CLASS, LabelConfigError, NothingRule, TaskDataError, split_prompts
from tests.backend_fixtures import BRUSH_CONFIG


def test_brush_labels_become_a_vocabulary_with_value_and_predicted_values_as_prompts():
    (target,) = parse_label_config(BRUSH_CONFIG)
    assert (target.from_name, target.to_name, target.data_key) == ("tag", "image", "image")
    assert target.vocabulary.names == ["red thing", "green thing", "blue thing"]
    assert [c.prompts for c in target.vocabulary.classes] == [
        ("red thing", "tomato", "fire truck"), ("green thing",), ("blue thing",)]
    assert target.vocabulary.background is None
    assert target.rule == NothingRule()


def test_alias_names_the_class_but_value_is_the_prompt():
    config = """<View><Image name="img" value="$photo"/>
      <BrushLabels name="seg" toName="img"><Label value="Domestic cat" alias="cat"/></BrushLabels></View>"""
    (target,) = parse_label_config(config)
    assert target.vocabulary.names == ["cat"]
    assert target.vocabulary.classes[0].prompts == ("Domestic cat",)
    assert target.data_key == "photo"


def test_labels_nested_in_views_and_other_controls_ignored():
    config = """<View><Image name="image" value="$image"/>
      <Choices name="quality" toName="image"><Choice value="good"/></Choices>
      <BrushLabels name="tag" toName="image"><View><Label value="sky"/></View><Label value="road"/></BrushLabels>
    </View>"""
    (target,) = parse_label_config(config)
    assert target.vocabulary.names == ["sky", "road"]


def test_every_brush_control_is_its_own_vocabulary():
    config = """<View><Image name="a" value="$left"/><Image name="b" value="$right"/>
      <BrushLabels name="objects" toName="a"><Label value="cat"/><Label value="dog"/></BrushLabels>
      <BrushLabels name="stuff" toName="b"><Label value="grass"/></BrushLabels></View>"""
    targets = parse_label_config(config)
    assert [(t.from_name, t.to_name, t.data_key, t.vocabulary.names) for t in targets] == [
        ("objects", "a", "left", ["cat", "dog"]), ("stuff", "b", "right", ["grass"])]


def test_predicted_values_are_trimmed_and_deduplicated():
    assert split_prompts(" cat, kitten,,cat , ") == ("cat", "kitten")
    config = """<View><Image name="i" value="$i"/><BrushLabels name="t" toName="i">
      <Label value="cat" predicted_values="cat, kitten , kitty"/></BrushLabels></View>"""
    (target,) = parse_label_config(config)
    assert target.vocabulary.classes[0].prompts == ("cat", "kitten", "kitty")


def test_nothing_rule_from_defaults_and_control_attributes():
    default = NothingRule(threshold=0.25, background_prompts=("wall",))
    (target,) = parse_label_config(BRUSH_CONFIG, default)
    assert target.rule == default
    assert target.vocabulary.names[-1] == BACKGROUND_CLASS
    assert target.vocabulary.background == 3
    assert target.vocabulary.classes[3].prompts == ("wall",)
    assert target.is_background(3) and not target.is_background(0)

    override = BRUSH_CONFIG.replace('toName="image">', 'toName="image" cass_threshold="0.6" cass_background="sky, floor">')
    (target,) = parse_label_config(override, default)
    assert target.rule == NothingRule(0.6, ("sky", "floor"))
    assert target.vocabulary.classes[-1].prompts == ("sky", "floor")

    switched_off = BRUSH_CONFIG.replace('toName="image">', 'toName="image" cass_background="">')
    (target,) = parse_label_config(switched_off, default)
    assert target.rule == NothingRule(0.25, ())
    assert target.vocabulary.background is None and BACKGROUND_CLASS not in target.vocabulary.names


@pytest.mark.parametrize("config, fragment", [
    ("", "label config is empty"),
    ("<View><Image name='i' value='$i'", "could not be parsed"),
    ("<View><Image name='image' value='$image'/><RectangleLabels name='box' toName='image'><Label value='a'/>"
     "</RectangleLabels></View>", "no <BrushLabels> control (found: <RectangleLabels name='box'>)"),
    ("<View><Text name='text' value='$text'/></View>", "no <BrushLabels> control (found: no control tags)"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='img'><Label value='a'/>"
     "</BrushLabels></View>", "points to toName='img', but the config has no object tag named 'img'"),
    ("<View><Text name='txt' value='$t'/><BrushLabels name='tag' toName='txt'><Label value='a'/>"
     "</BrushLabels></View>", "points to <Text name='txt'>, which is not an <Image>"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'/></View>",
     "has no <Label> children"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'><Label value='cat'/>"
     "<Label value='kitten' predicted_values='cat'/></BrushLabels></View>", "prompt 'cat' is used by two classes"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image' cass_threshold='high'>"
     "<Label value='cat'/></BrushLabels></View>", "cass_threshold = 'high' is not a number"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image' cass_threshold='1.5'>"
     "<Label value='cat'/></BrushLabels></View>", "outside [0, 1]"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image' cass_background='cat'>"
     "<Label value='cat'/></BrushLabels></View>", "used by two classes ('cat' and the background prompts)"),
])
def test_unusable_configs_name_what_is_missing(config, fragment):
    with pytest.raises(LabelConfigError) as info:
        parse_label_config(config)
    assert fragment in str(info.value)


def test_image_url_comes_from_the_task_data_key():
    (target,) = parse_label_config(BRUSH_CONFIG)
    assert target.image_url({"id": 1, "data": {"image": "/data/upload/1/a.png"}}) == "/data/upload/1/a.png"
    with pytest.raises(TaskDataError, match=r"task 7 has no data field 'image'.*it has \['photo'\]"):
        target.image_url({"id": 7, "data": {"photo": "x.png"}})
    with pytest.raises(TaskDataError, match="must be an image URL string, got list"):
        target.image_url({"id": 8, "data": {"image": ["a.png"]}})
    with pytest.raises(TaskDataError, match="has no 'data' object"):
        target.image_url({"id": 9})


def test_fixed_image_url_in_the_config():
    config = """<View><Image name="i" value="https://example.com/fixed.png"/>
      <BrushLabels name="t" toName="i"><Label value="x"/></BrushLabels></View>"""
    (target,) = parse_label_config(config)
    assert target.data_key is None
    assert target.image_url({"id": 1, "data": {}}) == "https://example.com/fixed.png"


def test_recorded_label_studio_config_parses():
    from tests.backend_fixtures import ls_request

    (target,) = parse_label_config(ls_request("setup")["schema"])
    assert target.vocabulary.names == ["cat", "dog"]
    assert target.vocabulary.classes[0].prompts == ("cat", "kitten")
    assert target.rule.threshold == 0.2  # LS 1.23.2 accepted the cass_threshold attribute
