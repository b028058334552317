"""Prediction logic, independent of label-studio-ml: tasks + brush targets -> Label Studio predictions.

Per image: fetch bytes -> ``cache.get_or_compute(bytes, engine.fingerprint, encode)`` ->
``engine.segment(features, vocabulary)`` -> one brush region per label present. A task that fails
(image not fetchable or not decodable, data field missing, any unexpected error) gets an error entry
and a log line; the other tasks of the batch are unaffected.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
from PIL import Image

from cass.features import FeaturesFormatError
from cass.images import ImageError
from cass.vocabulary import Vocabulary, VocabularyError

from backend.config import Settings
from backend.predict.errors import error_entry, task_error
from backend.predict.faults import TaskOutOfMemory, is_out_of_memory, recover_from_oom
from backend.fetch.images import ImageFetchError
from backend.controls.labels import BrushTarget, TaskDataError
from backend.controls.base import regions_for
from backend.controls.brush_rle import confidence_sums
from backend.predict.slots import InferenceSlots
from backend.predict.task_info import TaskInfo
from backend.predict.text_budget import TextNotReady, TextPreparer
from backend.predict.loading import NoCache
from backend.predict.version import model_version

if TYPE_CHECKING:
    from cass.cache import FeatureCache

log = logging.getLogger("backend.predict.predictor")

#: Failures of one task that are about its data, not a bug: logged as one line, no traceback.
TASK_ERRORS = (TaskDataError, ImageFetchError, ImageError, VocabularyError, FeaturesFormatError,
               TaskOutOfMemory, TextNotReady)


class Engine(Protocol):
    """What the predictor needs of :class:`cass.CASS` (a fake in unit tests)."""

    fingerprint: str
    model_version: str
    preset: object

    def encode(self, image: bytes): ...
    def segment(self, features, vocabulary, *, params=None): ...


class Predictor:
    """Turns Label Studio tasks into brush predictions with one loaded engine.

    Thread-safe: the engine work (encode, segment) and mask encoding run in ``slots``
    (:class:`~backend.predict.slots.InferenceSlots`: ``slots.slots`` at once, the request due first first; one
    slot by default, i.e. one engine lock), downloads outside them.
    ``predict_budget_s``: tasks not started within this many seconds of the batch's start get an
    error entry instead of a prediction (Label Studio gives the whole ``/predict`` call
    ``ML_TIMEOUT_PREDICT``, 100 s by default, and stores nothing when it times out).
    ``text_budget_s``: seconds one request spends encoding new prompts at most; the rest continue in
    the background, ``max_background_text`` label sets at once (:mod:`backend.predict.text_budget`).
    """

    def __init__(self, engine: Engine, cache: "FeatureCache | None" = None, *,
                 predict_budget_s: float = Settings.default("predict_budget_s"), clock: Callable[[], float] = time.monotonic,
                 slots: InferenceSlots | None = None, text_budget_s: float = Settings.default("text_budget_s"),
                 max_background_text: int = 1):
        self.engine = engine
        self.cache = cache if cache is not None else NoCache()  # backend.predict.loading
        self.predict_budget_s = predict_budget_s
        self.clock = clock
        self.slots = slots if slots is not None else InferenceSlots()
        self._lock = self.slots  # the engine lock: one of the inference slots, FIFO
        self.text = TextPreparer(self.slots, budget_s=text_budget_s, request_budget_s=predict_budget_s,
                                 clock=clock, max_background=max_background_text)
        self._stats_lock = threading.Lock()
        self.counters = {"tasks": 0, "predictions": 0, "failed_tasks": 0, "skipped_tasks": 0,
                         "regions": 0, "cache_hits": 0, "requests": 0, "cache_misses": 0}

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    # -------------------------------------------------------------------------------------------
    def predict(self, tasks: list[dict], targets: tuple[BrushTarget, ...],
                fetch: Callable[[str, object], bytes], *, memory=None, version: str | None = None) -> list[dict]:
        """One entry per task, in order: a prediction ``{result, score, model_version}`` or an error
        entry ``{error, task, model_version}`` (no ``result``: Label Studio skips it, see docs).
        ``score``: the mean top-1 probability over every pixel of the task's image(s), unlabelled
        pixels 0 (:func:`backend.controls.brush_rle.confidence_sums`); each region's ``score``: its class's mean
        probability over the class's pixels. ``memory``: the project's memory (``cass.memory.ProjectMemory``)
        or None; ``version``: the request's ``model_version`` (:func:`backend.predict.version.model_version`
        of the engine, the targets and the memory when not given). Both come from the request's
        context (:mod:`backend.predict.pipeline`), never from thread or context variables."""
        version = version or self.version_of(targets, memory)
        self.text.start_request()
        try:
            return self._predict(tasks, targets, fetch, memory, version)
        finally:
            self.text.end_request()

    def _predict(self, tasks: list[dict], targets: tuple[BrushTarget, ...],
                 fetch: Callable[[str, object], bytes], memory, version: str) -> list[dict]:
        start = self.clock()
        out = []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            if self.clock() - start > self.predict_budget_s:
                out.append(self.error_entry(task_id, f"not predicted: the batch used its time budget of "
                                                     f"{self.predict_budget_s:g}s (CASS_PREDICT_BUDGET_S); "
                                                     f"retrieve predictions again for the rest", version))
                self._count("skipped_tasks")
                continue
            t0 = self.clock()
            info = TaskInfo()
            try:
                prediction = self.predict_task(task, targets, fetch, info, memory=memory, version=version)
            except Exception as exc:  # one bad task never loses the others
                if is_out_of_memory(exc):
                    exc = recover_from_oom(exc)
                if isinstance(exc, TASK_ERRORS):
                    log.warning("task %s: no prediction: %s", task_id, exc)
                else:
                    log.exception("task %s: no prediction: unexpected %s", task_id, type(exc).__name__)
                out.append(self.error_entry(task_id, task_error(exc), version))
                self._count("failed_tasks")
                continue
            log.info("task %s: %d regions, score %.3f, %s, %.2fs", task_id, len(prediction["result"]),
                     prediction["score"], info.describe(), self.clock() - t0)
            out.append(prediction)
            self._count("predictions")
            self._count("regions", len(prediction["result"]))
        self._count("tasks", len(tasks))
        self._count("requests")
        return out

    def predict_task(self, task: dict, targets: tuple[BrushTarget, ...],
                     fetch: Callable[[str, object], bytes], info: "TaskInfo | None" = None, *,
                     memory=None, version: str | None = None, prefill=None) -> dict:
        """One task's prediction ``{result, score, model_version}``; raises on a task that fails.
        ``prefill``: features encoded ahead in a batch (:class:`backend.jobs.batching.Prefill`), or None."""
        if not isinstance(task, dict):
            raise TaskDataError(f"a task must be a JSON object, got {type(task).__name__}")
        features_by_url: dict[str, object] = {}
        images_by_url: dict[str, bytes] = {}  # PAMR needs the pixels again (not kept in the features)
        regions: list[dict] = []
        score_sum, pixels = 0.0, 0
        for target in targets:
            url = target.image_url(task)
            if url not in features_by_url:
                t0 = time.perf_counter()
                image_bytes = fetch(url, task.get("id"))
                if info is not None:
                    info.fetch_s += time.perf_counter() - t0
                features_by_url[url] = self.features(image_bytes, info, prefill)
                images_by_url[url] = image_bytes
            segmentation = self.segment(features_by_url[url], target, info, images_by_url[url], memory,
                                        probs=getattr(target, "instances", False))
            with self._lock:  # mask encoding is CPU work at the original size: it takes a slot too
                target_regions, _, _ = regions_for(segmentation, target)
            regions.extend(target_regions)
            target_sum, target_pixels = confidence_sums(segmentation)  # the score: regions.confidence_sums
            score_sum += target_sum
            pixels += target_pixels
        return {"result": regions, "score": round(score_sum / pixels, 4) if pixels else 0.0,
                "model_version": version or self.version_of(targets, memory)}

    def text_params(self, target: BrushTarget):
        """The engine's text-side parameters for ``target`` (threshold, PAMR), or None: the preset's."""
        params = None
        if target.rule.threshold is not None:
            params = dataclasses.replace(self.engine.preset.text, prob_thd=target.rule.threshold)
        if target.pamr is not None and (target.pamr != (self.engine.preset.text.pamr is not None)):
            params = dataclasses.replace(params or self.engine.preset.text, pamr=target.pamr)
        return params

    def engine_version(self, targets) -> str:
        """The engine's version for the text-side parameters of ``targets`` (a per-control PAMR shows
        as its tag, as with ``CASS_PAMR``); several different ones are joined by ``+``."""
        version_for = getattr(self.engine, "version_for", None)
        if version_for is None:
            return self.model_version
        versions = {version_for(params) if params is not None else self.model_version
                    for params in (self.text_params(t) for t in targets)}
        return "+".join(sorted(versions)) if versions else self.model_version

    def version_of(self, targets, memory=None) -> str:
        """The ``model_version`` of predictions for ``targets`` with ``memory``: a pure function of the
        engine, the label set and the memory digest (:mod:`backend.predict.version`)."""
        return model_version(self.engine_version(targets), targets,
                             getattr(memory, "digest", None) if memory else None)

    def error_entry(self, task_id, message: str, version: str | None = None) -> dict:
        return error_entry(task_id, message, version or self.model_version)

    # -------------------------------------------------------------------------------------------
    def encode(self, image_bytes: bytes, info: "TaskInfo | None" = None):
        """``engine.encode`` under the engine lock (also the cache warm-up's encode)."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                return self.engine.encode(image_bytes)
            finally:
                if info is not None:
                    info.encode_s += time.perf_counter() - t0

    def features(self, image_bytes: bytes, info: "TaskInfo | None" = None, prefill=None):
        """The image's features: from ``prefill`` (a job's batched encode), else the feature cache
        (computing and storing them on a miss)."""
        found = prefill.take(image_bytes) if prefill is not None else None
        if found is not None:
            features, hit = found
        else:
            features, hit = self.cache.get_or_compute(image_bytes, self.engine.fingerprint,
                                                      lambda: self.encode(image_bytes, info))
        self._count("cache_hits" if hit else "cache_misses")
        if info is not None:
            info.hits += bool(hit)
            info.misses += not hit
        return features

    def prepare_text(self, vocabulary: Vocabulary) -> None:
        """Encode the vocabulary's prompts in chunks of :data:`TEXT_CHUNK`, one inference slot per
        chunk (released in between, so other requests' image work interleaves with a big new label
        set). Each embedding is cached as it is computed (in-process, and in Redis with REDIS_URL),
        so an interrupted or timed-out request's retry continues where it stopped. Within a
        ``/predict``, encoding stops at ``text_budget_s`` with :class:`TextNotReady`, the rest going
        on in the background (:mod:`backend.predict.text_budget`). No-op for an engine without a ``text``
        encoder (unit-test fakes)."""
        text = getattr(self.engine, "text", None)
        if not callable(text):
            return
        self.text.prepare(text, vocabulary.queries)

    def segment(self, features, target: BrushTarget, info: "TaskInfo | None" = None, image: bytes | None = None,
                memory=None, probs: bool = False):
        """``engine.segment`` for one output control, under a slot; ``memory``: the project's memory
        (a non-empty ``cass.memory.ProjectMemory``) or None; ``probs``: also the per-class probabilities
        (``Segmentation.probs``: each object's own score with ``cass_instances``; asked only then)."""
        self.prepare_text(target.vocabulary)
        params = self.text_params(target)
        pamr = getattr(params or self.engine.preset.text, "pamr", None) is not None
        with self._lock:
            t0 = time.perf_counter()
            try:
                extra = {"memory": memory} if memory is not None and len(memory) else {}
                if probs:
                    extra["return_probs"] = True
                if pamr:  # PAMR recomputes the image's pixels (features stay label- and PAMR-free)
                    extra["image"] = image
                return self.engine.segment(features, target.vocabulary, params=params, **extra)
            finally:
                if info is not None:
                    info.segment_s += time.perf_counter() - t0

    def warm_up(self) -> None:
        """Run a small image through encode and segment once (first calls are several times slower)."""
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buf, "PNG")
        t0 = time.perf_counter()
        with self._lock:
            features = self.engine.encode(buf.getvalue())
            pamr = getattr(self.engine.preset.text, "pamr", None) is not None
            self.engine.segment(features, Vocabulary.from_names(["object"]),
                                **({"image": buf.getvalue()} if pamr else {}))
        log.info("warm-up done in %.2fs", time.perf_counter() - t0)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[name] += n

    def stats(self) -> dict:
        with self._stats_lock:
            counters = dict(self.counters)
        try:
            cache = self.cache.stats()
        except Exception as exc:
            cache = {"error": f"{type(exc).__name__}: {exc}"}
        return {"model_version": self.model_version, **counters, "cache": cache, "text": self.text.stats()}
