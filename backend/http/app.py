"""The WSGI app: label-studio-ml's Flask server with :class:`~backend.http.mlbackend.CASSBackend`.

The engine loads here, once per process and before the app is returned, so a server answers
``GET /health`` only once it can predict. ``/setup`` (Label Studio allows it about 3 s) never loads
anything.
"""
from __future__ import annotations

import logging
import os

from flask import Flask, Response, jsonify, request
from label_studio_ml import api
from label_studio_ml.model import LABEL_STUDIO_ML_BACKEND_V2_DEFAULT

from backend.ops import metrics as prometheus
from backend.config import Settings, warn_if_label_studio_unset
from backend.jobs.http import auto_preannotate, register as register_jobs
from backend.bootstrap import build
from backend.http.mlbackend import CASSBackend, CASSManager, install_views
from backend.http.edge import install as install_security
from backend.http.health import report as health_report
from backend.predict.predictor import Predictor

log = logging.getLogger("backend.http.app")


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> Flask:
    """label-studio-ml's app serving CASS; loads the engine unless ``predictor`` is given.

    label-studio-ml has one Flask app per process, so a second call re-targets that same app.
    """
    previous = (getattr(CASSManager, "init_kwargs", None) or {}).get("pipeline")
    if previous is not None and previous.warmer is not None:  # a re-targeted app (tests): stop the old warm-up
        previous.warmer.close(timeout=0)
    services = build(settings, predictor)  # the composition root: engine, registry, listeners, pipeline
    settings, predictor, warmer = services.settings, services.predictor, services.warmer
    warn_if_label_studio_unset(settings, log)  # uploads would answer 401: one line at start
    # label-studio-ml 1.0.9 has no public way to choose the manager class: its routes call the module
    # global ``api._manager`` at request time, so this process's manager is put there
    api._manager = CASSManager()
    app = api.init_app(model_class=CASSBackend, pipeline=services.pipeline)
    registry = prometheus.build_registry(predictor, warmer, settings.redis_url)  # jobs included (REDIS_URL)

    def health():
        return jsonify({"status": "UP", "model_dir": None,
                        "v2": os.getenv("LABEL_STUDIO_ML_BACKEND_V2", default=LABEL_STUDIO_ML_BACKEND_V2_DEFAULT),
                        **health_report(predictor, settings)})

    def metrics():
        if request.args.get("format") == "json":
            return jsonify({**predictor.stats(), "warmup": warmer.stats() if warmer is not None else None})
        return Response(prometheus.generate_latest(registry), mimetype=None,
                        content_type=prometheus.CONTENT_TYPE)

    def webhook():
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            return jsonify({"status": 400, "detail": "a webhook body is a JSON object with an 'action' "
                                                     "string (Label Studio's webhook payload)"}), 400
        event = data.pop("action")
        out = CASSManager.webhook(event, data)
        if event == "TASKS_CREATED":  # CASS_AUTO_PREANNOTATE=true: a job for the new tasks (docs/jobs.md)
            auto = auto_preannotate(app, data, known=CASSManager.pipeline().projects.known)
            if auto is not None:
                out["preannotate"] = auto
        return jsonify(out), 201

    # the library's versions of these know nothing of the engine / crash on a body without 'action'
    app.view_functions["health"] = health
    app.view_functions["metrics"] = metrics
    app.view_functions["webhook"] = webhook
    install_views(app)  # /setup and /predict errors: the reason where Label Studio shows it, one log line
    register_jobs(app, settings, predictor)  # POST/GET/DELETE /jobs (backend.jobs.http)
    # basic auth, body limits, JSON checks, /predict admission (busy -> 503), no debug (backend.http.edge)
    return install_security(app, settings, predictor)
