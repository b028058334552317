"""One way through (issue 20): the same tasks through every door -- ``/predict``, a job chunk,
``TASKS_CREATED`` warm-up then ``/predict``, a smart region -- for a BrushLabels, a PolygonLabels and
a mixed config, with and without project memory, give identical regions and ``model_version``.

Real parts: the tiny-weight engine, the Flask app built by the composition root, a fake Label
Studio on a real socket (images, annotations), a real redis-server for the job store. The job's
Label Studio API (config, task list, bulk import) is :class:`FakeProjects` (named as a fake)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from backend.config import Settings
from backend.controls.brush_rle import mask_to_rle, rle_to_mask
from backend.http.app import create_app
from backend.http.mlbackend import CASSManager
from backend.jobs.queue import Jobs
from backend.jobs.runner import ChunkRun, WorkerContext
from backend.jobs.spec import JobSpec
from backend.jobs.store import JobStore
from backend.predict.loading import make_feature_cache
from backend.predict.predictor import Predictor
from backend.predict.projects import setup_project_key
from tests.backend_fixtures import LEGACY_TOKEN, label_studio, ls_request, png_bytes, random_uploads
from tests.parity import tiny_model
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

H, W = 48, 64
UPLOADS = ("/data/upload/1/a.png", "/data/upload/1/b.png", "/data/upload/1/c.png")
LABELS = '<Label value="cat"/><Label value="dog"/><Label value="grass"/>'
CONFIGS = {
    "brush": f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{LABELS}'
             f'</BrushLabels></View>',
    "polygon": f'<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">{LABELS}'
               f'</PolygonLabels></View>',
    "mixed": f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{LABELS}'
             f'</BrushLabels><PolygonLabels name="poly" toName="image">{LABELS}</PolygonLabels>'
             f'<KeyPointLabels name="kp" toName="image" smart="true"><Label value="dog"/></KeyPointLabels></View>',
    # issue 22: one region per connected object (no minimum area: the noise images give many small
    # ones), each scored by its own pixels (the engine's probabilities)
    "instances": f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image" '
                 f'cass_instances="true" cass_min_area="1">{LABELS}</BrushLabels><PolygonLabels name="poly" toName="image" '
                 f'cass_instances="true" cass_min_area="1">{LABELS}</PolygonLabels>'
                 f'<KeyPointLabels name="kp" toName="image" smart="true"><Label value="dog"/></KeyPointLabels></View>',
}


class FakeProjects:
    """Fake Label Studio API for the job runner: one project's config and tasks; stores imports."""

    def __init__(self, config: str, tasks: list[dict]):
        self.config, self.data = config, {t["id"]: t["data"] for t in tasks}
        self.preds: dict[int, list[dict]] = {t["id"]: [] for t in tasks}

    def label_config(self, project):
        return self.config

    def tasks(self, project, ids=None, view=None):
        keep = sorted(self.data if ids is None else [i for i in ids if i in self.data])
        return [{"id": i, "data": self.data[i], "predictions": [{"model_version": p["model_version"]}
                                                                for p in self.preds[i]]} for i in keep]

    def predicted(self, project, ids, version):
        return {i for i in ids if any(p["model_version"] == version for p in self.preds.get(i, []))}

    def import_predictions(self, project, predictions):
        for p in predictions:
            self.preds[p["task"]].append(p)
        return len(predictions)


@pytest.fixture(scope="module")
def engine():
    return tiny_model()


@pytest.fixture
def ls():
    with label_studio(random_uploads(UPLOADS, H, W, seed=11)) as server:
        yield server


def regions(prediction: dict) -> list:
    """A prediction's regions without their random ids, in a stable order."""
    out = [{k: v for k, v in r.items() if k != "id"} for r in prediction["result"]]
    return sorted(out, key=repr)


def annotation(config_name: str) -> dict:
    """An annotator's correction of task 1 (a dog in the middle) for the config's first output."""
    if config_name == "polygon":
        return {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": W,
                "original_height": H, "value": {"points": [[20, 20], [70, 20], [70, 80], [20, 80]],
                                                "closed": True, "polygonlabels": ["dog"]}}
    mask = np.zeros((H, W), bool)
    mask[10:40, 12:50] = True
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W,
            "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["dog"]}}


def remember_a_correction(client, ls, config: str, config_name: str) -> None:
    """An annotation webhook (the /webhook door) that stores a project-memory entry; the backend reads
    the annotation, task and project back from (fake) Label Studio."""
    data = ls_request("webhook_annotation_created")
    data["project"]["label_config"] = config
    data["task"] = {"id": 1, "data": {"image": UPLOADS[0]}, "project": data["project"]["id"]}
    data["annotation"].update(id=7, task=1, result=[annotation(config_name)])
    ls.add_annotation_event(data)
    out = client.post("/webhook", json=data).get_json()
    assert out["result"]["listeners"]["project_memory"][0]["memory"] == "stored", out


