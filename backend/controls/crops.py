"""Background encodes of smart-rectangle crops (one worker thread, deduplicated, bounded).

A new smart rectangle is answered at once from the whole image's cached features (see
:mod:`backend.controls.smart`); the crop's own, higher-resolution encode (as long as a whole-image
encode on a CPU: the preset resizes the crop to its size) runs here, off the request, and stores the
features in the feature cache under the crop bytes' key. Once :meth:`CropEncoder.ready` says so, later
calls with the same rectangle (Label Studio re-sends every smart region of the annotation with each new
one) are answered from the crop's features.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from typing import Callable

log = logging.getLogger(__name__)


class CropEncoder:
    """One daemon worker running ``submit``-ted encodes in order.

    ``pending``: at most this many encodes wait (more are dropped: that crop is answered from the
    whole image until it is drawn again); ``remember``: how many finished keys :meth:`ready` knows.
    """

    def __init__(self, pending: int = 4, remember: int = 256):
        if pending < 1 or remember < 1:
            raise ValueError(f"pending ({pending}) and remember ({remember}) must be >= 1")
        self.max_pending, self.max_done = pending, remember
        self._queue: "queue.Queue[tuple[object, Callable[[], object]]]" = queue.Queue()
        self._pending: set = set()
        self._done: "OrderedDict[object, None]" = OrderedDict()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.failures = 0

    def ready(self, key) -> bool:
        """Whether ``key``'s encode has finished (its features are in the feature cache)."""
        with self._lock:
            return key in self._done

    def submit(self, key, encode: Callable[[], object]) -> bool:
        """Queue ``encode()`` under ``key`` unless it is done, queued or the queue is full; True if queued."""
        with self._lock:
            if key in self._done or key in self._pending or len(self._pending) >= self.max_pending:
                return False
            self._pending.add(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cass-crop-encoder", daemon=True)
                self._thread.start()
        self._queue.put((key, encode))
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (benchmarks, tests); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def _run(self) -> None:
        while True:
            key, encode = self._queue.get()
            ok = False
            try:
                encode()
                ok = True
            except Exception:  # noqa: BLE001 - a failed background encode only loses the upgrade
                self.failures += 1
                log.exception("background crop encode failed")
            with self._idle:
                self._pending.discard(key)
                if ok:
                    self._done[key] = None
                    while len(self._done) > self.max_done:
                        self._done.popitem(last=False)
                self._idle.notify_all()
