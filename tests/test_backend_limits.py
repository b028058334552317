"""Big label configs (issue 9 items 3 and 4): linear parsing, per-project class/prompt limits
answered with a clear 400, and /setup memory bounded in bytes (parsed targets, not config texts)."""
from __future__ import annotations

import threading
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import ConfigError, Settings
from backend.controls.label_parse import parse_label_config
from backend.controls.labels import LabelConfigError
from backend.controls.limits import ByteBoundedLRU, VocabularyLimits
from backend.http.mlbackend import CASSManager
from backend.predict.predictor import Predictor
from tests.backend_fixtures import FakeEngine, ls_request

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

BIG = VocabularyLimits(10 ** 7, 10 ** 7)
LIVENESS_S = 60  # a hang guard only (the quadratic parser took 40 s to 197 s for these configs)


def config_of(body: str) -> str:
    return f"<View>{body}</View>"


def many_controls(n: int) -> str:
    return config_of("".join(f'<Image name="im{i}" value="$image"/><BrushLabels name="t{i}" toName="im{i}">'
                             f'<Label value="label {i}"/></BrushLabels>' for i in range(n)))


def many_prompts(n: int, labels: int = 1) -> str:
    per = n // labels
    body = "".join(f'<Label value="l{j}" predicted_values="' + ",".join(f"p{j}-{i}" for i in range(per - 1)) + '"/>'
                   for j in range(labels))
    return config_of(f'<Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{body}'
                     f'</BrushLabels>')


def parse_in_thread(config: str, limits=BIG):
    """Parse off the test thread with a liveness limit; returns the targets or the exception."""
    box = {}

    def run():
        try:
            box["out"] = parse_label_config(config, limits=limits)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["out"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIVENESS_S)
    assert not thread.is_alive(), "parsing did not finish (quadratic parser?)"
    return box["out"]


# ---------------------------------------------------------------------------------------------
# linear parsing
# ---------------------------------------------------------------------------------------------
def test_a_400_kb_config_of_3500_controls_parses_completely():
    config = many_controls(3500)
    assert len(config) > 390_000
    targets = parse_in_thread(config)
    assert len(targets) == 3500
    assert targets[1234].vocabulary.names == ["label 1234"] and targets[1234].to_name == "im1234"


def test_a_label_with_40000_predicted_values_parses_with_every_prompt_in_order():
    targets = parse_in_thread(many_prompts(40000))
    (target,) = targets
    prompts = target.vocabulary.classes[0].prompts
    assert len(prompts) == 40000 and prompts[:3] == ("l0", "p0-0", "p0-1") and prompts[-1] == "p0-39998"


def test_labels_belong_to_their_nearest_control_in_one_pass():
    config = config_of('<Image name="a" value="$a"/><Image name="b" value="$b"/>'
                       '<BrushLabels name="x" toName="a"><View><Label value="sky"/></View><Label value="road"/>'
                       '</BrushLabels><View><BrushLabels name="y" toName="b"><Label value="cat"/>'
                       '<Label value="cat" predicted_values="kitten"/></BrushLabels></View>')
    x, y = parse_label_config(config)
    assert x.vocabulary.names == ["sky", "road"]
    assert [c.prompts for c in y.vocabulary.classes] == [("cat", "kitten")]


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
def test_over_the_prompt_limit_is_a_label_config_error_naming_the_limit():
    with pytest.raises(LabelConfigError, match=r"3000 prompts .* over the limit of 2000 prompts per project "
                                               r"\(CASS_MAX_PROMPTS\)"):
        parse_label_config(many_prompts(3000, labels=30), limits=VocabularyLimits(1000, 2000))
    assert len(parse_label_config(many_prompts(2000, labels=20), limits=VocabularyLimits(1000, 2000))[0]
               .vocabulary.queries) == 2000


def test_over_the_class_limit_counts_all_brush_controls_together():
    with pytest.raises(LabelConfigError, match=r"over the limit of 10 classes per project \(CASS_MAX_CLASSES\)"):
        parse_label_config(many_controls(11), limits=VocabularyLimits(10, 100))
    assert len(parse_label_config(many_controls(10), limits=VocabularyLimits(10, 100))) == 10


def test_limits_come_from_the_environment_and_bad_values_are_refused():
    assert Settings.from_env({}).limits == VocabularyLimits()
    settings = Settings.from_env({"CASS_MAX_CLASSES": "5", "CASS_MAX_PROMPTS": "7"})
    assert settings.limits == VocabularyLimits(5, 7)
    with pytest.raises(ConfigError, match="CASS_MAX_PROMPTS"):
        Settings.from_env({"CASS_MAX_PROMPTS": "0"})
    with pytest.raises(ConfigError, match="CASS_MAX_CLASSES"):
        Settings.from_env({"CASS_MAX_CLASSES": "many"})


