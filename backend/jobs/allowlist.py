"""What a pre-annotation worker agrees to run (issue 21).

Whoever can write to the state Redis can enqueue an RQ job, and RQ imports and calls whatever
function a job names, with arguments unpickled from Redis. Two rules close that:

* **JSON, not pickle** (:data:`SERIALIZER`): the queue writes and the worker reads job arguments and
  results as JSON. The only job, ``run_chunk(job_id, task_ids)``, takes a string and a list of ints
  and returns a dict of counts; a pickled job fails to decode and is marked failed, never unpickled;
* **an allow-list** (:class:`AllowedJob`): before a job's function is imported, its ``func_name``
  must be one of :data:`ALLOWED_FUNCTIONS`; otherwise :class:`JobRefused` is raised, the job is
  marked failed (no retries) with the reason, and nothing is imported. Success, failure and
  stopped callbacks named in a job are never imported either (the project sets none).
"""
from __future__ import annotations

import logging

from rq.job import Job
from rq.serializers import JSONSerializer

log = logging.getLogger("backend.jobs.allowlist")

SERIALIZER = JSONSerializer
#: the job functions a worker runs (``Jobs.start`` enqueues only run_chunk)
ALLOWED_FUNCTIONS: frozenset[str] = frozenset({"backend.jobs.runner.run_chunk"})


class JobRefused(RuntimeError):
    """A job naming a function outside :data:`ALLOWED_FUNCTIONS` (or an instance method)."""


class AllowedJob(Job):
    """RQ's ``Job`` that runs only :data:`ALLOWED_FUNCTIONS` and never imports a named callback."""

    def check_allowed(self) -> None:
        """Raise :class:`JobRefused` unless this job names an allowed module-level function."""
        name = self.func_name
        if self.instance is not None or name not in ALLOWED_FUNCTIONS:
            self.retries_left = 0  # refused for good: failed at once, not retried
            what = "a method of a pickled instance" if self.instance is not None else repr(name)
            raise JobRefused(f"job {self.id} refused: it names {what}, and this worker runs only "
                             f"{', '.join(sorted(ALLOWED_FUNCTIONS))} (backend.jobs.allowlist; was the state "
                             f"Redis written to by someone else?)")

    def perform(self):
        try:
            self.check_allowed()
        except JobRefused as exc:
            log.error("%s", exc)
            raise
        return super().perform()

    @property
    def success_callback(self):
        return self._no_callback("success", self._success_callback_name)

    @property
    def failure_callback(self):
        return self._no_callback("failure", self._failure_callback_name)

    @property
    def stopped_callback(self):
        return self._no_callback("stopped", self._stopped_callback_name)

    def _no_callback(self, kind: str, name: str | None) -> None:
        if name:
            log.warning("job %s names a %s callback %r: ignored (the worker imports no callbacks)",
                        self.id, kind, name)
        return None
