"""The label-studio-ml 1.0.9 glue: a thin :class:`LabelStudioMLBase` and the manager that serves it.

label-studio-ml builds a model object for every ``/setup`` and ``/predict``; :class:`CASSBackend`
objects are therefore cheap (a cached label-config parse) and hand every request to the process's
one :class:`~backend.predict.pipeline.Pipeline` (built by :mod:`backend.bootstrap`), which the app
passes in as an init kwarg. Nothing else lives here: no prediction logic, no project state.

:class:`CASSManager` changes four things of the library's ``LabelStudioMLManager``:

* ``/setup`` and ``/predict`` report the pipeline's ``model_version`` (engine + label set + project
  memory, :mod:`backend.predict.version`) instead of the library's ``INITIAL`` / training-job ids;
* ``/predict`` uses the label config and the Label Studio address of *its own* request and project,
  not whichever project called ``/setup`` last (the library keeps one model for all projects);
* ``/webhook`` events run in-process instead of spawning a Python process per annotation that
  writes a job directory; ``TASKS_CREATED`` queues the new tasks' images for feature-cache warm-up
  without waiting for it; annotation events go to the corrections dispatcher;
* a bad label config or request answers HTTP 400 with the reason **in the HTTP reason phrase** (and
  the JSON ``detail`` / ``error``), logged as one WARNING line without a traceback: Label Studio
  1.23.2 never reads an error answer's body (``ml/api_connector.py`` ``_request``:
  ``raise_for_status()`` then ``str(HTTPError)`` = ``"400 Client Error: <reason phrase> for url:
  ..."``), and *Connect Model* shows that string (``ml/serializers.py`` ``_validate_setup``);
* a task that failed (image 401, not decodable, no data field) is answered as a stored, visible
  prediction: ``result: []``, ``score: 0`` and ``model_version: "error: <reason> (<version>)"``,
  made by the pipeline for every door (:mod:`backend.predict.errors`; docs/backend.md, "What Label
  Studio shows").
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from label_studio_ml.exceptions import AnswerException
from label_studio_ml.model import LabelStudioMLBase, LabelStudioMLManager, ModelWrapper

from backend.controls.config import Controls
from backend.controls.digest_cache import config_digest
from backend.controls.labels import LabelConfigError
from backend.controls.smart import ContextError
from backend.fetch.images import ImageFetchError
from backend.predict.errors import one_line
from backend.predict.pipeline import Pipeline, Refused, RequestContext
from backend.predict.projects import Connection, setup_project_key

log = logging.getLogger("backend.http.mlbackend")

MAX_REASON_CHARS = 1000  # of the HTTP reason phrase (the JSON body keeps the whole message)


def error_answer(status: int, message: str):
    """A JSON error answer whose HTTP reason phrase is ``message``: Label Studio shows only
    ``str(requests.HTTPError)``, i.e. ``"<status> Client Error: <reason phrase> for url: <url>"``."""
    resp = jsonify({"status": status, "detail": message, "error": message})
    resp.status = f"{status} {one_line(message, MAX_REASON_CHARS) or 'error'}"
    return resp


def setup_view():
    """``POST /setup`` (label-studio-ml's, with :func:`error_answer` for its errors)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return _refused("/setup", 400, "the /setup body must be a JSON object")
    try:
        model = CASSManager.fetch(data.get("project"), data.get("schema"), data.get("force_reload", False),
                                         hostname=data.get("hostname", ""),
                                         access_token=data.get("access_token", ""),
                                         model_version=data.get("model_version"))
    except AnswerException as exc:
        return _refused("/setup", exc.status, exc.msg)
    except Exception as exc:  # a bug: the traceback belongs in the log, the reason in the answer
        log.exception("POST /setup failed")
        return error_answer(500, f"{type(exc).__name__}: {exc}")
    return jsonify({"model_version": model.model_version})


def predict_view():
    """``POST /predict`` (label-studio-ml's, with :func:`error_answer` for its errors)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return _refused("/predict", 400, "the /predict body must be a JSON object")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        return _refused("/predict", 400, f"'params' must be an object, got {type(params).__name__}")
    try:
        predictions, model = CASSManager.predict(data.get("tasks"), data.get("project"),
                                                        data.get("label_config"), data.get("force_reload", False),
                                                        data.get("try_fetch", True), **params)
    except AnswerException as exc:
        return _refused("/predict", exc.status, exc.msg)
    except Exception as exc:  # a bug: the traceback belongs in the log, the reason in the answer
        log.exception("POST /predict failed")
        return error_answer(500, f"{type(exc).__name__}: {exc}")
    return jsonify({"results": predictions, "model_version": model.model_version})


def _refused(route: str, status: int, message) -> object:
    """A user error (config, request): one WARNING line, no traceback, the reason in the answer."""
    message = str(message)
    log.warning("POST %s refused (HTTP %d): %s", route, status, one_line(message))
    return error_answer(status, message)


def install_views(app: Flask) -> Flask:
    """Replace label-studio-ml's ``/setup`` and ``/predict`` views with :func:`setup_view` and
    :func:`predict_view` (before :func:`backend.http.edge.install` wraps ``/predict``). Once per app:
    label-studio-ml has one app per process, and a re-targeted app keeps the edge's wrapper around
    these views (the views look the manager up at request time)."""
    if app.extensions.get("cass_views"):
        return app
    app.extensions["cass_views"] = True
    app.view_functions["_setup"] = setup_view
    app.view_functions["_predict"] = predict_view
    return app


class CASSBackend(LabelStudioMLBase):
    """CASS pre-annotations for every ``BrushLabels`` / ``PolygonLabels`` control of a project."""

    def __init__(self, label_config=None, train_output=None, *, pipeline: Pipeline | None = None,
                 controls: Controls | None = None, **kwargs):
        if pipeline is None:
            raise TypeError("CASSBackend needs pipeline= (see backend.bootstrap and backend.http.app)")
        self.pipeline = pipeline
        self.label_config_text = label_config if isinstance(label_config, str) else None
        # parse first: a config CASS cannot use raises LabelConfigError, naming what is missing (or
        # the limit it is over); ``controls``: already parsed (remembered from the project's /setup)
        if label_config:
            self.controls = pipeline.parse(label_config)
        else:
            self.controls = controls if isinstance(controls, Controls) else Controls(())
        # the library's own parse_config is not needed (and not linear): the config is not passed on
        super().__init__(label_config=None, train_output=train_output, **kwargs)

    @property
    def model_version(self) -> str:
        return self.pipeline.predictor.model_version

    def request_context(self, project) -> RequestContext:
        """This request's context: controls, the project's fetcher (this request's Label Studio
        address and token win over what ``/setup`` remembered), memory and version."""
        connection = Connection(self.hostname or "", self.access_token or "")
        try:
            return self.pipeline.context(project, self.controls, label_config=self.label_config_text,
                                         connection=connection)
        except ImageFetchError as exc:  # a Label Studio address that the strict URL parse refuses
            raise AnswerException(400, str(exc), {}) from exc

    def predict(self, tasks, **kwargs):
        if not self.controls:
            raise LabelConfigError("no label config: /predict needs the project's label_config "
                                   "(or a /setup with its schema first)")
        ctx = self.request_context(kwargs.get("project"))
        context = kwargs.get("context")
        if isinstance(context, dict) and context.get("result"):  # a smart tool (docs/interactive.md)
            if len(tasks) != 1:
                raise ContextError(f"an interactive request (with 'context') holds one task, got {len(tasks)}")
            return [self.pipeline.refine(tasks[0], ctx, context)], ctx.version
        return self.pipeline.predict_tasks(tasks, ctx), ctx.version

    def fit(self, *args, **kwargs):
        """Training-free: nothing to learn, and returning None keeps ``model_version`` unchanged."""
        return None


class CASSManager(LabelStudioMLManager):
    """See the module docstring."""

    @classmethod
    def pipeline(cls) -> Pipeline:
        return cls.init_kwargs["pipeline"]

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
        cls.pipeline().projects.remember(project, Connection(
            params["hostname"], params["access_token"], model.controls,
            config_digest(label_config) if isinstance(label_config, str) else None),
            label_config if isinstance(label_config, str) else None)
        version = cls.pipeline().version(project, model.controls, model.label_config_text)
        wrapper = ModelWrapper(model=model, model_version=version)
        log.info("setup project %s: %d output control(s), model_version %s", project, len(model.controls), version)
        return wrapper

    @classmethod
    def predict(cls, tasks, project=None, label_config=None, force_reload=False, try_fetch=True, **kwargs):
        if not isinstance(tasks, list):
            raise AnswerException(400, f"'tasks' must be a list of tasks, got {type(tasks).__name__}", {})
        remembered = cls.pipeline().projects.recall(project)  # address, token, parsed controls of its /setup
        model = cls._build(label_config, controls=remembered.controls, hostname=remembered.hostname,
                           access_token=remembered.access_token)
        try:
            predictions, version = model.predict(tasks, project=project, **kwargs)
        except (LabelConfigError, ContextError) as exc:
            raise AnswerException(400, f"{type(exc).__name__}: {exc}", {}) from exc
        return predictions, ModelWrapper(model=model, model_version=version)

    @classmethod
    def webhook(cls, event, data):
        pipeline = cls.pipeline()
        project = data.get("project") if isinstance(data, dict) else None
        project_id = project.get("id") if isinstance(project, dict) else None
        out = {"event": event, "model_version": pipeline.predictor.model_version, "result": None}
        from backend.corrections.events import EVENTS

        if event in EVENTS:
            from backend.corrections.readback import ReadBack
            from backend.corrections.wiring import handle_annotation_event

            out["result"] = handle_annotation_event(event, data, pipeline.parse, ReadBack(pipeline.projects),
                                                    max_pixels=getattr(pipeline.settings, "max_image_pixels", None))
            log.info("webhook %s for project %s: %s", event, project_id, out["result"])
        elif event == "TASKS_CREATED":
            try:
                warmup = pipeline.warm_created(project, data.get("tasks"))
            except Refused as exc:
                out["refused"] = str(exc)
                log.info("webhook %s for project %s: no warm-up: %s", event, project_id, exc)
                return out
            if warmup is not None:
                out["warmup"] = warmup
            log.info("webhook %s for project %s: %s", event, project_id,
                     "no warm-up (off, or no usable label config)" if warmup is None else
                     "warm-up: {tasks} task(s) read back, {queued} image(s) queued, {rejected} rejected, "
                     "{skipped} task(s) skipped".format(**warmup))
        else:
            log.info("webhook %s for project %s: nothing to train", event, project_id)
        return out

    @classmethod
    def is_training(cls, project):
        return {"is_training": False, "backend": "none", "model_version": cls.pipeline().predictor.model_version}

    @classmethod
    def _get_models_from_workdir(cls, project):
        # label-studio-ml 1.0.9's /versions route calls this private hook of the manager and offers no
        # public one; overriding it is the only way to answer /versions with this engine's version
        """``/versions``: the engine version this process serves (each label set adds its digest)."""
        return [cls.pipeline().predictor.model_version]
