"""The backend with the feature cache, warm-up and /metrics, on the REAL tiny engine (Flask test client).

Each test gets its own view of the session's tiny engine with a small inference size (one window),
fresh ``Timings`` and call counters on the image towers: DINO's ``last_keys`` and CLIP's trunk.
Both cache backends: in-process and a real ``redis-server`` (``REDIS_URL``).
"""
from __future__ import annotations

import logging
import threading
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # Flask 1.1.2 (pinned by label-studio-ml) imports itsdangerous.json
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import ConfigError, Settings
from backend.controls.label_parse import parse_label_config
from backend.http.mlbackend import CASSManager, setup_project_key
from backend.predict.loading import make_feature_cache
from backend.predict.predictor import Predictor
from cass.engine import Timings
from tests.backend_fixtures import label_studio, LEGACY_TOKEN, ls_request, png_bytes, three_band_image
from tests.redis_fixtures import redis_server, redis_server_fn, redis_url  # noqa: F401
from tests.test_cache import parse_metrics, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

CATS = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="cat" predicted_values="kitten"/><Label value="dog"/></BrushLabels></View>')
COLOURS = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
           '<Label value="red"/><Label value="green"/><Label value="blue"/></BrushLabels></View>')
A = "/data/upload/1/a.png"
A_AGAIN = "/data/upload/2/copy-of-a.png"  # the same bytes under another URL
B = "/data/upload/1/b.png"
C = "/data/upload/1/c.png"
MISSING = "/data/upload/1/missing.png"


def image(seed: int) -> bytes:
    rgb = three_band_image(24, 36)
    rgb[::5, ::7] = np.random.default_rng(seed).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    return png_bytes(rgb)


class CountingDino:
    """The engine's DINO with ``last_keys`` counted (and optionally held at ``gate``)."""

    def __init__(self, dino):
        self._dino = dino
        self.calls = 0
        self.gate: threading.Event | None = None
        self.waiting = threading.Event()

    def last_keys(self, x):
        self.calls += 1
        if self.gate is not None:
            self.waiting.set()
            if not self.gate.wait(20):
                raise AssertionError("test gate never opened")
        return self._dino.last_keys(x)

    def __getattr__(self, name):
        return getattr(self._dino, name)


@pytest.fixture
def engine(model):
    """A private view of the session engine: small preset, own timings, counted image towers."""
    engine = model.with_preset(model.preset.replace(short_side=112, long_side=224))
    engine.timings = Timings()
    engine.dino = CountingDino(model.dino)
    trunk = engine._clip_trunk
    engine.clip_calls = 0

    def counting_trunk(x):
        engine.clip_calls += 1
        return trunk(x)

    engine._clip_trunk = counting_trunk
    return engine


def tower_calls(engine) -> tuple[int, int]:
    return engine.dino.calls, engine.clip_calls


