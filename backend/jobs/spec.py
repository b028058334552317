"""What a job is: one project's tasks (all or filtered) and how they are split into chunks."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


class JobSpecError(ValueError):
    """A job request the backend cannot run (names the parameter and what is wrong)."""


MIN_CHUNK = 4     # tasks per chunk at least: each chunk costs a label-config read, a task list and an RQ job
MAX_CHUNK = 1000
FIELDS = ("project", "tasks", "only_outdated", "all", "view", "chunk_size")  # of a POST /jobs body


@dataclass(frozen=True)
class JobSpec:
    """``project``: Label Studio project id; ``task_ids``: only these tasks (None = all of the project,
    or of ``view``, a data-manager view id); ``only_outdated`` (the default): leave out, when the job
    is planned, tasks that already have a prediction of the version the workers will post
    (``<engine>-labels.<label-set digest>``, :mod:`backend.predict.version`); False (``--all``): queue
    every task (the workers still skip and count those already current: a task never gets a second
    prediction of one version); ``chunk_size``: tasks per RQ job."""

    project: int
    task_ids: tuple[int, ...] | None = None
    only_outdated: bool = True
    view: int | None = None
    chunk_size: int = 8
    retry_of: str | None = field(default=None, compare=False)

    def __post_init__(self):
        for name in ("project", "chunk_size") + (("view",) if self.view is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JobSpecError(f"{name} must be a positive integer, got {value!r}")
        if self.chunk_size < MIN_CHUNK:
            raise JobSpecError(f"chunk_size must be at least {MIN_CHUNK} tasks per chunk, got {self.chunk_size}")
        if self.chunk_size > MAX_CHUNK:
            raise JobSpecError(f"chunk_size must be at most {MAX_CHUNK}, got {self.chunk_size}")
        if self.task_ids is not None:
            if not self.task_ids:
                raise JobSpecError("tasks: an empty list of task ids (leave it out for all tasks of the project)")
            bad = [t for t in self.task_ids if isinstance(t, bool) or not isinstance(t, int) or t < 1]
            if bad:
                raise JobSpecError(f"tasks must be positive integer task ids, got {bad[:5]!r}")
            object.__setattr__(self, "task_ids", tuple(sorted(set(self.task_ids))))

    @property
    def key(self) -> str:
        """Same project and filter -> same key (the one-running-job lock); chunking is not part of it."""
        ident = {"project": self.project, "tasks": list(self.task_ids) if self.task_ids else None,
                 "only_outdated": self.only_outdated, "view": self.view}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["task_ids"] = list(self.task_ids) if self.task_ids is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobSpec":
        return cls(project=d["project"], task_ids=tuple(d["task_ids"]) if d.get("task_ids") else None,
                   only_outdated=bool(d.get("only_outdated", True)), view=d.get("view"),
                   chunk_size=d.get("chunk_size", 8), retry_of=d.get("retry_of"))

    @classmethod
    def from_request(cls, body: object, default_chunk: int = 8) -> "JobSpec":
        """A ``POST /jobs`` body: ``{"project": 1, "tasks": [1, 2], "only_outdated": true, "view": 3,
        "chunk_size": 8}`` (``"all": true`` = ``"only_outdated": false``); anything else raises
        :class:`JobSpecError` naming the problem."""
        if not isinstance(body, dict):
            raise JobSpecError(f"the body must be a JSON object such as {{\"project\": 1}}, got "
                               f"{type(body).__name__}")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise JobSpecError(f"unknown field(s) {unknown}: use {', '.join(FIELDS)}")
        if "project" not in body:
            raise JobSpecError("'project' (the Label Studio project id) is missing")
        tasks = body.get("tasks")
        if tasks is not None and not isinstance(tasks, list):
            raise JobSpecError(f"'tasks' must be a list of task ids, got {type(tasks).__name__}")
        for name in ("only_outdated", "all"):
            if name in body and not isinstance(body[name], bool):
                raise JobSpecError(f"'{name}' must be true or false, got {body[name]!r}")
        every = body.get("all", False)
        if every and body.get("only_outdated") is True:
            raise JobSpecError("'all': true queues every task, 'only_outdated': true only those without a "
                               "current prediction: give one of them")
        only = body.get("only_outdated", True) and not every
        return cls(project=body["project"], task_ids=tuple(tasks) if tasks is not None else None,
                   only_outdated=only, view=body.get("view"), chunk_size=body.get("chunk_size", default_chunk))


def parse_task_ids(text: str) -> tuple[int, ...]:
    """``"1,2,5-7"`` -> ``(1, 2, 5, 6, 7)``; a bad item raises :class:`JobSpecError`."""
    out: list[int] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            if "-" in item:
                lo, hi = (int(x) for x in item.split("-", 1))
                if hi < lo or hi - lo > 1_000_000:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise JobSpecError(f"--tasks: {item!r} is not a task id or a range such as 5-7") from None
    if not out:
        raise JobSpecError("--tasks: no task ids given")
    return tuple(out)


def chunks(task_ids: list[int], size: int) -> list[list[int]]:
    """``task_ids`` in order, ``size`` at a time (the last chunk may be shorter)."""
    return [list(task_ids[i:i + size]) for i in range(0, len(task_ids), size)]
