"""The /predict text budget (issue 9 item 3, the rest): a request with many *new* prompts encodes them
for at most ``text_budget_s`` (CASS_TEXT_BUDGET_S) of encoding time, answers its tasks with an error
entry that says to retry, and the remaining chunks continue being encoded in the background (bounded)
so that a later request succeeds.

Unit level: ``FakeSlowTextEncoder`` (a fake of cass.text.TextEncoder) advances a fake clock for each
prompt it has not seen, so no test depends on wall time; waits for the background have generous
limits that only guard against hangs."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from backend.config import ConfigError, Settings
from backend.controls.label_parse import parse_label_config
from backend.predict.predictor import Predictor
from backend.predict.slots import InferenceSlots
from tests.backend_fixtures import FakeEngine, png_bytes

HANG_S = 30
FAKE_PROMPT_S = 0.25  # fake seconds per new prompt: a chunk of 16 new prompts = 4 fake seconds


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, s: float) -> None:
        with self.lock:
            self.now += s


class FakeSlowTextEncoder:
    """Fake of cass.text.TextEncoder: caches prompts; each new one costs FAKE_PROMPT_S on the fake
    clock. Records which thread encoded what."""

    def __init__(self, clock: FakeClock):
        self.clock, self.seen, self.encoded_by = clock, set(), {}
        self.lock = threading.Lock()

    def is_cached(self, query) -> bool:
        with self.lock:
            return query in self.seen

    def __call__(self, queries):
        for q in queries:
            with self.lock:
                new = q not in self.seen
                self.seen.add(q)
                if new:
                    self.encoded_by[q] = threading.current_thread().name
            if new:
                self.clock.advance(FAKE_PROMPT_S)


def config(n: int) -> str:
    labels = "".join(f"<Label value='label {i}'/>" for i in range(n))
    return (f"<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>{labels}"
            f"</BrushLabels></View>")


def make(n_prompts: int, budget: float = 10.0, **kwargs):
    clock = FakeClock()
    engine = FakeEngine()
    engine.text = FakeSlowTextEncoder(clock)
    predictor = Predictor(engine, clock=clock, text_budget_s=budget, **kwargs)
    targets = parse_label_config(config(n_prompts))
    return predictor, engine, targets


def tasks(n: int):
    return [{"id": i, "data": {"image": f"http://img/{i}.png"}} for i in range(1, n + 1)]


IMAGE = png_bytes(np.full((4, 6, 3), (200, 10, 10), np.uint8))


def fetch(url, task_id):
    return IMAGE


def wait_background(predictor):
    deadline = time.monotonic() + HANG_S
    while predictor.text.stats()["background_running"]:
        if time.monotonic() > deadline:
            raise AssertionError("background text encoding did not finish")
        time.sleep(0.01)


def test_a_request_stops_encoding_new_prompts_at_its_budget_and_the_rest_continues_in_background():
    predictor, engine, targets = make(200, budget=10.0)
    # one task: a second task of the same request would race the background (error or, once it has
    # finished, a prediction: both right)
    out = predictor.predict(tasks(1), targets, fetch)
    assert [("error" in r, "result" in r) for r in out] == [(True, False)]
    message = out[0]["error"]
    assert "CASS_TEXT_BUDGET_S" in message and "10s" in message and "retrieve predictions again" in message
    assert "200 prompts" in message
    by_request = [q for q, who in engine.text.encoded_by.items() if who == threading.current_thread().name]
    # 16-prompt chunks of 4 fake seconds each: the third one passes the 10 s budget, then it stops
    assert len(by_request) == 3 * 16
    wait_background(predictor)
    assert len(engine.text.seen) == 200  # the rest was encoded in the background, each prompt once
    assert predictor.text.stats()["background_done"] == 1
    again = predictor.predict(tasks(2), targets, fetch)
    assert all("result" in r for r in again), again
    assert len(engine.text.encoded_by) == 200


def test_within_the_budget_nothing_changes():
    predictor, engine, targets = make(20, budget=10.0)
    out = predictor.predict(tasks(2), targets, fetch)
    assert all("result" in r for r in out)
    assert predictor.text.stats()["background_started"] == 0


def test_cached_prompts_do_not_use_the_budget():
    """A long batch over an already-encoded label set never trips the text budget, not even when the
    request has run past its whole time budget (a loaded backend: found by scripts/memprofile.py)."""
    predictor, engine, targets = make(40, budget=10.0)
    assert all("result" in r for r in predictor.predict(tasks(1), targets, fetch))  # 40 prompts: 10 s
    assert all("result" in r for r in predictor.predict(tasks(30), targets, fetch))
    slow_fetch_calls = []

    def slow_fetch(url, task_id):  # each download takes 5 fake seconds: the batch runs 150 s
        slow_fetch_calls.append(url)
        predictor.clock.advance(5.0)
        return IMAGE

    predictor.predict_budget_s = 1000.0
    predictor.text.request_budget_s = 80.0
    out = predictor.predict(tasks(30), targets, slow_fetch)
    assert all("result" in r for r in out), [r.get("error") for r in out if "error" in r][:1]
    assert predictor.text.stats()["background_started"] == 0


def test_background_work_is_bounded():
    # two slots: the gated background holds one while it waits, the requests use the other
    predictor, engine, targets_a = make(300, budget=4.0, max_background_text=1, slots=InferenceSlots(2))
    targets_b = parse_label_config(config(300).replace("label ", "other "))
    gate = threading.Event()
    original = engine.text.__call__

    class Gated(FakeSlowTextEncoder):
        def __call__(self, queries):
            if threading.current_thread().name.startswith("cass-text") and not gate.wait(HANG_S):
                raise AssertionError("the gate was never opened")
            return original(queries)

    engine.text.__class__ = Gated
    a = predictor.predict(tasks(1), targets_a, fetch)
    b = predictor.predict(tasks(1), targets_b, fetch)
    assert "error" in a[0] and "error" in b[0]
    stats = predictor.text.stats()
    assert stats["background_running"] == 1 and stats["background_refused"] == 1
    assert "next request continues" in b[0]["error"]  # no background for it: said so
    gate.set()
    wait_background(predictor)


def test_the_budget_is_a_setting():
    assert Settings.from_env({"CASS_TEXT_BUDGET_S": "12.5"}).text_budget_s == 12.5
    assert Settings.from_env({}).text_budget_s == 30.0
    with pytest.raises(ConfigError, match="CASS_TEXT_BUDGET_S"):
        Settings.from_env({"CASS_TEXT_BUDGET_S": "soon"})
    with pytest.raises(ConfigError, match="CASS_RESERVATION_GRACE_S"):
        Settings.from_env({"CASS_RESERVATION_GRACE_S": "0"})
