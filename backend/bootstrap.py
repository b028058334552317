"""The composition root: settings, engine, stores, project registry, listeners and the pipeline, built
once per process and handed down. No other module reaches back up for them.

* the HTTP app (:func:`backend.http.app.create_app`) builds :func:`build` with the ``TASKS_CREATED``
  warm-up queue;
* a job worker (``python -m backend worker``) builds it without (a worker only runs job chunks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.config import Settings


@dataclass
class Services:
    """What one process serves with (see the module docstring)."""

    settings: Settings
    predictor: Any      # backend.predict.predictor.Predictor
    projects: Any       # backend.predict.projects.ProjectRegistry
    memory: Any         # backend.corrections.memory.MemoryService
    warmer: Any         # backend.predict.warm_tasks.TaskWarmer, or None
    pipeline: Any       # backend.predict.pipeline.Pipeline


def build(settings: Settings | None = None, predictor=None, *, warm_tasks: bool = True) -> Services:
    """Everything a process needs; loads the engine unless ``predictor`` is given."""
    from backend.corrections.wiring import install_listeners
    from backend.predict.pipeline import Pipeline, parse_config
    from backend.predict.project_store import ProjectStore
    from backend.predict.loading import build_predictor
    from backend.predict.projects import ProjectRegistry
    from backend.predict.warm_tasks import make_task_warmer

    settings = settings or Settings.from_env()
    predictor = predictor or build_predictor(settings)
    projects = ProjectRegistry(settings, ProjectStore.from_url(settings.state_redis_url),
                               parse=lambda label_config: parse_config(label_config, settings))
    warmer = make_task_warmer(predictor, settings) if warm_tasks else None
    memory = install_listeners(settings, predictor, projects)
    pipeline = Pipeline(predictor, settings, projects, memory, warmer)
    return Services(settings, predictor, projects, memory, warmer, pipeline)
