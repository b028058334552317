"""The label-studio-ml 1.0.9 glue: a thin :class:`LabelStudioMLBase` and the manager that serves it.

label-studio-ml builds a model object for every ``/setup`` and ``/predict``; :class:`CASSBackend`
objects are therefore cheap (a cached label-config parse) and share the process's one
:class:`~backend.predict.predictor.Predictor`, which the app passes in as an init kwarg.

:class:`CASSManager` changes four things of the library's ``LabelStudioMLManager``:

* ``/setup`` and ``/predict`` report the engine's ``model_version`` (model + preset + weight digests)
  instead of the library's ``INITIAL`` / training-job ids, and nothing bumps it;
* ``/predict`` uses the label config and the Label Studio address of *its own* request and project,
  not whichever project called ``/setup`` last (the library keeps one model for all projects);
* ``/webhook`` events run ``process_event`` -> ``fit`` (a no-op: CASS is training-free) in-process,
  instead of spawning a Python process per annotation that writes a job directory; ``TASKS_CREATED``
  queues the new tasks' images for feature-cache warm-up (``backend.predict.warm_tasks``) without waiting for it;
* a bad label config or request answers HTTP 400 with the reason.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from label_studio_ml.exceptions import AnswerException
from label_studio_ml.model import LabelStudioMLBase, LabelStudioMLManager, ModelWrapper

from backend.fetch.images import ImageFetcher, ImageFetchError, LabelStudioAuth, policy_from_settings
from backend.controls.config import Controls, parse_controls
from backend.controls.smart import ContextError, refiner_for
from backend.controls.labels import LabelConfigError, config_digest, targets_size
from backend.controls.limits import ByteBoundedLRU
from backend.corrections.memory import predicting, versioned
from backend.predict.predictor import TASK_ERRORS

log = logging.getLogger("backend.http.mlbackend")


class CASSBackend(LabelStudioMLBase):
    """CASS brush pre-annotations for every ``BrushLabels`` control of a project."""

    def __init__(self, label_config=None, train_output=None, *, predictor=None, settings=None, warmer=None,
                 targets=None, **kwargs):
        if predictor is None or settings is None:
            raise TypeError("CASSBackend needs predictor= and settings= (see backend.http.app.create_app)")
        self.predictor = predictor
        self.settings = settings
        self.warmer = warmer  # backend.predict.warm_tasks.TaskWarmer, or None (CASS_WARMUP_QUEUE=0)
        # parse first: a config CASS cannot use raises LabelConfigError, naming what is missing (or
        # the limit it is over): BrushLabels / PolygonLabels outputs and smart tools (backend.controls);
        # ``targets``: already parsed (remembered from the project's /setup)
        if label_config:
            self.targets = parse_controls(label_config, settings.nothing, settings.limits)
        else:
            self.targets = targets if isinstance(targets, Controls) else Controls(tuple(targets or ()))
        # the library's own parse_config is not needed (and not linear): the config is not passed on
        super().__init__(label_config=None, train_output=train_output, **kwargs)

    @property
    def model_version(self) -> str:
        return self.predictor.model_version

    def predict(self, tasks, **kwargs):
        if not self.targets:
            raise LabelConfigError("no label config: /predict needs the project's label_config "
                                   "(or a /setup with its schema first)")
        context = kwargs.get("context")
        if isinstance(context, dict) and context.get("result"):  # a smart tool (docs/interactive.md)
            if len(tasks) != 1:
                raise ContextError(f"an interactive request (with 'context') holds one task, got {len(tasks)}")
            try:
                return [refiner_for(self.predictor).answer(tasks[0], self.targets, context,
                                                           self.fetcher().fetch)]
            except TASK_ERRORS as exc:
                raise ContextError(f"{type(exc).__name__}: {exc}") from exc
        return self.predictor.predict(tasks, self.targets, self.fetcher().fetch)

    def fetcher(self) -> ImageFetcher:
        """Downloads with the policy of the settings and this project's Label Studio credentials.

        ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` win. Without the key, the ``access_token``
        that Label Studio sent with ``/setup`` (its project creator's legacy token) is used; without
        the URL, the ``hostname`` of ``/setup`` too. The environment's key only ever goes to
        ``LABEL_STUDIO_URL`` (config.py refuses a key without a URL).
        """
        try:
            return self._fetcher()
        except ImageFetchError as exc:  # a Label Studio address that the strict URL parse refuses
            raise AnswerException(400, str(exc), {}) from exc

    def _fetcher(self) -> ImageFetcher:
        s = self.settings
        if s.label_studio_url:
            auth = LabelStudioAuth(s.label_studio_url, s.label_studio_api_key or self.access_token or None,
                                   source="LABEL_STUDIO_API_KEY" if s.label_studio_api_key else "/setup")
        elif self.hostname:
            auth = LabelStudioAuth(self.hostname, self.access_token or None, source="/setup")
        else:
            auth = None
        # hosts: Label Studio's, CASS_ALLOWED_HOSTS; limits (docs/security.md)
        policy = policy_from_settings(s, auth.base_url if auth is not None else None)
        return ImageFetcher(policy, auth)

    def warm(self, tasks) -> dict | None:
        """Queue the images of ``tasks`` for feature-cache warm-up (never blocks); None when off."""
        if self.warmer is None or not self.targets:
            return None
        try:
            fetcher = self.fetcher()
        except AnswerException as exc:
            log.warning("warm-up skipped: %s", exc)
            return None
        return self.warmer.submit_tasks(tasks, self.targets, fetcher)

    def process_event(self, event, data, job_id, additional_params):
        """Annotation events go to the corrections dispatcher (``backend.corrections.events``: agreement,
        memory); the others to the library's ``fit`` (a no-op)."""
        from backend.corrections.events import EVENTS

        if event in EVENTS:
            from backend.corrections.wiring import handle_annotation_event

            return handle_annotation_event(event, data, self)
        return super().process_event(event, data, job_id, additional_params)

    def fit(self, *args, **kwargs):
        """Training-free: nothing to learn, and returning None keeps ``model_version`` unchanged."""
        return None


def setup_project_key(project: dict) -> str:
    """The ``project`` string of ``/setup`` and ``/predict`` (``"<id>.<created_at as Unix seconds>"``,
    Label Studio 1.23.2) for a webhook's project object; ``"<id>"`` if ``created_at`` is unreadable."""
    key = str(project.get("id"))
    try:
        created = datetime.fromisoformat(str(project["created_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return key
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return f"{key}.{int(created.timestamp())}"


class CASSManager(LabelStudioMLManager):
    """See the module docstring."""

    MAX_PROJECTS = 256
    #: What /setup remembers per project: hostname, access token, parsed targets and the config's
    #: digest, never the config text; bounded in entries and in bytes (least recently used dropped).
    MAX_PROJECT_BYTES = 32 * 1024 * 1024
    _projects: ByteBoundedLRU = ByteBoundedLRU(
        MAX_PROJECT_BYTES, max_entries=MAX_PROJECTS,
        sizeof=lambda p: 512 + len(p.get("hostname", "")) + len(p.get("access_token", "")) +
        targets_size(p.get("targets", ())))

    @classmethod
    def _remember(cls, project, params: dict) -> None:
        cls._projects.put(str(project), params)

    @classmethod
    def _recall(cls, project) -> dict:
        return dict(cls._projects.get(str(project)) or {})

    @classmethod
    def _build(cls, label_config, **kwargs) -> CASSBackend:
        try:
            return cls.model_class(label_config=label_config, **kwargs, **cls.init_kwargs)
        except LabelConfigError as exc:
            raise AnswerException(400, f"LabelConfigError: {exc}", {}) from exc

    @classmethod
    def fetch(cls, project=None, label_config=None, force_reload=False, **kwargs):
        """``/setup``: validate the config, remember the project's Label Studio address."""
        params = {"hostname": kwargs.get("hostname") or "", "access_token": kwargs.get("access_token") or ""}
        model = cls._build(label_config, **params)
        cls._remember(project, {**params, "targets": model.targets,
                                "digest": config_digest(label_config) if isinstance(label_config, str) else None})
        version = versioned(model.model_version, project, label_config)  # + project memory digest
        cls._current_model = ModelWrapper(model=model, model_version=version)
        log.info("setup project %s: %d brush control(s), model_version %s", project,
                 len(model.targets), version)
        return cls._current_model

    @classmethod
    def predict(cls, tasks, project=None, label_config=None, force_reload=False, try_fetch=True, **kwargs):
        if not isinstance(tasks, list):
            raise AnswerException(400, f"'tasks' must be a list of tasks, got {type(tasks).__name__}", {})
        remembered = cls._recall(project)  # hostname, access_token, parsed targets of its /setup
        remembered.pop("digest", None)
        setup_targets = remembered.pop("targets", None)
        model = cls._build(label_config, targets=setup_targets, **remembered)
        try:
            with predicting(project, label_config):  # the project's memory, when on (backend.corrections.memory)
                predictions = model.predict(tasks, **kwargs)
                version = versioned(model.model_version, project, label_config)
        except (LabelConfigError, ContextError) as exc:
            raise AnswerException(400, f"{type(exc).__name__}: {exc}", {}) from exc
        if version != model.model_version:  # + the memory digest, on every prediction
            for p in predictions:
                if isinstance(p, dict) and isinstance(p.get("model_version"), str):
                    p["model_version"] += version[len(model.model_version):]
        return predictions, ModelWrapper(model=model, model_version=version)

    @classmethod
    def webhook(cls, event, data):
        model = cls._build(None)
        result = model.process_event(event, data, None, {})
        project = data.get("project") if isinstance(data, dict) else None
        project_id = project.get("id") if isinstance(project, dict) else None
        out = {"event": event, "model_version": model.model_version, "result": result}
        if event == "TASKS_CREATED":
            warmup = cls._warm(project, data.get("tasks"))
            if warmup is not None:
                out["warmup"] = warmup
            log.info("webhook %s for project %s: %s", event, project_id,
                     "no warm-up (off, or no usable label config)" if warmup is None else
                     "warm-up: {queued} image(s) queued, {rejected} rejected, {skipped} task(s) "
                     "skipped".format(**warmup))
        elif isinstance(result, dict):  # annotation events: what each listener did (backend.corrections)
            log.info("webhook %s for project %s: %s", event, project_id, result)
        else:
            log.info("webhook %s for project %s: nothing to train", event, project_id)
        return out

    @classmethod
    def _warm(cls, project, tasks) -> dict | None:
        """Queue ``TASKS_CREATED`` tasks for warm-up with the project's own label config and the
        Label Studio address/token of its ``/setup`` (as ``/predict`` would fetch them)."""
        if cls.init_kwargs.get("warmer") is None or not isinstance(project, dict):
            return None
        label_config = project.get("label_config")
        if not isinstance(label_config, str) or not label_config.strip():
            return None
        remembered = cls._recall(setup_project_key(project))
        remembered.pop("targets", None)
        remembered.pop("digest", None)
        try:
            model = cls._build(label_config, **remembered)
        except AnswerException as exc:  # a config CASS cannot use: nothing to warm
            log.info("warm-up of project %s skipped: %s", project.get("id"), exc)
            return None
        return model.warm(tasks)

    @classmethod
    def is_training(cls, project):
        model = cls._build(None)
        return {"is_training": False, "backend": "none", "model_version": model.model_version}

    @classmethod
    def _get_models_from_workdir(cls, project):
        """``/versions``: the one version this process serves."""
        return [cls._build(None).model_version]
