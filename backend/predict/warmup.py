"""Background cache warm-up: encode images before anyone asks for a prediction.

:class:`Warmer` keeps a bounded queue of image URLs and worker threads that fetch each image and
put its features in the feature cache (``cache.get_or_compute``). :meth:`Warmer.submit` never
blocks: it returns False when the queue is full (or the warmer is closed), so a webhook handler
(Label Studio's ``TASKS_CREATED``) can enqueue a whole import and answer at once. A URL that is
already queued or being warmed is not queued twice. Warm-up competes with predictions for the
CPU/GPU; ``workers=1`` keeps it to one encode at a time (the cache's single-flight makes a
prediction for an image that is being warmed wait for that computation instead of repeating it).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Hashable, Mapping

from backend.config import Settings

log = logging.getLogger("cass.warmup")

_STOP = object()


class Warmer:
    """Bounded background queue that warms the feature cache.

    Args:
        cache: a :class:`cass.cache.FeatureCache`.
        model: the engine (``fingerprint`` and ``encode(bytes)``, e.g. :class:`cass.CASS`).
        fetch_bytes: ``item -> encoded image bytes`` (raises on failure); runs in a worker thread.
            Items are whatever :meth:`submit` receives: a URL string, or any hashable job object
            (the backend queues small jobs that carry their project's credentials).
        max_queue: items waiting at most (beyond those being warmed).
        workers: worker threads.
        encode: optional ``bytes -> ImageFeatures`` used instead of ``model.encode`` (e.g. to take
            the backend's engine lock).
        max_bytes: bytes held for warm-up at most: ``size(item)`` of every queued item (a ``data:`` URL
            is its image, inline) plus the fetched bytes of those being warmed; a submit beyond is
            refused (None: items alone bound the queue).
        size: ``item -> bytes`` it holds while it waits (default: ``len`` of str/bytes items, else 0).
    """

    def __init__(self, cache, model, fetch_bytes: Callable[[Any], bytes], max_queue: int = Settings.default("warmup_queue"),
                 workers: int = 1, *, encode: Callable[[bytes], Any] | None = None,
                 name: str = "cass-warmup", max_bytes: int | None = None,
                 size: Callable[[Any], int] | None = None):
        if max_queue < 1 or workers < 1:
            raise ValueError("max_queue and workers must be >= 1")
        self.cache = cache
        self.model = model
        self.fetch_bytes = fetch_bytes
        self.encode = encode or model.encode
        self.max_queue = int(max_queue)
        self.workers = int(workers)
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: set = set()  # queued or being warmed
        self.max_bytes = int(max_bytes) if max_bytes is not None else None
        self._size = size or _default_size
        self._held: dict[Any, int] = {}  # pending item -> bytes it holds (its size, then its fetched bytes)
        self._bytes = 0
        self._closed = False
        self._counts = {"submitted": 0, "rejected": 0, "duplicates": 0, "done": 0, "hits": 0,
                        "computed": 0, "failed": 0, "in_progress": 0,
                        "rejected_bytes": 0}
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------------
    def submit(self, url: Hashable) -> bool:
        """Queue ``url`` (a URL or any hashable job) for warm-up without blocking. True if it is (or already was) queued or being
        warmed; False if the queue is full or the warmer is closed."""
        with self._lock:
            if self._closed:
                self._counts["rejected"] += 1
                return False
            if url in self._pending:
                self._counts["duplicates"] += 1
                return True
            size = max(0, int(self._size(url)))
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                self._counts["rejected"] += 1
                self._counts["rejected_bytes"] += 1
                return False
            try:
                self._queue.put_nowait(url)
            except queue.Full:
                self._counts["rejected"] += 1
                return False
            self._pending.add(url)
            self._hold(url, size)
            self._counts["submitted"] += 1
            return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being warmed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self, cancel_pending: bool = True, timeout: float | None = 10.0) -> None:
        """Stop accepting URLs, drop the queued ones (unless ``cancel_pending=False``: warm them
        first) and stop the workers (each finishes the image it is on)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_pending:
            while True:
                try:
                    url = self._queue.get_nowait()
                except queue.Empty:
                    break
                with self._idle:
                    self._pending.discard(url)
                    self._hold(url, 0)
                    self._idle.notify_all()
        for _ in self._threads:
            self._queue.put(_STOP)  # blocks only while workers drain a full queue
        for thread in self._threads:
            thread.join(timeout)

    def stats(self) -> dict:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["queued"] = self._queue.qsize()
            out["queued_bytes"] = self._bytes
        out.update(max_queue=self.max_queue, max_bytes=self.max_bytes, workers=self.workers, closed=self._closed)
        return out

    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            url = self._queue.get()
            if url is _STOP:
                return
            with self._lock:
                self._counts["in_progress"] += 1
            outcome = "failed"
            try:
                data = self.fetch_bytes(url)
                with self._lock:  # the fetched bytes are what this item holds now
                    self._hold(url, len(data))
                _, hit = self.cache.get_or_compute(data, self.model.fingerprint, lambda: self.encode(data))
                outcome = "hits" if hit else "computed"
            except Exception as exc:  # one bad image must not stop the warmer
                log.warning("warm-up of %s failed: %s: %s", url, type(exc).__name__, exc)
            finally:
                with self._idle:
                    self._counts["in_progress"] -= 1
                    self._counts["done"] += 1
                    self._counts[outcome] += 1
                    self._pending.discard(url)
                    self._hold(url, 0)
                    self._idle.notify_all()

    def _hold(self, item: Any, size: int) -> None:
        """``item`` holds ``size`` bytes now (0: none, it is done); call locked."""
        self._bytes += size - self._held.pop(item, 0)
        if size:
            self._held[item] = size


def _default_size(item: Any) -> int:
    return len(item) if isinstance(item, (str, bytes, bytearray)) else 0


# (stats key, metric name, type, help)
PROMETHEUS_METRICS = (
    ("queued", "cass_warmup_queued", "gauge", "Image URLs waiting for warm-up"),
    ("in_progress", "cass_warmup_in_progress", "gauge", "Images being warmed"),
    ("queued_bytes", "cass_warmup_queued_bytes", "gauge", "Bytes held by queued and in-progress warm-ups"),
    ("submitted", "cass_warmup_submitted_total", "counter", "URLs accepted for warm-up"),
    ("rejected", "cass_warmup_rejected_total", "counter", "URLs refused (queue full or closed)"),
    ("computed", "cass_warmup_computed_total", "counter", "Images encoded by the warmer"),
    ("hits", "cass_warmup_already_cached_total", "counter", "Warmed images that were already cached"),
    ("failed", "cass_warmup_failed_total", "counter", "Warm-ups that failed (fetch or encode)"),
)


def render_prometheus(stats: Mapping[str, Any] | Warmer) -> str:
    """The warm-up queue's metrics alone in the Prometheus text format (``stats`` or a warmer)."""
    from backend.ops.prom_stats import StatsCollector, render

    snapshot = stats.stats() if isinstance(stats, Warmer) else dict(stats)
    return render(StatsCollector(PROMETHEUS_METRICS, lambda: snapshot))
