"""End to end (issue 20): ``model_version`` follows the label set, through both ways of predicting a
whole project, against a real Label Studio 1.23.2.

* *Retrieve Predictions* (the data manager action the UI sends): Label Studio asks ``/setup`` with the
  project's current label config before predicting (``MLBackend.predict_tasks`` -> ``update_state``)
  and skips only tasks that already have a prediction of the version ``/setup`` answered. After a
  label is added, every task gets a prediction of the new version; the old ones stay.
* Jobs (two real workers, a real redis-server): a PolygonLabels project and a mixed Brush + Polygon
  project get exactly one valid prediction per task with regions of each output kind; after a label
  change, a second job gives every task a prediction of the new version, and a third adds nothing.
"""
from __future__ import annotations

import pytest

from tests.e2e.test_jobs import PAT, cli, job, png, predictions, workers  # noqa: F401 (fixture)
from tests.redis_fixtures import redis_server  # noqa: F401 (the workers fixture needs it)
from tests.e2e.test_label_studio import LS

pytestmark = pytest.mark.e2e

LABELS = '<Label value="cat"/><Label value="dog"/><Label value="grass"/>'
BRUSH = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{labels}'
         '</BrushLabels></View>')
POLYGON = ('<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">{labels}'
           '</PolygonLabels></View>')
MIXED = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{labels}'
         '</BrushLabels><PolygonLabels name="poly" toName="image">{labels}</PolygonLabels></View>')
PERSON = '<Label value="person"/>'
N = 3


def new_project(ls, title: str, config: str) -> tuple[int, list[int]]:
    pid = ls("POST", "/api/projects", json={"title": title, "label_config": config})["id"]
    files = {f"img{i}.png": (f"img{i}.png", png(100 + i), "image/png") for i in range(N)}
    ls("POST", f"/api/projects/{pid}/import", files=files)
    ids = sorted(t["id"] for t in ls("GET", "/api/tasks", params={"project": pid, "page_size": 100})["tasks"])
    assert len(ids) == N
    return pid, ids


def retrieve(ls, pid: int, ids: list[int]) -> dict:
    return ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
              json={"selectedItems": {"all": False, "included": ids}})


def versions(ls, task_id: int) -> list[str]:
    return sorted(p["model_version"] for p in ls("GET", "/api/predictions", params={"task": task_id}))


def test_retrieve_predictions_after_a_label_change_predicts_every_task_again(label_studio, backend):
    ls = LS(label_studio)
    pid, ids = new_project(ls, "CASS label change", BRUSH.format(labels=LABELS))
    ml = ls("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "CASS", "auth_method": "NONE",
                                     "is_interactive": False})
    v1 = ml["model_version"]
    assert "-labels." in v1, ml
    retrieve(ls, pid, ids)
    assert all(versions(ls, t) == [v1] for t in ids)
    retrieve(ls, pid, ids)  # the same labels: nothing new (Label Studio skips tasks of this version)
    assert all(versions(ls, t) == [v1] for t in ids)

    ls("PATCH", f"/api/projects/{pid}", json={"label_config": BRUSH.format(labels=LABELS + PERSON)})
    retrieve(ls, pid, ids)  # Label Studio calls /setup with the new config first, then /predict
    v2 = ls("GET", f"/api/ml/{ml['id']}")["model_version"]
    assert v2 != v1 and v2.split("-labels.")[0] == v1.split("-labels.")[0], (v1, v2)
    for t in ids:  # the old prediction is kept, the new version is added, nothing deleted by hand
        assert versions(ls, t) == sorted([v1, v2]), (t, versions(ls, t))
    print(f"\ne2e label change: {N} tasks, {v1} -> {v2}; retrieve predicted every task again, old kept")


def kinds(prediction: dict) -> set[str]:
    return {r["type"] for r in prediction["result"]}


def valid_polygons(prediction: dict) -> bool:
    polys = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
    return all(len({tuple(p) for p in r["value"]["points"]}) >= 3 and
               all(0 <= c <= 100 for p in r["value"]["points"] for c in p) for r in polys)


@pytest.mark.parametrize("name,config,expected", [("polygon", POLYGON, {"polygonlabels"}),
                                                  ("mixed", MIXED, {"brushlabels", "polygonlabels"})])
def test_jobs_on_polygon_and_mixed_projects_and_after_a_label_change(label_studio, personal_access_token,
                                                                     workers, name, config, expected):  # noqa: F811
    env, procs, logs = workers
    ls = PAT(label_studio.url, personal_access_token)
    pid, ids = new_project(ls, f"CASS jobs {name}", config.format(labels=LABELS))

    def run_job() -> dict:  # the default plan: only tasks without a prediction of the current version
        out = cli(env, "preannotate", "--project", str(pid), "--wait")
        assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
        return job(env, out.stdout.split()[0])

    first = run_job()
    assert (first["done"], first["failed"]) == (N, 0), first
    for t in ids:  # exactly one valid prediction per task, with regions of each output kind
        (p,) = predictions(ls, t)
        assert kinds(p) == expected and valid_polygons(p), p
    v1 = predictions(ls, ids[0])[0]["model_version"]

    ls("PATCH", f"/api/projects/{pid}", json={"label_config": config.format(labels=LABELS + PERSON)})
    second = run_job()
    assert (second["done"], second["skipped"], second["failed"]) == (N, 0, 0), second
    for t in ids:
        got = predictions(ls, t)
        assert len(got) == 2 and len({p["model_version"] for p in got}) == 2, got
        assert all(kinds(p) == expected and valid_polygons(p) for p in got)
    third = run_job()  # nothing is outdated: an empty job
    assert (third["total"], third["done"], third["status"]) == (0, 0, "finished"), third
    v2 = {p["model_version"] for p in predictions(ls, ids[0])} - {v1}
    print(f"\ne2e jobs {name}: {N} tasks, one prediction each ({sorted(expected)}); label change "
          f"{v1} -> {v2.pop()}: {second['done']} predicted again, then a job of {third['total']} tasks")