def check_object_scores(engine, config: str, predictions: list[dict], exact: bool) -> None:
    """``cass_instances``: every brush region (one connected object) scores the mean probability of its
    class over its own pixels and two objects of one class score differently (``exact``: recomputed
    here from the engine's probabilities; with project memory they are fused with it, so only the
    rest is checked); every polygon (the same objects) carries one of its label's brush scores."""
    vocabulary = CASSManager.pipeline().parse(config).outputs[0].vocabulary  # the brush control's
    differ = 0
    for task_index, prediction in enumerate(predictions):
        brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        by_label: dict[str, list[float]] = {}
        if exact:
            images = list(random_uploads(UPLOADS, H, W, seed=11).values())  # the ls fixture's uploads
            probs = engine.segment(engine.encode(images[task_index]), vocabulary, return_probs=True).probs
        for region in brush:
            (label,) = region["value"]["brushlabels"]
            by_label.setdefault(label, []).append(region["score"])
            if exact:
                mask = rle_to_mask(region["value"]["rle"], H, W)
                expected = float(probs[vocabulary.names.index(label)][mask].mean())
                assert region["score"] == pytest.approx(expected, abs=2e-4), (label, region["score"], expected)
        differ += sum(len(set(scores)) > 1 for scores in by_label.values())
        for region in prediction["result"]:
            if region["type"] == "polygonlabels":
                (label,) = region["value"]["polygonlabels"]
                assert region["score"] in by_label[label], (label, region["score"], by_label[label])
    # (with memory the fused map of the random tiny weights is one class, one object, per image)
    assert differ or not exact, "no class with two objects of different scores"