@pytest.fixture
def client():
    settings = Settings(warmup=False, warmup_queue=0, limits=VocabularyLimits(1000, 2000))
    app = create_app(settings, Predictor(FakeEngine()))
    return app.test_client()


def test_setup_and_predict_over_the_limit_answer_400_naming_it(client):
    config = many_prompts(3000, labels=30)
    body = ls_request("setup")
    body["schema"] = config
    resp = client.post("/setup", json=body)
    assert resp.status_code == 400
    assert "over the limit of 2000 prompts per project (CASS_MAX_PROMPTS)" in resp.get_json()["detail"]
    predict = ls_request("predict")
    predict["label_config"] = config
    resp = client.post("/predict", json=predict)
    assert resp.status_code == 400
    assert "CASS_MAX_PROMPTS" in resp.get_json()["detail"]


# ---------------------------------------------------------------------------------------------
# /setup memory (item 4)
# ---------------------------------------------------------------------------------------------
def test_setup_keeps_parsed_targets_and_a_digest_never_the_config_text(client):
    body = ls_request("setup")
    body["schema"] = body["schema"].replace("</View>", "<!--" + "x" * 2_000_000 + "--></View>")
    assert client.post("/setup", json=body).status_code == 200
    projects = CASSManager.pipeline().projects
    remembered = projects.recall(body["project"])
    assert len(remembered.digest) == 64 and remembered.controls[0].from_name == "tag"
    assert projects.retained_bytes < 100_000  # the 2 MB config is not retained


def test_many_large_setups_keep_retained_bytes_bounded(client):
    base = ls_request("setup")
    for project in range(40):
        body = dict(base, project=f"{project}.1700000000")
        body["schema"] = many_prompts(1900, labels=19).replace("</View>", f"<!-- {project} {'y' * 500_000} --></View>")
        assert client.post("/setup", json=body).status_code == 200
    projects = CASSManager.pipeline().projects
    assert projects.retained_bytes <= projects.MAX_BYTES
    from backend.controls import label_parse
    assert label_parse._parsed.bytes <= label_parse.PARSED_CACHE_BYTES
    assert projects.recall("39.1700000000").controls[0].vocabulary.queries[0] == "l0"
    # /predict without label_config uses the remembered targets of its project's /setup
    predict = dict(ls_request("predict"), project="39.1700000000")
    predict.pop("label_config", None)
    resp = client.post("/predict", json=predict)
    assert resp.status_code == 200


def test_byte_bounded_lru_drops_least_recent_and_refuses_oversize_entries():
    cache = ByteBoundedLRU(1400, sizeof=len)
    assert cache.put("a", "x" * 400) and cache.put("b", "x" * 300)
    cache.get("a")
    assert cache.put("c", "x" * 10)  # 400 + 300 + 10 + 3 * 256 key overhead > 1400: "b" goes first
    assert "b" not in cache and "a" in cache and cache.bytes <= 1400
    assert cache.put("huge", "x" * 5000) is False and "huge" not in cache


# ---------------------------------------------------------------------------------------------
# text encoding in chunks (item 3)
# ---------------------------------------------------------------------------------------------
class FakeTextEncoder:
    """Unit-test fake of cass.text.TextEncoder: records each call's size and the slots' state."""

    def __init__(self, slots):
        self.slots, self.calls, self.busy_during = slots, [], []

    def __call__(self, queries):
        self.calls.append(len(queries))
        self.busy_during.append(self.slots.stats()["busy_slots"])


def test_big_vocabularies_are_encoded_in_chunks_each_in_its_own_slot_turn():
    from backend.predict.text_budget import TEXT_CHUNK
    from cass.vocabulary import Vocabulary

    engine = FakeEngine()
    predictor = Predictor(engine)
    engine.text = FakeTextEncoder(predictor.slots)
    predictor.prepare_text(Vocabulary.from_names([f"c{i}" for i in range(100)]))
    assert engine.text.calls == [TEXT_CHUNK] * (100 // TEXT_CHUNK) + [100 % TEXT_CHUNK]
    assert engine.text.busy_during == [1] * len(engine.text.calls)  # a slot held per chunk
    assert predictor.slots.stats()["busy_slots"] == 0
