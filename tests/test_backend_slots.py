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
    from backend.http.app import create_app
from backend.config import Settings
from backend.fetch.images import DOWNLOADS, LabelStudioAuth
from backend.predict.predictor import Predictor
from backend.predict.slots import InferenceSlots
from backend.predict.tickets import Busy
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

HANG_S = 30  # liveness limit only


def wait_for(condition, what: str):
    deadline = time.monotonic() + HANG_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def start_queued(slots: InferenceSlots, target, what: str) -> threading.Thread:
    """Start ``target`` in a thread and wait until its first call waits for a slot."""
    before = slots.stats()["waiting_calls"]
    thread = threading.Thread(target=target)
    thread.start()
    wait_for(lambda: slots.stats()["waiting_calls"] == before + 1, what)
    return thread


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
        threads.append(start_queued(slots, work, f"thread {i} to queue"))
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
        # moving average (alpha 0.3) of the intervals between completions, three 0 s then three 4 s =
        # 2.628 s, x position 1 in the line of refused callers -> 3
        assert info.value.retry_after_s == 3 and info.value.ticket
    with slots.admit():  # places free again
        pass


def _queue_requests(slots, requests, order):
    """Start one thread per ``(name, tasks)`` request: admitted with ``tasks``, then ``tasks`` calls
    that each append ``name`` to ``order``; each thread's first call is queued before the next starts."""
    threads = []
    for name, tasks in requests:
        def request(name=name, tasks=tasks):
            with slots.admit(f"project:{name}", tasks=tasks):
                for _ in range(tasks):
                    with slots:
                        order.append(name)
        threads.append(start_queued(slots, request, f"request {name} to queue"))
    return threads


def test_calls_are_served_earliest_due_first():
    """A request is due ``DUE_FACTOR`` (1/2) x its tasks x the measured slot time per task after it
    was admitted (when half of it would be done had it been alone); waiting calls are served earliest
    due first. An annotator's one-task request admitted while a batch waits goes before the batch's
    calls; a batch that is due goes before requests admitted after that, and keeps the slot between
    its calls."""
    now = [0.0]
    slots = InferenceSlots(1, max_queue=16, clock=lambda: now[0])
    order = []
    slots.acquire()  # the slot is taken: everything below queues
    threads = _queue_requests(slots, [("batch", 3), ("annotator", 1), ("other", 1)], order)
    now[0] += 0.75  # after the annotators' due time (1/2 x 1 task x 1 s), before the batch's (1.5 s)
    threads += _queue_requests(slots, [("late", 1)], order)  # due at 1.25 s
    now[0] += 6.25  # the batch is due now: it goes before what is admitted from here on
    threads += _queue_requests(slots, [("latest", 1)], order)
    slots.release()
    for t in threads:
        t.join(HANG_S)
    assert order == ["annotator", "other", "late", "batch", "batch", "batch", "latest"]
    assert slots.stats()["busy_slots"] == 0 and slots.stats()["waiting_calls"] == 0


def test_background_calls_wait_their_turn_but_are_not_starved():
    """A call outside any admitted request (warm-up, a smart crop) is due like a one-task request
    made when it queued."""
    now = [0.0]
    slots = InferenceSlots(1, max_queue=16, clock=lambda: now[0])
    order = []
    slots.acquire()
    threads = _queue_requests(slots, [("batch", 2)], order)  # due at 1 s

    def background():
        with slots:
            order.append("background")
    now[0] += 0.25
    threads.append(start_queued(slots, background, "the background call to queue"))  # due at 0.25 + 0.5 = 0.75 s
    now[0] += 2.5
    threads += _queue_requests(slots, [("annotator", 1)], order)  # due at 3.25 s
    slots.release()
    for t in threads:
        t.join(HANG_S)
    assert order == ["background", "batch", "batch", "annotator"]


def test_a_request_keeps_the_slot_between_its_calls_but_not_for_long():
    """A request due before every waiting call keeps the freed slot for its next call, for at most
    ``HOLD_S``: one that goes on with other work (a download) does not keep the others waiting."""
    slots = InferenceSlots(1, max_queue=16)
    first_call_done, downloaded, order = threading.Event(), threading.Event(), []

    def early():
        with slots.admit("a"):  # due first
            with slots:
                order.append("early call 1")
                wait_for(lambda: slots.stats()["waiting_calls"] == 1, "the later request to queue")
            first_call_done.set()
            downloaded.wait(HANG_S)  # not coming back for the slot yet
            with slots:
                order.append("early call 2")

    t = threading.Thread(target=early)
    t.start()
    wait_for(lambda: slots.stats()["busy_slots"] == 1, "the early request in its first call")
    with slots.admit("b", tasks=5):  # due later
        with slots:  # queued while the early request holds the slot; gets it once the hold lapses
            order.append("later call")
        downloaded.set()
    t.join(HANG_S)
    assert order == ["early call 1", "later call", "early call 2"]
    assert slots.stats()["busy_slots"] == 0


