"""What ``GET /health`` reports besides ``"status": "UP"``: the model, the feature cache, image
downloads from Label Studio, the inference slots and memory, and a ``degraded`` list in words.

Label Studio only looks at the status code (and that the body is JSON), with a 1 s timeout, so
``/health`` always answers 200 at once while the process can predict, and says honestly what is
degraded. The cache is probed off the request thread (:class:`CacheProbe`): a hung Redis makes
``/health`` report "slow" after ``wait_s`` instead of making it time out.
"""
from __future__ import annotations

import resource
import threading
import time
from typing import Callable

from backend.fetch.images import DOWNLOADS
from cass.redaction import redact

_probes_lock = threading.Lock()


class CacheProbe:
    """``cache.health()`` in a background thread, at most one at a time; :meth:`check` waits for it
    at most ``wait_s`` and otherwise returns the last known state marked ``"slow"``."""

    def __init__(self, cache, wait_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.wait_s = wait_s
        self.clock = clock
        self._lock = threading.Lock()
        self._done: threading.Event | None = None
        self._last: dict | None = None
        self._started = 0.0

    def _run(self, done: threading.Event) -> None:
        try:
            state = dict(self.cache.health())
        except Exception as exc:
            state = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"}
        with self._lock:
            self._last = state
        done.set()

    def check(self) -> dict:
        with self._lock:
            if self._done is None or self._done.is_set():
                self._done = threading.Event()
                self._started = self.clock()
                threading.Thread(target=self._run, args=(self._done,), name="cass-cache-probe",
                                 daemon=True).start()
            done = self._done
        done.wait(self.wait_s)
        with self._lock:
            if done.is_set():
                return dict(self._last)
            state = dict(self._last or {"reachable": None})
            state["slow"] = (f"the cache did not answer a health probe within {self.wait_s:g}s (probe running "
                             f"for {self.clock() - self._started:.1f}s)")
            return state


def memory() -> dict:
    """Resident memory of this process now and at its peak, in MiB (Linux /proc; else getrusage)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def report(predictor, settings=None) -> dict:
    """The health fields of a :class:`backend.predict.predictor.Predictor` (the engine is loaded: it exists);
    with ``settings``, ``label_studio``: whether LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set
    (:meth:`backend.config.Settings.label_studio_state`; ``configured: false`` comes with the hint)."""
    with _probes_lock:
        probe = predictor.__dict__.get("_cache_probe")
        if probe is None or probe.cache is not predictor.cache:
            probe = predictor.__dict__["_cache_probe"] = CacheProbe(predictor.cache)
    cache = {key: redact(value) if isinstance(value, str) else value for key, value in probe.check().items()}
    downloads = DOWNLOADS.report()
    slots = predictor.slots.stats()
    degraded = []
    if cache.get("slow"):
        degraded.append(f"feature cache slow: {cache['slow']}")
    elif cache.get("reachable") is False:
        reason = cache.get("last_error") or cache.get("error") or "no answer"
        degraded.append(f"feature cache unreachable ({reason}): predicting without the shared cache")
    for where, state in downloads.items():
        if not state.get("reachable", True):
            degraded.append(f"image downloads from Label Studio at {where} failing ({state['failures_in_a_row']} "
                            f"in a row, last {state['seconds_ago']:g}s ago): {state.get('last_error')}")
    if slots["queue_full"]:
        degraded.append("busy: every inference slot and queue place is taken; new /predict requests get "
                        "HTTP 503 until one finishes")
    out = {"model_version": predictor.model_version, "model_loaded": True, "cache": cache,
           "inference": slots, "downloads": downloads, "memory": memory(), "degraded": degraded}
    if settings is not None and hasattr(settings, "label_studio_state"):
        out["label_studio"] = settings.label_studio_state()
    return out
