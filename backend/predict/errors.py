"""A task that failed, as Label Studio 1.23.2 stores and shows it, for every door that posts or answers.

Label Studio drops an entry without ``result`` silently (``ml/models.py``
``_get_predictions_from_ml_backend``) and keeps only ``result``, ``score`` and ``model_version`` of the
others; its prediction import does the same. So a task whose image answered 401/404, is not an image
or lacks its data field becomes a **visible error prediction**: no regions, score 0 and the reason in
``model_version`` (``"error: <reason> (<version>)"``, listed and filterable in the Data Manager;
``"error"`` kept for API users). ``/predict`` answers it (:meth:`backend.predict.pipeline.Pipeline.predict_tasks`),
a job posts it (:mod:`backend.jobs.runner`; the task still counts as failed there). Its version is
never the backend's, so *Retrieve predictions* and the next ``--only-outdated`` job predict the task again.

Errors that mean "later" (the batch's time budget used up, prompts still encoding) stay without
``result``: nothing is stored and Label Studio asks again.
"""
from __future__ import annotations

import re

MAX_VERSION_REASON_CHARS = 300  # of the reason in an error prediction's model_version
ERROR_VERSION_PREFIX = "error: "
#: per-task errors that say "later", not "this task is broken": left without ``result`` so that Label
#: Studio stores nothing and asks again (budget used up; text prompts still encoding)
RETRY_LATER_PREFIXES = ("not predicted:", "TextNotReady:")


def one_line(text, limit: int | None = None) -> str:
    """``text`` as one line of printable ASCII (whitespace runs -> one space, others -> ``?``),
    cut to ``limit`` characters with an ellipsis."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    flat = "".join(c if " " <= c <= "~" else "?" for c in flat)
    if limit is not None and len(flat) > limit:
        flat = flat[:limit - 3].rstrip() + "..."
    return flat


def task_error(exc: BaseException) -> str:
    """The reason of a task's failure as every door words it: ``"<ExceptionType>: <message>"``."""
    return f"{type(exc).__name__}: {exc}"


def error_entry(task_id, message: str, version: str) -> dict:
    """A per-task error entry ``{task, error, model_version}`` (no ``result``)."""
    return {"task": task_id, "error": message, "model_version": version}


def visible_error(entry: dict) -> dict:
    """A per-task error entry ``{task, error, model_version}`` -> a prediction Label Studio stores
    and shows: no regions, score 0, the reason in ``model_version`` (``"error"`` kept for API users).
    Errors that mean "retry later" (see :data:`RETRY_LATER_PREFIXES`) and predictions stay as they are."""
    if not isinstance(entry, dict) or "result" in entry or not isinstance(entry.get("error"), str) or \
            entry["error"].startswith(RETRY_LATER_PREFIXES):
        return entry
    reason = one_line(entry["error"], MAX_VERSION_REASON_CHARS)
    return {**entry, "result": [], "score": 0.0,
            "model_version": f"{ERROR_VERSION_PREFIX}{reason} ({entry.get('model_version')})"}


def is_error_version(model_version) -> bool:
    """Whether ``model_version`` is that of a visible error prediction (:func:`visible_error`)."""
    return isinstance(model_version, str) and model_version.startswith(ERROR_VERSION_PREFIX)


def error_prediction(task_id, message: str, version: str) -> dict | None:
    """The visible error prediction of a task that failed with ``message`` (what a job posts), or None
    for a "retry later" error (nothing to post)."""
    entry = visible_error(error_entry(task_id, message, version))
    return entry if "result" in entry else None