def test_the_slot_time_per_task_is_measured():
    now = [0.0]
    slots = InferenceSlots(1, max_queue=16, clock=lambda: now[0])
    assert slots.stats()["task_s"] == 1.0  # before any measurement
    with slots.admit("a", tasks=2):
        for _ in range(2):
            with slots:
                now[0] += 5.0  # 5 s in the slot per call
        now[0] += 100.0  # time outside the slot (downloads, waiting) is not slot time
    assert slots.stats()["task_s"] == 5.0
    with slots.admit("a", tasks=3):
        pass  # a request that used no slot (e.g. refused tasks) teaches nothing
    assert slots.stats()["task_s"] == 5.0
    with slots.admit("b", tasks=3):  # three cache hits: 1 s in the slot in all
        with slots:
            now[0] += 1.0
    assert slots.stats()["task_s"] == 11.0 / 5  # slot seconds / tasks over the latest requests


def test_admission_is_bounded_by_the_estimated_wait():
    """With ``queue_wait_s``, a request is refused when the tasks already in plus its own, at the
    measured slot time per task, would take longer than ``queue_wait_s`` (unless nothing is in)."""
    now = [0.0]
    slots = InferenceSlots(1, max_queue=32, queue_wait_s=60.0, clock=lambda: now[0])
    with slots.admit("m"):
        with slots:
            now[0] += 10.0  # 10 s per task
    inside = [slots.admit(f"p{i}") for i in range(6)]
    for ctx in inside:
        ctx.__enter__()  # 6 tasks x 10 s = 60 s: within the bound
    with pytest.raises(Busy) as info:
        with slots.admit("p7"):
            pass
    message = str(info.value)
    assert "about 70 s" in message and "CASS_QUEUE_WAIT_S" in message and "60" in message, message
    assert info.value.ticket and info.value.retry_after_s >= 1
    for ctx in inside:
        ctx.__exit__(None, None, None)
    now[0] += 100.0  # p7 never came back: its reservation (a held place) has expired
    with slots.admit("big", tasks=20):  # nothing else in: admitted, however long it takes
        with pytest.raises(Busy, match="about 210 s"):
            with slots.admit("one"):
                pass
    assert slots.stats()["queue_wait_s"] == 60.0


def test_one_project_cannot_take_every_place_while_others_wait():
    now = [0.0]
    slots = InferenceSlots(1, max_queue=3, clock=lambda: now[0])  # 4 places
    with slots.admit("a"), slots.admit("a"), slots.admit("a"):
        with slots.admit("b"):  # b's share: ceil(4 / 2) = 2; a holds 3 of 4 already (it came alone)
            with pytest.raises(Busy) as info:
                with slots.admit("c"):
                    pass  # the backend is full
            assert "busy: 4 prediction requests" in str(info.value)
    now[0] += 100  # c never came back: its reservation has expired
    with slots.admit("a"), slots.admit("b"):
        with slots.admit("a"):  # a: 2 of ceil(4 / 2) = 2 now
            with pytest.raises(Busy) as info:
                with slots.admit("a"):
                    pass
            assert "already has 2 of 3 places" in str(info.value) and "its fair share" in str(info.value)
            with slots.admit("b"):  # b still has a place
                pass
    assert slots.stats()["rejected_share"] == 1 and slots.stats()["requests"] == 0
    now[0] += 100
    with slots.admit("solo"), slots.admit("solo"), slots.admit("solo"), slots.admit("solo"):
        pass  # one project alone may use every place


def test_retry_after_follows_measured_times_and_queue_length():
    now = [0.0]
    slots = InferenceSlots(1, max_queue=8, clock=lambda: now[0])
    with slots.admit():
        now[0] += 10.0
    assert slots.retry_after() == 10
    for _ in range(30):  # requests get fast: the estimate follows
        with slots.admit():
            now[0] += 1.0
    assert slots.retry_after() == 1
    with slots.admit("a"), slots.admit("b"), slots.admit("c"), slots.admit("d"), slots.admit("e"):
        assert slots.retry_after() == 1  # ~1 s between completions, first in the line
        refused, inside = [], []
        for key in "fghij":  # 4 places left, then a line of refused callers
            inside.append(slots.admit(key))
            try:
                inside[-1].__enter__()
            except Busy as exc:
                refused.append(exc.retry_after_s)
                inside.pop()
        assert refused == [1]
        assert slots.retry_after() == 2  # the next one refused is second in the line
        for ctx in inside:
            ctx.__exit__(None, None, None)


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
    # told to come back later: the connection is not kept for a client that waits (a kept-alive one
    # would be closed by the server's keep-alive timeout just as the client reuses it)
    assert third.headers["Connection"] == "close"
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
