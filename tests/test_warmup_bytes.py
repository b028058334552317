"""Issue 21: the warm-up queue is bounded in bytes as well as in items. A ``data:`` URL is held inline
while it waits; fetched bytes are held while they are encoded; beyond ``max_bytes`` a submit is refused."""
from __future__ import annotations

import base64
import threading

from backend.controls.config import parse_controls
from backend.predict.warm_tasks import TaskWarmer, job_bytes, WarmJob
from backend.predict.warmup import Warmer
from cass.cache import MemoryCache
from tests.test_warmup import FakeModel

MiB = 1024 * 1024
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="cat"/></BrushLabels></View>')


def test_the_warmer_refuses_items_beyond_its_byte_bound_and_frees_them_when_done():
    gate = threading.Event()
    started = threading.Event()

    def fetch(item: str) -> bytes:
        started.set()
        assert gate.wait(10)
        return item.encode()

    warmer = Warmer(MemoryCache(), FakeModel(), fetch, max_queue=100, max_bytes=100, size=len)
    assert warmer.submit("a" * 40)  # being warmed (blocked in fetch)
    assert started.wait(10)
    assert warmer.submit("b" * 40)
    assert not warmer.submit("c" * 40)  # 120 > 100 bytes
    assert warmer.submit("d" * 20)  # exactly 100
    stats = warmer.stats()
    assert stats["queued_bytes"] == 100 and stats["max_bytes"] == 100 and stats["rejected_bytes"] == 1
    gate.set()
    assert warmer.join(10)
    assert warmer.stats()["queued_bytes"] == 0
    assert warmer.submit("c" * 40)
    warmer.close()


def test_an_item_alone_over_the_bound_is_refused():
    warmer = Warmer(MemoryCache(), FakeModel(), lambda item: b"", max_bytes=10, size=len)
    assert not warmer.submit("x" * 11)
    warmer.close()


def test_twenty_big_data_urls_queue_only_what_the_byte_bound_allows():
    class Predictor:
        cache = MemoryCache()
        engine = FakeModel()
        gate = threading.Event()

        def encode(self, data):
            assert self.gate.wait(10)
            return self.engine.encode(data)

    predictor = Predictor()
    warmer = TaskWarmer(predictor, max_queue=1000, max_bytes=10 * MiB)
    payload = b"\x89PNG" + bytes(2 * MiB)
    tasks = [{"id": i, "data": {"image": "data:image/png;base64," + base64.b64encode(payload + bytes([i])).decode()}}
             for i in range(20)]
    controls = parse_controls(CONFIG)
    answer = warmer.submit_tasks(tasks, controls.outputs, lambda ref, task_id: base64.b64decode(ref.split(",", 1)[1]))
    assert answer["queued"] <= 4 and answer["rejected"] >= 16  # each data: URL is ~2.7 MB inline
    assert warmer.stats()["queued_bytes"] <= 10 * MiB
    predictor.gate.set()
    assert warmer.join(20)
    warmer.close()


def test_job_bytes_counts_inline_data_and_the_reference():
    assert job_bytes(WarmJob("data:image/png;base64," + "A" * 1000, "")) >= 1000
    assert job_bytes(WarmJob("/data/upload/1/x.png", "http://ls")) < 100
