"""Agreement per label: hand-built masks of known IoU, and totals that never double-count
(in-process and a real redis-server)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.corrections.agreement import AgreementListener, compare, field, summarize
from backend.corrections.events import AnnotationEvent
from backend.corrections.predictions import choose
from backend.corrections.store import MemoryStore, RedisStore
from backend.controls import parse_controls
from backend.controls.brush_rle import mask_to_rle
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

H, W = 10, 20


def left(cols=10):
    m = np.zeros((H, W), bool)
    m[:, :cols] = True
    return m


def right(cols=10):
    m = np.zeros((H, W), bool)
    m[:, W - cols:] = True
    return m


def summary(annotated, predicted):
    return summarize(compare(annotated, predicted))


def test_identical_masks_have_iou_1():
    s = summary({"cat": left()}, {"cat": left()})["cat"]
    assert (s["iou"], s["precision"], s["recall"]) == (1.0, 1.0, 1.0)
    assert (s["annotated_px"], s["predicted_px"], s["intersection_px"], s["annotations"]) == (100, 100, 100, 1)
    assert s["top_confusion"] is None and s["confusion"] == {"cat": 100}


def test_disjoint_masks_have_iou_0_and_the_confusion_names_the_predicted_label():
    s = summary({"cat": left(), "dog": right()}, {"dog": left(), "cat": right()})
    assert (s["cat"]["iou"], s["cat"]["precision"], s["cat"]["recall"]) == (0.0, 0.0, 0.0)
    assert s["cat"]["top_confusion"] == ("dog", 1.0) and s["dog"]["top_confusion"] == ("cat", 1.0)


def test_half_overlap():
    # annotated: columns 0-9 (100 px); predicted: columns 5-14 (100 px); overlap 50 -> IoU 50/150
    pred = np.zeros((H, W), bool)
    pred[:, 5:15] = True
    s = summary({"cat": left()}, {"cat": pred})["cat"]
    assert s["iou"] == pytest.approx(1 / 3) and s["precision"] == 0.5 and s["recall"] == 0.5
    assert s["confusion"] == {"cat": 50, "": 50} and s["top_confusion"] == ("", 0.5)


def test_label_missing_on_one_side():
    s = summary({"cat": left()}, {"dog": right()})
    assert s["cat"]["iou"] == 0.0 and s["cat"]["precision"] is None and s["cat"]["recall"] == 0.0
    assert s["dog"]["iou"] == 0.0 and s["dog"]["precision"] == 0.0 and s["dog"]["recall"] is None
    assert s["cat"]["annotations"] == s["dog"]["annotations"] == 1
    assert s["cat"]["top_confusion"] == ("", 1.0)  # nothing predicted under the annotator's cat


def test_totals_are_pooled_over_annotations():
    a = compare({"cat": left()}, {"cat": left()})             # tp 100, union 100
    b = compare({"cat": left(5)}, {"cat": right(5)})          # tp 0, union 100
    totals = {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}
    s = summarize(totals)["cat"]
    assert s["annotations"] == 2 and s["iou"] == pytest.approx(100 / 200)


def test_sizes_must_agree():
    with pytest.raises(ValueError, match="differ in size"):
        compare({"cat": left()}, {"cat": np.zeros((3, 3), bool)})


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemoryStore()
    import redis

    return RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))


def test_update_replaces_delete_removes_redelivery_is_idempotent(store):
    first = compare({"cat": left()}, {"cat": left()})
    second = compare({"cat": left(5)}, {"cat": left()})
    assert store.replace(1, 10, first, "2026-01-01T00:00:01Z") == "added"
    assert store.replace(1, 10, first, "2026-01-01T00:00:01Z") == "replaced"  # redelivery
    assert summarize(store.totals(1))["cat"]["annotations"] == 1
    assert store.replace(1, 10, second, "2026-01-01T00:00:02Z") == "replaced"
    assert store.replace(1, 10, first, "2026-01-01T00:00:01Z") == "stale"  # an older update, late
    s = summarize(store.totals(1))["cat"]
    assert (s["annotations"], s["annotated_px"], s["iou"]) == (1, 50, 0.5)
    assert store.replace(1, 11, first, "2026-01-01T00:00:03Z") == "added"
    assert summarize(store.totals(1))["cat"]["annotations"] == 2
    assert store.replace(1, 10, None, tombstone=True) == "removed"
    assert store.replace(1, 99, None, tombstone=True) == "none"  # never seen: no tombstone
    assert store.replace(1, 99, first, "2026-01-01T00:00:04Z") == "added"
    assert store.replace(1, 99, None, tombstone=True) == "removed"
    assert store.replace(1, 10, second, "2026-01-01T00:00:09Z") == "deleted"  # late redelivery after delete
    assert store.totals(1) == first
    assert store.replace(1, 11, None, tombstone=True) == "removed"
    assert store.totals(1) == {} and summarize(store.totals(1)) == {}
    assert store.totals(2) == {}
    assert "1" in store.projects()


CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">' \
         '<Label value="cat"/><Label value="dog"/></BrushLabels></View>'


class FakeSource:
    """A fake prediction source (unit test): returns the given result for every task."""

    def __init__(self, result):
        self.result = result

    def prediction(self, event):
        return None if self.result is None else (self.result, "cass-default-clip.ab-dino.cd", 5)


def brush(mask, label):
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W,
            "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def event(kind, masks, annotation_id=1, cancelled=False):
    return AnnotationEvent(kind, 3, 7, annotation_id, {"id": 7}, masks, controls=parse_controls(CONFIG),
                           size=(H, W) if masks else None, cancelled=cancelled)


def test_listener_compares_with_the_prediction_and_reverts_on_delete():
    store = MemoryStore()
    listener = AgreementListener(store, FakeSource([brush(left(), "cat")]))
    out = listener(event("created", {"cat": left(5)}))
    assert out["state"] == "added" and out["labels"] == ["cat"]
    assert summarize(store.totals(3))["cat"]["iou"] == 0.5
    listener(event("updated", {}))  # the annotator removed everything: all predicted pixels were wrong
    s = summarize(store.totals(3))["cat"]
    assert (s["annotations"], s["precision"], s["iou"]) == (1, 0.0, 0.0)
    assert listener(event("deleted", {}))["state"] == "removed" and store.totals(3) == {}


def test_listener_without_a_prediction_records_nothing():
    store = MemoryStore()
    out = AgreementListener(store, FakeSource(None))(event("created", {"cat": left()}))
    assert "no prediction" in out["skipped"] and store.totals(3) == {}


def test_choose_prefers_parent_then_exact_version_then_newest():
    v = "cass-default-clip.aaaa1111-dino.bbbb2222"
    preds = [{"id": 1, "model_version": v, "result": [], "created_at": "2026-01-01"},
             {"id": 2, "model_version": v + "-pamr.x", "result": [], "created_at": "2026-01-03"},
             {"id": 3, "model_version": "someone-else", "result": [], "created_at": "2026-01-04"},
             {"id": 4, "model_version": v, "result": [], "created_at": "2026-01-02"}]
    assert choose(preds, v)["id"] == 4
    assert choose(preds, v, parent=2)["id"] == 2
    assert choose(preds, v + "-mem.1")["id"] == 2  # no exact one: the newest of ours
    assert choose(preds[2:3], v) is None
    assert field("conf", "a|b", "") == '["conf","a|b",""]'