@pytest.mark.parametrize("memory", [False, True], ids=["no-memory", "memory"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_every_door_gives_the_same_regions_and_version(ls, engine, redis_url, config_name, memory):  # noqa: F811
    config = CONFIGS[config_name]
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    # Redis holds the job records and the project memory (shared by the two apps built below)
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        warmup_queue=16, project_memory=memory, redis_url=redis_url)
    predictor = Predictor(engine, make_feature_cache(None))
    client = create_app(settings, predictor).test_client()
    setup = {**ls_request("setup"), "schema": config}
    project_key = setup["project"]
    version = client.post("/setup", json=setup).get_json()["model_version"]
    if memory:
        remember_a_correction(client, ls, config, config_name)
        with_memory = client.post("/setup", json=setup).get_json()["model_version"]
        assert with_memory.startswith(version + "-mem.") and with_memory != version
        version = with_memory
    tasks = [{"id": i + 1, "data": {"image": path}} for i, path in enumerate(UPLOADS)]
    body = {"tasks": tasks, "project": project_key, "label_config": config, "params": {}}

    # door 1: /predict
    direct = client.post("/predict", json=body).get_json()["results"]
    assert [p["model_version"] for p in direct] == [version] * len(tasks)
    assert all(p["result"] for p in direct)
    kinds = {r["type"] for p in direct for r in p["result"]}
    assert kinds == {"brush": {"brushlabels"}, "polygon": {"polygonlabels"},
                     "mixed": {"brushlabels", "polygonlabels"}, "instances": {"brushlabels", "polygonlabels"}}[config_name]
    if config_name == "instances":
        check_object_scores(engine, config, direct, exact=not memory)

    # door 2: a job chunk (the runner, through the same pipeline)
    projects = FakeProjects(config, tasks)
    project_id = int(str(project_key).split(".")[0])
    rec = Jobs(conn, projects).start(JobSpec(project_id), predictor.model_version)
    ctx = WorkerContext(CASSManager.pipeline(), settings, projects, JobStore(conn), post_every=2)
    counts = ChunkRun(ctx, rec["id"], [t["id"] for t in tasks]).run()
    assert counts == {"done": len(tasks), "skipped": 0, "failed": 0, "cancelled": False}
    posted = {i: p for i, ps in projects.preds.items() for p in ps}
    assert [posted[t["id"]]["model_version"] for t in tasks] == [version] * len(tasks)
    assert [regions(posted[t["id"]]) for t in tasks] == [regions(p) for p in direct]
    # the same chunk again: every task already has a prediction of this version
    JobStore(conn).set_status(rec["id"], "running")
    assert ChunkRun(ctx, rec["id"], [t["id"] for t in tasks]).run()["skipped"] == len(tasks)

    # door 3: TASKS_CREATED warm-up (a fresh cache), then /predict: cache hits, same answer
    predictor = Predictor(engine, make_feature_cache(None))
    client = create_app(settings, predictor).test_client()
    client.post("/setup", json=setup)
    hook = ls_request("webhook_tasks_created")
    hook["tasks"] = [{"id": t["id"]} for t in tasks]  # a notification: the tasks are read back by id
    ls.add_tasks(hook["project"]["id"], tasks)
    assert setup_project_key(hook["project"]) == project_key
    out = client.post("/webhook", json=hook).get_json()
    assert out["warmup"]["queued"] == len(tasks), out
    warmer = CASSManager.pipeline().warmer
    deadline = time.monotonic() + 60
    while warmer.stats()["done"] < len(tasks):
        assert time.monotonic() < deadline, warmer.stats()
        time.sleep(0.05)
    warmed = client.post("/predict", json=body).get_json()["results"]
    assert (predictor.counters["cache_hits"], predictor.counters["cache_misses"]) == (len(tasks), 0)  # warmed
    assert [p["model_version"] for p in warmed] == [version] * len(tasks)
    assert [regions(p) for p in warmed] == [regions(p) for p in direct]

    # door 4: a smart region (the mixed and instances configs have a smart keypoint): the same version
    if config_name in ("mixed", "instances"):
        point = {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "original_width": W,
                 "original_height": H, "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["dog"]}}
        smart = client.post("/predict", json={**body, "tasks": tasks[:1], "context": {"result": [point]}})
        assert smart.status_code == 200, smart.get_data(as_text=True)
        (answer,) = smart.get_json()["results"]
        assert answer["model_version"] == version and answer["result"]


def test_a_task_that_fails_is_the_same_visible_error_prediction_through_predict_and_a_job(ls, engine, redis_url):  # noqa: F811
    """Issue 22: a task whose image cannot be fetched is answered by ``/predict`` and posted by a job as
    the same visible error prediction (no regions, score 0, ``error: <reason> (<version>)``); the job
    still records it as failed (exit status 4), posts it once however often its chunk runs, and the
    next ``--only-outdated`` job predicts the task again."""
    from backend.jobs.cli import EXIT_FAILED_TASKS, exit_code

    config = CONFIGS["brush"]
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        warmup_queue=0, redis_url=redis_url)
    predictor = Predictor(engine, make_feature_cache(None))
    client = create_app(settings, predictor).test_client()
    setup = {**ls_request("setup"), "schema": config}
    version = client.post("/setup", json=setup).get_json()["model_version"]
    missing = "/data/upload/1/missing.png"
    tasks = [{"id": 1, "data": {"image": UPLOADS[0]}}, {"id": 2, "data": {"image": missing}}]
    body = {"tasks": tasks, "project": setup["project"], "label_config": config, "params": {}}

    good, failed = client.post("/predict", json=body).get_json()["results"]
    assert good["model_version"] == version and good["result"]
    assert failed["result"] == [] and failed["score"] == 0.0, failed
    assert failed["model_version"].startswith("error: ImageFetchError: ") and "HTTP 404" in failed["model_version"]
    assert failed["model_version"].endswith(f" ({version})")

    projects = FakeProjects(config, tasks)
    project_id = int(str(setup["project"]).split(".")[0])
    jobs = Jobs(conn, projects)
    rec = jobs.start(JobSpec(project_id), predictor.model_version)
    ctx = WorkerContext(CASSManager.pipeline(), settings, projects, JobStore(conn), post_every=8)
    counts = ChunkRun(ctx, rec["id"], [1, 2]).run()
    assert counts == {"done": 1, "skipped": 0, "failed": 1, "cancelled": False}
    (posted,) = projects.preds[2]
    assert {k: posted[k] for k in ("result", "score", "model_version")} == \
        {k: failed[k] for k in ("result", "score", "model_version")}
    assert regions(projects.preds[1][0]) == regions(good)
    rec = jobs.get(rec["id"])
    assert rec["status"] == "finished" and (rec["done"], rec["failed"]) == (1, 1), rec
    assert rec["failed_tasks"][2].startswith("ImageFetchError: ") and exit_code(rec) == EXIT_FAILED_TASKS
    # the chunk again (RQ retries it after a worker died): the error is recorded, not posted twice
    JobStore(conn).set_status(rec["id"], "running")
    assert ChunkRun(ctx, rec["id"], [1, 2]).run() == {"done": 0, "skipped": 1, "failed": 1, "cancelled": False}
    assert len(projects.preds[2]) == 1

    # the image is there now: the next job (--only-outdated, the default) plans and predicts the task
    ls.add_upload(missing, png_bytes(np.full((H, W, 3), 90, np.uint8)))
    again = jobs.start(JobSpec(project_id), predictor.model_version)
    assert again["total"] == 1 and again["model_version"] == version, again
    assert ChunkRun(ctx, again["id"], [2]).run() == {"done": 1, "skipped": 0, "failed": 0, "cancelled": False}
    assert [p["model_version"] for p in projects.preds[2]] == [failed["model_version"], version]
    assert exit_code(jobs.get(again["id"])) == 0