@pytest.fixture
def ls():
    with label_studio({A: image(0), A_AGAIN: image(0), B: image(1), C: image(2)}) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def cache_url(request):
    """None (in-process cache) or the URL of a flushed real redis-server."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def make_client(ls, engine):
    """``make_client(redis_url=None, **settings) -> (client, predictor)``; stops the warm-up threads after."""
    made = []

    def factory(redis_url=None, env_key=True, **overrides):
        settings = Settings(label_studio_url=ls.url if env_key else None,
                            label_studio_api_key=LEGACY_TOKEN if env_key else None,
                            redis_url=redis_url, warmup=False, **overrides)
        predictor = Predictor(engine, make_feature_cache(redis_url))
        encode = predictor.encode
        predictor.encode_calls = 0

        def counting_encode(*args, **kwargs):  # the Predictor's (engine-locked) encode
            predictor.encode_calls += 1
            return encode(*args, **kwargs)

        predictor.encode = counting_encode
        app = create_app(settings, predictor)
        made.append(predictor)
        return app.test_client(), predictor

    yield factory
    pipeline = (getattr(CASSManager, "init_kwargs", None) or {}).get("pipeline")
    warmer = pipeline.warmer if pipeline is not None else None
    if warmer is not None:
        warmer.close(timeout=60)
    for predictor in made:
        getattr(predictor.cache, "close", lambda: None)()


def predict_body(config: str, *images: str) -> dict:
    body = ls_request("predict")
    body["label_config"] = config
    body["tasks"] = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(images)]
    return body


def predict(client, config: str, *images: str) -> list[dict]:
    resp = client.post("/predict", json=predict_body(config, *images))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["results"]


def without_ids(results: list[dict]) -> list[dict]:
    return [{**r, "result": [{k: v for k, v in region.items() if k != "id"} for region in r["result"]]}
            for r in results]


def scrape(client) -> dict[str, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    return parse_metrics(resp.get_data(as_text=True))


def tasks_created(ls, client, config: str, *images: str, data: tuple[dict, ...] = ()) -> dict:
    """Project 1 set up with ``config`` (``/setup``, with fake Label Studio's address and token), tasks
    of ``images`` (and task ``data``) imported into it, and the ``TASKS_CREATED`` webhook naming them:
    the backend reads the tasks back from Label Studio by id (issue 21)."""
    setup = ls_request("setup")
    setup.update(schema=config, hostname=ls.url, access_token=LEGACY_TOKEN)
    client.post("/setup", json=setup)
    first = 10 + len(getattr(ls, "project_tasks", {}).get(1, []))
    tasks = [{"id": first + i, "data": d} for i, d in enumerate([*({"image": url} for url in images), *data])]
    ls.add_tasks(1, tasks)
    body = ls_request("webhook_tasks_created")
    body["project"]["label_config"] = config
    body["tasks"] = [{**body["tasks"][0], "id": t["id"], "data": {}} for t in tasks]
    return body


# ---------------------------------------------------------------------------------------------
# cache hits through /predict
# ---------------------------------------------------------------------------------------------
def test_new_labels_on_a_cached_image_run_no_image_tower_and_match_a_miss(make_client, cache_url, engine, ls,
                                                                          caplog):
    client, predictor = make_client(cache_url)
    caplog.set_level(logging.INFO, logger="backend.predict.predictor")
    first = predict(client, CATS, A)
    assert first[0]["result"]
    assert engine.dino.calls == 1 and engine.clip_calls >= 1
    towers = tower_calls(engine)

    hit = predict(client, COLOURS, A)  # another project's labels, same image
    assert tower_calls(engine) == towers, "a cache hit must not run CLIP's or DINO's image tower"
    assert {r["value"]["brushlabels"][0] for r in hit[0]["result"]} <= {"red", "green", "blue"}
    stats = predictor.cache.stats()
    assert (stats["hits"], stats["misses"], stats["backend"]) == (1, 1, "memory" if cache_url is None else "redis")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("task 1:")]
    assert len(lines) == 2 and "cache miss" in lines[0] and "cache hit" in lines[1]
    assert "encode 0 ms" in lines[1] and "segment " in lines[1]

    # the same labels on a cold cache (a miss) give exactly the same prediction
    miss = Predictor(engine).predict(predict_body(COLOURS, A)["tasks"], parse_label_config(COLOURS),
                                     lambda url, task_id: ls.files[url])
    assert tower_calls(engine) != towers  # (that one did encode)
    assert without_ids(hit) == without_ids(miss)


def test_the_same_image_under_two_urls_is_one_entry(make_client, cache_url, engine, request):
    client, predictor = make_client(cache_url)
    results = predict(client, CATS, A, A_AGAIN, B)
    assert all(r["result"] for r in results)
    assert without_ids(results[:1])[0]["result"] == without_ids(results[1:2])[0]["result"]
    assert engine.dino.calls == 2  # A and B; A_AGAIN is A's bytes
    stats = predictor.cache.stats()
    assert (stats["misses"], stats["hits"]) == (2, 1)
    if cache_url is None:
        assert stats["entries"] == 2
    else:
        keys = [k.decode() for k in request.getfixturevalue("redis_server").client().keys("cass:feat:*")]
        assert len([k for k in keys if not k.endswith(":lock")]) == 2


def test_redis_killed_mid_test_predictions_and_metrics_keep_working(ls, engine, make_client, redis_server_fn,  # noqa: F811
                                                                      monkeypatch):
    monkeypatch.setenv("CASS_REDIS_RETRY_S", "60")  # stays "down" for the rest of the test
    client, predictor = make_client(redis_server_fn.url)
    assert predict(client, CATS, A)[0]["result"]
    assert scrape(client)["cass_feature_cache_up"] == 1
    redis_server_fn.kill()

    after = predict(client, COLOURS, A, B)
    assert [("error" not in r) for r in after] == [True, True]
    assert all(r["result"] for r in after)
    again = predict(client, CATS, B)  # computed during the outage: served by the fallback LRU
    assert again[0]["result"]
    metrics = scrape(client)
    assert metrics["cass_feature_cache_up"] == 0
    assert metrics["cass_feature_cache_errors_total"] >= 1
    assert metrics["cass_predictions_total"] == 4 and metrics["cass_failed_tasks_total"] == 0
    assert metrics["cass_feature_cache_hits_total"] >= 1  # B from the fallback
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# warm-up on TASKS_CREATED
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("creds", ["env key", "setup token"])
def test_tasks_created_returns_at_once_and_warms_the_cache_in_the_background(make_client, cache_url, engine, ls,
                                                                             creds):
    client, predictor = make_client(cache_url, env_key=creds == "env key")
    # without LABEL_STUDIO_* in the env ("setup token"): the project's /setup address and token
    assert ls_request("setup")["project"] == setup_project_key(ls_request("webhook_tasks_created")["project"])
    hook = tasks_created(ls, client, COLOURS, A, A, B)
    engine.dino.gate = threading.Event()  # hold the warm-up's encode inside DINO
    try:
        resp = client.post("/webhook", json=hook)
        # answered while the encode is still held (it cannot have finished: the gate is closed)
        assert resp.status_code == 201
        assert resp.get_json()["warmup"] == {"tasks": 3, "unread": 0, "queued": 2, "rejected": 0, "skipped": 0}
        wait_until(engine.dino.waiting.is_set, "the warm-up worker started encoding")
        assert predictor.cache.stats()["misses"] == 1 and predictor.cache.stats()["hits"] == 0
    finally:
        engine.dino.gate.set()
    wait_until(lambda: scrape(client)["cass_warmup_computed_total"] == 2, "both images warmed")
    metrics = scrape(client)
    assert (metrics["cass_warmup_submitted_total"], metrics["cass_warmup_failed_total"],
            metrics["cass_warmup_queued"], metrics["cass_warmup_in_progress"]) == (2, 0, 0, 0)
    assert predictor.encode_calls == 2  # the warm-up encodes under the Predictor's engine lock
    warm_uploads = [r for r in ls.requests if r["path"] in (A, B)]
    assert len(warm_uploads) == 2
    read_back = [r for r in ls.requests if r["path"] == "/api/tasks"]
    assert len(read_back) == 1
    assert all(r["headers"]["Authorization"] == f"Token {LEGACY_TOKEN}" for r in warm_uploads + read_back)

    towers = tower_calls(engine)
    results = predict(client, CATS, A, B)
    assert all(r["result"] for r in results)
    assert tower_calls(engine) == towers, "warmed images must be cache hits"
    metrics = scrape(client)
    assert (metrics["cass_predict_cache_hits_total"], metrics["cass_predict_cache_misses_total"]) == (2, 0)
    assert (metrics["cass_feature_cache_hits_total"], metrics["cass_feature_cache_misses_total"]) == (2, 2)


def test_full_warmup_queue_is_counted_and_logged_once_and_never_blocks(make_client, engine, ls, caplog):
    client, predictor = make_client(None, warmup_queue=1)
    caplog.set_level(logging.INFO)
    engine.dino.gate = threading.Event()
    try:
        assert client.post("/webhook", json=tasks_created(ls, client, CATS, A)).get_json()["warmup"]["queued"] == 1
        wait_until(engine.dino.waiting.is_set, "the worker holds A")  # the queue (1 place) is empty
        first = client.post("/webhook", json=tasks_created(ls, client, CATS, B, C)).get_json()["warmup"]
        second = client.post("/webhook", json=tasks_created(ls, client, CATS, C)).get_json()["warmup"]
        # a warm-up queue of 1 reads back 1 task of each webhook (the first id): B, then C
        assert first == {"tasks": 1, "unread": 1, "queued": 1, "rejected": 0, "skipped": 0}
        assert second == {"tasks": 1, "unread": 0, "queued": 0, "rejected": 1, "skipped": 0}
        full = [r for r in caplog.records if "warm-up queue full" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.WARNING
        assert scrape(client)["cass_warmup_rejected_total"] == 1
    finally:
        engine.dino.gate.set()
    wait_until(lambda: scrape(client)["cass_warmup_computed_total"] == 2, "A and B warmed")
    assert all(r["result"] for r in predict(client, CATS, A, B, C))  # C is simply encoded now
    assert predictor.cache.stats()["hits"] == 2


def test_warmup_off_and_bad_or_foreign_webhooks(make_client, engine, ls):
    client, _ = make_client(None, warmup_queue=0)
    resp = client.post("/webhook", json=tasks_created(ls, client, CATS, A))
    assert resp.status_code == 201 and "warmup" not in resp.get_json()
    assert scrape(client)["cass_warmup_max_queue"] == 0

    client, _ = make_client(None)
    rect = "<View><Image name='image' value='$image'/><RectangleLabels name='b' toName='image'/></View>"
    resp = client.post("/webhook", json=tasks_created(ls, client, rect, A))  # /setup refused: not set up
    assert resp.status_code == 201 and "not set up" in resp.get_json()["refused"]
    body = tasks_created(ls, client, CATS, A, data=({"picture": B},  # no image field: skipped
                                                     {"image": MISSING}))  # fetch fails in the worker: counted
    resp = client.post("/webhook", json=body)
    assert resp.get_json()["warmup"] == {"tasks": 3, "unread": 0, "queued": 2, "rejected": 0, "skipped": 1}
    wait_until(lambda: scrape(client)["cass_warmup_computed_total"] + scrape(client)["cass_warmup_failed_total"] == 2,
               "warm-up finished")
    metrics = scrape(client)
    assert (metrics["cass_warmup_computed_total"], metrics["cass_warmup_failed_total"]) == (1, 1)
    assert engine.dino.calls == 1


# ---------------------------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------------------------
def test_metrics_names_and_counts(make_client, cache_url, engine):
    client, _ = make_client(cache_url)
    predict(client, CATS, A)                       # miss
    results = predict(client, COLOURS, A, MISSING)  # hit + a failed task
    assert "error" in results[1]
    text = client.get("/metrics").get_data(as_text=True)
    metrics = parse_metrics(text)
    expected = {
        "cass_predict_requests_total": 2, "cass_tasks_total": 3, "cass_predictions_total": 2,
        "cass_failed_tasks_total": 1, "cass_skipped_tasks_total": 0,
        "cass_feature_cache_hits_total": 1, "cass_feature_cache_misses_total": 1,
        "cass_feature_cache_errors_total": 0, "cass_predict_cache_hits_total": 1,
        "cass_predict_cache_misses_total": 1, "cass_encode_calls_total": 1, "cass_segment_calls_total": 2,
        "cass_warmup_submitted_total": 0, "cass_warmup_computed_total": 0, "cass_warmup_rejected_total": 0,
        "cass_warmup_max_queue": 1000, "cass_feature_cache_up": 1,
    }
    assert {name: metrics.get(name) for name in expected} == expected
    assert metrics["cass_encode_seconds_total"] > 0 and metrics["cass_segment_seconds_total"] > 0
    assert metrics["cass_feature_cache_stored_bytes_total"] > 0
    assert metrics["cass_feature_cache_served_bytes_total"] == metrics["cass_feature_cache_stored_bytes_total"]
    assert metrics[f'cass_model_info{{model_version="{engine.model_version}"}}'] == 1
    backend = "memory" if cache_url is None else "redis"
    assert metrics[f'cass_feature_cache_info{{backend="{backend}"}}'] == 1
    stage_sum = sum(v for k, v in metrics.items() if k.startswith("cass_engine_stage_seconds_total{stage="))
    # the stages are parts of the whole calls (which also decode and resize the image)
    assert 0 < stage_sum <= metrics["cass_encode_seconds_total"] + metrics["cass_segment_seconds_total"]
    # well-formed exposition: every sample has HELP and TYPE lines, each metric named once
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    for sample in metrics:
        assert sample.split("{")[0] in names
    assert client.get("/metrics?format=json").get_json()["failed_tasks"] == 1


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
def test_warmup_queue_setting():
    assert Settings.from_env({}).warmup_queue == 1000
    assert Settings.from_env({"CASS_WARMUP_QUEUE": "0"}).warmup_queue == 0
    assert Settings.from_env({"CASS_WARMUP_QUEUE": "50"}).warmup_queue == 50
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ConfigError, match="CASS_WARMUP_QUEUE"):
            Settings.from_env({"CASS_WARMUP_QUEUE": bad})


def test_setup_project_key_matches_label_studio():
    project = ls_request("webhook_tasks_created")["project"]
    assert setup_project_key(project) == ls_request("setup")["project"] == ls_request("predict")["project"]
    assert setup_project_key({"id": 3}) == "3"
