"""backend.corrections.events: the recorded Label Studio 1.23.2 annotation webhooks, parsed once and
handed to every registered listener."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from backend.controls import parse_controls
from backend.corrections import events
from backend.corrections.events import EventError, dispatch, parse_event, register_listener, unregister_listener
from backend.controls.brush_rle import mask_to_rle

LS = Path(__file__).resolve().parent / "data" / "label_studio_1.23.2"


def recorded(name: str) -> tuple[str, dict]:
    data = json.loads((LS / name).read_text())
    return data.pop("action"), data


def controls_for(project):
    return parse_controls(project["label_config"])


@pytest.fixture(autouse=True)
def no_listeners(monkeypatch):
    monkeypatch.setattr(events, "_listeners", [])


def with_valid_rle(data: dict, mask: np.ndarray) -> dict:
    data = copy.deepcopy(data)
    region = data["annotation"]["result"][0]
    region["original_height"], region["original_width"] = mask.shape
    region["value"]["rle"] = mask_to_rle(mask)
    return data


def test_created_payload_gives_one_event_with_masks():
    action, data = recorded("webhook_annotation_created.json")
    mask = np.zeros((2, 4), bool)
    mask[0, :3] = True
    [event] = parse_event(action, with_valid_rle(data, mask), controls_for)
    assert (event.kind, event.project, event.task_id, event.annotation_id) == ("created", 1, 1, 1)
    assert event.task["data"] == {"image": "/data/upload/1/63a93ce6-a.png"}
    assert set(event.masks) == {"cat"} and np.array_equal(event.masks["cat"], mask)
    assert event.size == (2, 4) and event.updated_at == "2026-11-27T21:18:43.928098Z"
    assert event.controls is not None and not event.cancelled


def test_recorded_created_payload_with_its_made_up_rle_is_an_event_error():
    action, data = recorded("webhook_annotation_created.json")
    with pytest.raises(EventError, match=r"annotation 1 of task 1: result\[0\]: value.rle does not decode"):
        parse_event(action, data, controls_for)


def test_updated_with_an_empty_result_has_no_masks():
    action, data = recorded("webhook_annotation_updated.json")
    [event] = parse_event(action, data, controls_for)
    assert (event.kind, event.annotation_id, event.task_id, event.masks, event.size) == ("updated", 1, 1, {}, None)


def test_deleted_payload_gives_one_event_per_id_without_task():
    action, data = recorded("webhook_annotations_deleted.json")
    data["annotations"].append({"id": 7})
    out = parse_event(action, data, controls_for)
    assert [(e.kind, e.project, e.annotation_id, e.task_id, e.masks) for e in out] == \
        [("deleted", 1, 1, None, {}), ("deleted", 1, 7, None, {})]


def test_cancelled_annotation_is_a_deletion():
    action, data = recorded("webhook_annotation_updated.json")
    data["annotation"]["was_cancelled"] = True
    [event] = parse_event(action, data, controls_for)
    assert event.kind == "deleted" and event.cancelled and event.task_id == 1


def test_unusable_label_config_still_delivers_the_event_without_masks():
    action, data = recorded("webhook_annotation_created.json")
    data["project"]["label_config"] = '<View><Image name="i" value="$image"/><Choices name="c" toName="i">' \
                                      '<Choice value="a"/></Choices></View>'
    [event] = parse_event(action, data, controls_for)
    assert event.controls is None and event.masks == {}


@pytest.mark.parametrize("action, change, message", [
    ("TASKS_CREATED", lambda d: None, "'TASKS_CREATED' is not an annotation event"),
    ("ANNOTATION_CREATED", lambda d: d.pop("annotation"), "'annotation' must be an object"),
    ("ANNOTATION_CREATED", lambda d: d["annotation"].update(id="x"), "annotation.id must be an integer id"),
    ("ANNOTATION_CREATED", lambda d: d.update(project={"id": None}), "project.id must be an integer id"),
    ("ANNOTATION_CREATED", lambda d: d["annotation"].update(result={"a": 1}), "'result' must be a list"),
    ("ANNOTATIONS_DELETED", lambda d: d.update(annotations=None), "'annotations' must be a list"),
    ("ANNOTATIONS_DELETED", lambda d: d.update(annotations=[{"id": True}]), r"annotations\[0\].id must be"),
])
def test_malformed_payloads_name_the_field(action, change, message):
    _, data = recorded("webhook_annotation_created.json")
    data["annotation"]["result"] = []
    data["annotations"] = [{"id": 1}]
    change(data)
    with pytest.raises(EventError, match=message):
        parse_event(action, data, controls_for)


def test_dispatch_calls_every_listener_and_survives_a_failing_one():
    seen = []

    def first(event):
        seen.append(("first", event.kind, event.annotation_id))
        return "ok"

    def broken(event):
        raise RuntimeError("boom")

    def last(event):
        seen.append(("last", event.kind, event.annotation_id))
        return {"n": 1}

    register_listener(first)
    register_listener(broken, name="broken")
    register_listener(last, name="last")
    register_listener(first)  # registering again replaces, never calls twice
    action, data = recorded("webhook_annotations_deleted.json")
    out = dispatch(action, data, controls_for)
    assert out["events"] == 1
    assert out["listeners"]["broken"] == {"error": "RuntimeError: boom"}
    assert out["listeners"]["last"] == [{"n": 1}]
    assert sorted(seen) == [("first", "deleted", 1), ("last", "deleted", 1)]
    unregister_listener("last")
    assert "last" not in events.listeners()


def test_a_listener_that_cannot_reach_label_studio_logs_one_line_without_a_traceback(caplog):
    """Issue 22: an expected failure (Label Studio unreachable or answering 404, an unusable stored
    prediction) is one WARNING line naming it; only a bug gets a traceback at ERROR."""
    import logging

    from backend.corrections.annotations import AnnotationError
    from backend.labelstudio.client import LabelStudioNotFound

    def unreachable(event):
        raise LabelStudioNotFound("GET http://ls/api/predictions/ answered HTTP 404")

    def unusable(event):
        raise AnnotationError("prediction 3 of task 1: an RLE of 2^31 values")

    def bug(event):
        raise KeyError("oops")

    for fn, name in ((unreachable, "unreachable"), (unusable, "unusable"), (bug, "bug")):
        register_listener(fn, name=name)
    caplog.set_level(logging.WARNING, logger="backend.corrections")
    try:
        out = dispatch(*recorded("webhook_annotations_deleted.json"), controls_for)
    finally:
        for name in ("unreachable", "unusable", "bug"):
            unregister_listener(name)
    assert out["listeners"]["unreachable"] == {"error": "LabelStudioNotFound: GET http://ls/api/predictions/ "
                                                        "answered HTTP 404"}
    by_listener = {r.getMessage().split()[1]: r for r in caplog.records if r.getMessage().startswith("listener ")}
    assert by_listener["unreachable"].levelno == by_listener["unusable"].levelno == logging.WARNING
    assert by_listener["unreachable"].exc_info is None and by_listener["unusable"].exc_info is None
    assert "HTTP 404" in by_listener["unreachable"].getMessage()
    assert by_listener["bug"].levelno == logging.ERROR and by_listener["bug"].exc_info is not None


def test_a_bad_payload_calls_no_listener():
    called = []
    register_listener(called.append, name="spy")
    action, data = recorded("webhook_annotation_created.json")
    with pytest.raises(EventError):
        dispatch(action, data, controls_for)
    assert called == []


@pytest.mark.parametrize("name, kind, label", [("webhook_annotation_created_brush.json", "created", "cat"),
                                               ("webhook_annotation_updated_brush.json", "updated", "dog"),
                                               ("webhook_annotations_deleted_brush.json", "deleted", None)])
def test_real_brush_payloads_decode_to_the_submitted_mask(name, kind, label):
    """Recorded from Label Studio 1.23.2 by tests/e2e/test_corrections.py (CASS_RECORD_LS_PAYLOADS; the
    project token redacted): the annotation submitted a cat rectangle rows 5-19, columns 10-29 of a
    48x64 image, then relabelled it dog, then deleted it."""
    action, data = recorded(name)
    [event] = parse_event(action, data, controls_for)
    assert (event.kind, event.annotation_id) == (kind, 1)
    if label is None:
        assert event.task_id is None and event.masks == {}
        return
    expected = np.zeros((48, 64), bool)
    expected[5:20, 10:30] = True
    assert set(event.masks) == {label} and np.array_equal(event.masks[label], expected)
    assert event.size == (48, 64) and event.task_id == data["task"]["id"]
