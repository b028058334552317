"""The project memory in the backend: settings and the control attribute; annotation events (the
recorded Label Studio 1.23.2 payloads) -> memory entries in Redis (a real redis-server) or in-process
-> ``/setup`` and ``/predict`` versions and masks; deletion reverts; the cached features are reused."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from backend.http.app import create_app
from backend.config import ConfigError, Settings
from backend.controls.config import parse_controls
from backend.corrections.events import dispatch
from backend.controls.labels import LabelConfigError
from backend.corrections.memory import memory_requested
from backend.controls.brush_rle import mask_to_rle
from backend.predict.loading import make_feature_cache
from backend.predict.predictor import Predictor
from tests.backend_fixtures import LEGACY_TOKEN, label_set_version, label_studio, ls_request, random_uploads
from tests.parity import tiny_model
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"{attr}>'
          '<Label value="cat"/><Label value="dog"/></BrushLabels></View>')
UPLOADS = ("/data/upload/1/a.png", "/data/upload/1/b.png")
H, W = 48, 64


def test_settings_and_control_attribute():
    assert Settings.from_env({"CASS_PROJECT_MEMORY": "true"}).project_memory is True
    assert Settings.from_env({}).project_memory is False
    with pytest.raises(ConfigError, match="CASS_PROJECT_MEMORY = 'maybe' is not a boolean"):
        Settings.from_env({"CASS_PROJECT_MEMORY": "maybe"})
    assert memory_requested(CONFIG.format(attr=' cass_memory="true"')) is True
    assert memory_requested(CONFIG.format(attr=' cass_memory="false"')) is False
    assert memory_requested(CONFIG.format(attr="")) is None
    with pytest.raises(LabelConfigError, match=r"<BrushLabels name='tag'> cass_memory = 'often' is not a boolean"):
        memory_requested(CONFIG.format(attr=' cass_memory="often"'))


@pytest.fixture
def ls():
    with label_studio(random_uploads(UPLOADS, H, W, seed=5)) as server:
        yield server


def _event(action: str, config: str, annotation_id: int = 7, mask: np.ndarray | None = None) -> dict:
    name = {"ANNOTATION_CREATED": "webhook_annotation_created", "ANNOTATION_UPDATED": "webhook_annotation_updated",
            "ANNOTATIONS_DELETED": "webhook_annotations_deleted"}[action]
    data = copy.deepcopy(ls_request(name))
    data.pop("action", None)
    data["project"]["label_config"] = config
    if action == "ANNOTATIONS_DELETED":
        data["annotations"] = [{"id": annotation_id}]
        return data
    data["annotation"]["id"] = annotation_id
    data["task"] = {"id": 1, "data": {"image": UPLOADS[0]}}
    data["annotation"]["task"] = 1
    data["annotation"]["result"] = [{"from_name": "tag", "to_name": "image", "type": "brushlabels",
                                     "original_width": W, "original_height": H,
                                     "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["dog"]}}]
    return data


def _masks(prediction: dict) -> list:
    """The regions without their random ids."""
    return [{k: v for k, v in r.items() if k != "id"} for r in prediction["result"]]


@pytest.mark.parametrize("store", ["in-process", "redis"])
@pytest.mark.parametrize("switch", ["env", "attribute"])
def test_an_annotation_changes_version_and_predictions_and_deleting_it_reverts(ls, store, switch, request):
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    config = CONFIG.format(attr=' cass_memory="true"' if switch == "attribute" else "")
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0,
                        redis_url=url, project_memory=switch == "env")
    engine = tiny_model()
    predictor = Predictor(engine, make_feature_cache(url))
    client = create_app(settings, predictor).test_client()
    setup = {**ls_request("setup"), "schema": config}
    plain_version = client.post("/setup", json=setup).get_json()["model_version"]
    assert plain_version == label_set_version(engine, config)
    tasks = [{"id": i + 1, "data": {"image": path}} for i, path in enumerate(UPLOADS)]
    body = {"tasks": tasks, "project": setup["project"], "label_config": config, "params": {}}
    before = client.post("/predict", json=body).get_json()["results"]
    assert [p["model_version"] for p in before] == [plain_version] * 2

    encodes = engine.timings.encode_calls
    mask = np.zeros((H, W), bool)
    mask[8:40, 10:50] = True
    controls_for = lambda project: parse_controls(project["label_config"])  # noqa: E731
    out = dispatch("ANNOTATION_CREATED", _event("ANNOTATION_CREATED", config, mask=mask), controls_for)
    stored = out["listeners"]["project_memory"][0]
    print(json.dumps({"test": "backend_memory", "store": store, **stored}))
    assert stored["memory"] == "stored" and stored["prototypes"] >= 1
    assert engine.timings.encode_calls == encodes, "the cached features must be reused, not re-encoded"

    version = client.post("/setup", json=setup).get_json()["model_version"]
    assert version == f"{plain_version}-mem.{stored['digest']}"
    after = client.post("/predict", json=body).get_json()["results"]
    assert [p["model_version"] for p in after] == [version] * 2
    assert _masks(after[1]) != _masks(before[1]), "the memory should change the other task's masks"

    again = dispatch("ANNOTATION_UPDATED", _event("ANNOTATION_UPDATED", config, mask=mask), controls_for)
    assert again["listeners"]["project_memory"][0]["memory"] == "stored"  # replaced, not added twice
    gone = dispatch("ANNOTATIONS_DELETED", _event("ANNOTATIONS_DELETED", config), controls_for)
    assert gone["listeners"]["project_memory"][0] == {"memory": "removed", "annotation": 7, "digest": ""}
    assert client.post("/setup", json=setup).get_json()["model_version"] == plain_version
    reverted = client.post("/predict", json=body).get_json()["results"]
    assert [_masks(p) for p in reverted] == [_masks(p) for p in before]
    assert [p["model_version"] for p in reverted] == [plain_version] * 2


def test_memory_off_by_default(ls):
    config = CONFIG.format(attr="")
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False, warmup_queue=0)
    create_app(settings, Predictor(tiny_model()))
    mask = np.ones((H, W), bool)
    out = dispatch("ANNOTATION_CREATED", _event("ANNOTATION_CREATED", config, mask=mask),
                   lambda project: parse_controls(project["label_config"]))
    assert out["listeners"]["project_memory"] == [{"memory": "off"}]
