"""Inference slots: at most N model calls at once, first come first served; at most N + queue
``/predict`` requests in; beyond that an immediate 503 "busy" with Retry-After (never a timeout).

No timing assertions: threads are coordinated with events and the slots' own counters; waits have
generous limits that only guard against hangs."""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.app import create_app
from backend.config import Settings
from backend.images import DOWNLOADS, LabelStudioAuth
from backend.service import Predictor
from backend.slots import Busy, InferenceSlots
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

HANG_S = 30  # liveness limit only


def wait_for(condition, what: str):
    deadline = time.monotonic() + HANG_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# the slots themselves
# ---------------------------------------------------------------------------------------------
def test_slots_are_granted_first_come_first_served():
    slots = InferenceSlots(1)
    order = []
    slots.acquire()
    threads = []
    for i in range(5):
        def work(i=i):
            with slots:
                order.append(i)
        t = threading.Thread(target=work)
        t.start()
        threads.append(t)
        wait_for(lambda i=i: slots.stats()["waiting_calls"] == i + 1, f"thread {i} to queue")
    slots.release()
    for t in threads:
        t.join(HANG_S)
    assert order == [0, 1, 2, 3, 4]
    assert slots.stats()["busy_slots"] == 0 and slots.stats()["peak_waiting_calls"] == 5


def test_never_more_calls_at_once_than_slots():
    slots = InferenceSlots(2)
    gate = threading.Event()
    lock = threading.Lock()
    running, peak = [0], [0]

    def work():
        with slots:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            gate.wait(HANG_S)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: slots.stats()["busy_slots"] == 2 and slots.stats()["waiting_calls"] == 4, "2 busy, 4 waiting")
    assert running[0] == 2
    gate.set()
    for t in threads:
        t.join(HANG_S)
    assert peak[0] == 2 and slots.stats()["busy_slots"] == 0


def test_admission_is_bounded_and_busy_says_when_to_retry():
    now = [0.0]
    slots = InferenceSlots(1, max_queue=2, clock=lambda: now[0])
    with slots.admit(), slots.admit(), slots.admit():
        with pytest.raises(Busy) as info:
            with slots.admit():
                pass
        assert str(info.value).startswith("busy: 3 prediction requests are being served or waiting")
        assert info.value.retry_after_s == 5  # nothing finished yet: a default
        assert slots.stats()["queue_full"] is True
    assert slots.stats()["requests"] == 0 and slots.stats()["rejected"] == 1
    for _ in range(3):  # each request took 4 s
        with slots.admit():
            now[0] += 4.0
    with slots.admit(), slots.admit(), slots.admit():
        with pytest.raises(Busy) as info:
            with slots.admit():
                pass
        # mean request time 2 s (three of 0 s, three of 4 s) x 3 requests ahead of a new one on 1 slot
        assert info.value.retry_after_s == 6
    with slots.admit():  # places free again
        pass


def test_release_without_acquire_is_a_bug():
    slots = InferenceSlots(1)
    with pytest.raises(RuntimeError, match="released more often"):
        slots.release()
    with pytest.raises(ValueError):
        InferenceSlots(0)


# ---------------------------------------------------------------------------------------------
# through the app
# ---------------------------------------------------------------------------------------------
class GatedEngine(FakeEngine):
    """A fake engine whose encode of the images in ``hold`` waits for ``gate``; records call order."""

    def __init__(self, hold: set[bytes], names: dict[bytes, str]):
        super().__init__()
        self.hold, self.names = hold, names
        self.gate = threading.Event()
        self.calls: list[str] = []

    def encode(self, image):
        self.calls.append(f"encode {self.names.get(bytes(image), '?')}")
        if bytes(image) in self.hold:
            self.gate.wait(HANG_S)
        return super().encode(image)

    def segment(self, features, vocabulary, *, params=None):
        self.calls.append("segment")
        return super().segment(features, vocabulary, params=params)


@pytest.fixture
def ls():
    server = FakeLabelStudio()
    yield server
    server.close()
    LabelStudioAuth._access.clear()
    DOWNLOADS.clear()


def solid(ls, name: str, value: int) -> tuple[str, bytes]:
    data = png_bytes(np.full((4, 6, 3), (value, 10, 10), np.uint8))
    return ls.add_upload(f"/data/upload/1/{name}.png", data), data


def body(*refs):
    b = ls_request("predict")
    b["tasks"] = [{"id": i, "data": {"image": r}} for i, r in enumerate(refs, 1)]
    return b


def test_requests_beyond_the_queue_get_503_busy_with_retry_after(ls, caplog):
    slow_ref, slow = solid(ls, "slow", 200)
    fast_ref, fast = solid(ls, "fast", 150)
    engine = GatedEngine({slow}, {slow: "slow", fast: "fast"})
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        inference_slots=1, max_queue=1)
    predictor = Predictor(engine, slots=InferenceSlots(1, max_queue=1))
    app = create_app(settings, predictor)
    answers = {}

    def post(name, ref):
        answers[name] = app.test_client().post("/predict", json=body(ref))

    first = threading.Thread(target=post, args=("first", slow_ref))
    first.start()
    wait_for(lambda: engine.calls == ["encode slow"], "the first request in the model")
    second = threading.Thread(target=post, args=("second", fast_ref))  # queued: waits for the slot
    second.start()
    wait_for(lambda: predictor.slots.stats()["waiting_calls"] == 1, "the second request to queue")

    third = app.test_client().post("/predict", json=body(fast_ref))  # beyond the queue
    assert third.status_code == 503
    assert third.get_json()["error"].startswith("busy: 2 prediction requests are being served or waiting")
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    assert "POST /predict refused: busy" in caplog.text
    health = app.test_client().get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "UP"
    assert any(d.startswith("busy:") for d in health.get_json()["degraded"])

    engine.gate.set()
    first.join(HANG_S)
    second.join(HANG_S)
    assert answers["first"].status_code == 200 and answers["second"].status_code == 200
    assert all("result" in r for a in answers.values() for r in a.get_json()["results"])
    again = app.test_client().post("/predict", json=body(fast_ref))
    assert again.status_code == 200
    assert app.test_client().get("/health").get_json()["degraded"] == []
    assert predictor.slots.stats()["rejected"] == 1


def test_a_batch_does_not_hold_back_a_single_task_request(ls):
    """Slots are taken per model call: an annotator's request waits for one call of the batch, not
    for the whole batch."""
    refs, names = [], {}
    for i in range(3):
        ref, data = solid(ls, f"batch{i}", 100 + i)
        refs.append(ref)
        names[data] = f"batch{i}"
    single_ref, single = solid(ls, "single", 250)
    names[single] = "single"
    first = next(data for data, name in names.items() if name == "batch0")
    engine = GatedEngine({first}, names)
    predictor = Predictor(engine)
    app = create_app(Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False), predictor)
    answers = {}
    batch = threading.Thread(target=lambda: answers.update(batch=app.test_client().post("/predict", json=body(*refs))))
    batch.start()
    wait_for(lambda: engine.calls == ["encode batch0"], "the batch in the model")
    one = threading.Thread(target=lambda: answers.update(one=app.test_client().post("/predict", json=body(single_ref))))
    one.start()
    wait_for(lambda: predictor.slots.stats()["waiting_calls"] == 1, "the single request to queue")
    engine.gate.set()
    batch.join(HANG_S)
    one.join(HANG_S)
    assert answers["batch"].status_code == 200 and answers["one"].status_code == 200
    assert engine.calls.index("encode single") < engine.calls.index("encode batch1")
    assert engine.calls[:2] == ["encode batch0", "encode single"]
