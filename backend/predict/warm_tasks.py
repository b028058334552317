"""Feature-cache warm-up on Label Studio's ``TASKS_CREATED`` webhook.

Label Studio registers the backend's ``/webhook`` for all events; ``TASKS_CREATED`` carries the new
tasks and the whole project (label config included). :class:`TaskWarmer` queues each new task's
image(s) in a :class:`backend.predict.warmup.Warmer` (one per process, made with the engine in
``create_app``); its worker thread fetches the bytes with the same policy and Label Studio
credentials as ``/predict`` of that project, and encodes them under the predictor's engine lock
(``Predictor.encode``), so that the first ``/predict`` of the task is a cache hit. Submitting never
blocks: when the queue is full the images are counted (``cass_warmup_rejected_total``), logged once
per episode, and simply encoded on their first prediction.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from backend.predict.warmup import Warmer

from backend.fetch.images import show_url
from backend.controls.labels import BrushTarget, TaskDataError

log = logging.getLogger("backend.predict.warm_tasks")


@dataclass(frozen=True)
class WarmJob:
    """One image to warm: the queue item of the :class:`~backend.predict.warmup.Warmer`. Two jobs are the same
    (queued once) when they name the same image reference for the same Label Studio."""

    ref: str                                                   # the task's image value
    base: str                                                  # Label Studio it resolves against
    task_id: Any = field(default=None, compare=False)
    fetch: Callable[[str, Any], bytes] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:  # the Warmer's failure log line names the job
        return f"task {self.task_id} image {show_url(self.ref)}"


def job_bytes(job: WarmJob) -> int:
    """Bytes a queued job holds: its reference string (a ``data:`` URL is the whole image, inline)."""
    return len(job.ref) + len(job.base)


class TaskWarmer:
    """The backend's warm-up queue (see the module docstring), bounded in images (``max_queue``) and in
    bytes held (``max_bytes``: inline ``data:`` URLs waiting plus images fetched and being encoded)."""

    def __init__(self, predictor, max_queue: int, workers: int = 1, *, max_bytes: int):
        self.predictor = predictor
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.warmer = Warmer(predictor.cache, predictor.engine, self._fetch, max_queue=max_queue,
                             workers=workers, encode=predictor.encode, name="cass-warmup",
                             max_bytes=max_bytes, size=job_bytes)
        self._lock = threading.Lock()
        self._full = False  # in a queue-full episode (logged once)

    @staticmethod
    def _fetch(job: WarmJob) -> bytes:
        return job.fetch(job.ref, job.task_id)

    def submit_tasks(self, tasks, targets: tuple[BrushTarget, ...], fetch: Callable[[str, Any], bytes],
                     base: str = "") -> dict:
        """Queue the images of ``tasks`` (each image of each ``BrushLabels`` target once); never blocks.

        Returns ``{"queued": images accepted (or already waiting), "rejected": images not queued
        (queue full or closed), "skipped": tasks without a usable image value}``; an image named by
        several tasks counts once. ``fetch(ref, task_id)`` downloads as ``/predict`` of the project
        would; ``base``: the Label Studio the references resolve against (part of an image's identity).
        """
        queued = rejected = skipped = 0
        seen: set[WarmJob] = set()
        for task in tasks if isinstance(tasks, list) else ():
            if not isinstance(task, dict):
                skipped += 1
                continue
            try:
                refs = [target.image_url(task) for target in targets]
            except TaskDataError as exc:
                log.debug("warm-up: task %s skipped: %s", task.get("id"), exc)
                skipped += 1
                continue
            for ref in refs:
                job = WarmJob(ref, base, task.get("id"), fetch)
                if job in seen:  # the same image in two tasks (or controls) of this import
                    continue
                seen.add(job)
                if self.warmer.submit(job):
                    queued += 1
                else:
                    rejected += 1
        with self._lock:
            first_full = rejected and not self._full
            self._full = bool(rejected)
        if first_full:
            stats = self.warmer.stats()
            log.warning("warm-up queue full (CASS_WARMUP_QUEUE=%d images, CASS_WARMUP_QUEUE_MB=%.0f MiB held, "
                        "%d bytes now%s): %d image(s) not queued; they are encoded on their first prediction "
                        "instead (logged once until the queue has room)", self.max_queue,
                        self.max_bytes / 2**20, stats.get("queued_bytes", 0),
                        ", closed" if stats.get("closed") else "", rejected)
        return {"queued": queued, "rejected": rejected, "skipped": skipped}

    def stats(self) -> dict:
        return self.warmer.stats()

    def join(self, timeout: float | None = None) -> bool:
        return self.warmer.join(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self.warmer.close(cancel_pending=True, timeout=timeout)


def make_task_warmer(predictor, settings) -> TaskWarmer | None:
    """The process's warmer, or None when ``CASS_WARMUP_QUEUE`` is 0 (``settings``: backend.config.Settings:
    ``warmup_queue`` images, ``warmup_queue_bytes`` bytes at most)."""
    size = settings.warmup_queue
    if not size:
        log.info("cache warm-up on TASKS_CREATED is off (CASS_WARMUP_QUEUE=0)")
        return None
    return TaskWarmer(predictor, max_queue=size, max_bytes=int(settings.warmup_queue_bytes))
