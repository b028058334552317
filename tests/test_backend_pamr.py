"""PAMR in the backend: CASS_PAMR, the cass_pamr control attribute, the model version, and that the
label swap still reuses cached features (real tiny-weight engine, in-process cache)."""
from __future__ import annotations

import pytest

from backend.config import ConfigError, Settings
from backend.controls.label_parse import parse_label_config
from backend.controls.labels import LabelConfigError
from backend.predict.loading import make_feature_cache
from backend.predict.predictor import Predictor
from tests.backend_fixtures import png_bytes
from tests.parity import gradient_photo

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"{attr}>
    <Label value="{a}"/>
    <Label value="{b}"/>
  </BrushLabels>
</View>"""
IMAGE = png_bytes(gradient_photo(120, 160, (30, 90, 50, 110)))


def fetch(url, task_id):
    return IMAGE


def test_cass_pamr_env_is_parsed():
    assert Settings.from_env({}).pamr is False
    assert Settings.from_env({"CASS_PAMR": "true"}).pamr is True
    with pytest.raises(ConfigError, match="CASS_PAMR"):
        Settings.from_env({"CASS_PAMR": "maybe"})
    assert Settings.from_env({"CASS_GLOBAL_CLIP_WEIGHTS": "openai-vit-l-14"}).global_clip_weights == "openai-vit-l-14"


def test_cass_pamr_attribute_is_parsed():
    (t,) = parse_label_config(CONFIG.format(attr=' cass_pamr="true"', a="cat", b="dog"))
    assert t.pamr is True
    (t,) = parse_label_config(CONFIG.format(attr="", a="cat", b="dog"))
    assert t.pamr is None
    with pytest.raises(LabelConfigError, match="cass_pamr"):
        parse_label_config(CONFIG.format(attr=' cass_pamr="sometimes"', a="cat", b="dog"))


def test_pamr_project_predicts_and_label_swap_does_not_reencode(model):
    engine = model.with_preset("default")
    encodes = []
    original = engine.encode
    engine.encode = lambda image, **kw: encodes.append(1) or original(image, **kw)
    predictor = Predictor(engine, make_feature_cache(None))
    plain = parse_label_config(CONFIG.format(attr="", a="red square", b="background"))
    pamr = parse_label_config(CONFIG.format(attr=' cass_pamr="true"', a="red square", b="background"))
    swapped = parse_label_config(CONFIG.format(attr=' cass_pamr="true"', a="tomato", b="sky"))
    (p_plain,) = predictor.predict([{"id": 1, "data": {"image": "a.png"}}], plain, fetch)
    (p_pamr,) = predictor.predict([{"id": 1, "data": {"image": "a.png"}}], pamr, fetch)
    (p_swap,) = predictor.predict([{"id": 1, "data": {"image": "a.png"}}], swapped, fetch)
    assert len(encodes) == 1  # PAMR and the label swap reuse the cached features
    assert "error" not in p_pamr and p_pamr["result"] and p_swap["result"]
    assert "pamr" not in p_plain["model_version"]
    assert "-pamr10d8-16-labels." in p_pamr["model_version"] and "-pamr10d8-16-labels." in p_swap["model_version"]
    assert p_swap["model_version"] != p_pamr["model_version"]  # another label set: another version


def test_cass_pamr_false_switches_the_environment_default_off(model):
    engine = model.with_preset(model.preset.replace(pamr=True))
    predictor = Predictor(engine, make_feature_cache(None))
    off = parse_label_config(CONFIG.format(attr=' cass_pamr="false"', a="red square", b="background"))
    (pred,) = predictor.predict([{"id": 1, "data": {"image": "a.png"}}], off, fetch)
    assert "pamr" not in pred["model_version"] and pred["result"]
    assert "pamr" in predictor.model_version
    predictor.warm_up()  # warm-up with PAMR on passes the image too
