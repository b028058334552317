"""Fair admission (issue 9 item 8) through HTTP: real concurrent clients (``requests.Session``, one per
client, as the load test's) against the real backend app on a real loopback socket (werkzeug's
threaded server), with a fake engine (``SlowFakeEngine``) whose encode takes a little wall time.

More clients than places, two projects, clients that re-send the moment they are answered: every
client is served again and again (before reservations, the refused ones found their place retaken
each time they came back). No timing assertions: the run stops when every client has its successes;
the limit only guards against hangs (it is what the old code hit)."""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.fetch.images import DOWNLOADS, LabelStudioAuth
from backend.http.edge import TICKET_COOKIE, TICKET_HEADER
from backend.predict.predictor import Predictor
from backend.predict.slots import InferenceSlots
from tests.backend_fixtures import LEGACY_TOKEN, FakeEngine, FakeLabelStudio, ls_request, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Importing 'itsdangerous.json' is deprecated:DeprecationWarning")

HANG_S = 90  # liveness limit only
CLIENTS, PROJECTS, SUCCESSES = 8, 2, 3


class SlowFakeEngine(FakeEngine):
    """FakeEngine whose encode sleeps ``FAKE_ENCODE_S`` (so requests overlap and places run out)."""

    FAKE_ENCODE_S = 0.05

    def encode(self, image):
        time.sleep(self.FAKE_ENCODE_S)
        return super().encode(image)


@pytest.fixture
def backend():
    ls = FakeLabelStudio()
    data = png_bytes(np.full((8, 8, 3), (200, 10, 10), np.uint8))
    ref = ls.add_upload("/data/upload/1/a.png", data)
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, warmup=False,
                        inference_slots=1, max_queue=2)
    predictor = Predictor(SlowFakeEngine(), slots=InferenceSlots(1, max_queue=2))
    app = create_app(settings, predictor)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", ref, predictor
    server.shutdown()
    thread.join(10)
    ls.close()
    LabelStudioAuth._access.clear()
    DOWNLOADS.clear()


def test_every_client_is_served_repeatedly_under_overload(backend):
    url, ref, predictor = backend
    successes = [0] * CLIENTS
    busy, tickets_seen, other = [0], [0], []
    done = threading.Event()
    lock = threading.Lock()

    def client(index: int):
        session = requests.Session()  # keeps the cass_ticket cookie, like a browser
        body = ls_request("predict")
        body["tasks"] = [{"id": index, "data": {"image": ref}}]
        body["project"] = f"{index % PROJECTS + 1}.1700000000"
        deadline = time.monotonic() + HANG_S
        while not done.is_set() and time.monotonic() < deadline:
            resp = session.post(f"{url}/predict", json=body, timeout=30)
            with lock:
                if resp.status_code == 200:
                    successes[index] += 1
                    if min(successes) >= SUCCESSES:
                        done.set()
                elif resp.status_code == 503:
                    busy[0] += 1
                    tickets_seen[0] += bool(resp.headers.get(TICKET_HEADER)) and \
                        resp.cookies.get(TICKET_COOKIE) == resp.headers.get(TICKET_HEADER)
                else:
                    other.append((resp.status_code, resp.text[:200]))
            if resp.status_code == 503:
                done.wait(float(resp.headers["Retry-After"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S + 40)
    stats = predictor.slots.stats()
    assert other == []
    assert min(successes) >= SUCCESSES, (successes, stats)
    assert busy[0] > 0 and tickets_seen[0] == busy[0], repr(stats)  # it was overloaded; every refusal held a ticket
    assert stats["admitted_with_ticket"] > 0 and stats["peak_requests"] <= 3


def test_a_malformed_ticket_is_a_400_naming_it(backend):
    url, ref, _ = backend
    body = ls_request("predict")
    body["tasks"] = [{"id": 1, "data": {"image": ref}}]
    resp = requests.post(f"{url}/predict", json=body, headers={TICKET_HEADER: "bad ticket!"}, timeout=30)
    assert resp.status_code == 400 and "malformed header X-CASS-Ticket" in resp.json()["error"]
    resp = requests.post(f"{url}/predict", json=body, cookies={TICKET_COOKIE: "x" * 200}, timeout=30)
    assert resp.status_code == 400 and "malformed cookie cass_ticket" in resp.json()["error"]
    # a well-formed ticket the backend does not know (expired, another process's) is just no ticket
    resp = requests.post(f"{url}/predict", json=body, headers={TICKET_HEADER: "A" * 16}, timeout=30)
    assert resp.status_code == 200 and "result" in resp.json()["results"][0]
