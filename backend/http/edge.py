"""The HTTP edge of the backend: who may call it, how much they may send, what a bad request gets.

:func:`install` adds to label-studio-ml's Flask app (once per app; re-installing swaps the settings):

* **basic auth** (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``) on every endpoint but ``GET /health``,
  compared in constant time (SHA-256 digests through :func:`hmac.compare_digest`); 401 with
  ``WWW-Authenticate`` otherwise. Label Studio sends it when the model connection has basic auth set;
* **request body limits** per endpoint (:mod:`backend.http.limits`: ``CASS_MAX_SETUP_MB``,
  ``CASS_MAX_WEBHOOK_MB``, else ``CASS_MAX_REQUEST_MB``): 413 before anything is read or parsed; tasks
  (``CASS_MAX_TASKS_PER_REQUEST``) and smart regions (``CASS_MAX_SMART_HINTS``) per ``/predict``: 400;
* **JSON bodies**: ``/predict``, ``/setup``, ``/versions``, ``/train`` need a JSON object, ``/predict``
  one with ``tasks``; otherwise 400 naming what is wrong (label-studio-ml would answer 500 with a
  traceback);
* **admission** of ``/predict`` to the inference slots (:mod:`backend.predict.slots`): 503 with a JSON
  ``{"error": "busy: ..."}``, ``Retry-After`` and a reservation ticket (``X-CASS-Ticket`` header and
  ``cass_ticket`` cookie; a retry presenting either goes first when its turn comes) when full;
* **no internals in answers**: label-studio-ml puts Python tracebacks in error bodies; they are
  removed (they stay in the log). Flask debug mode is forced off, and label-studio-ml's DEBUG logs
  of every request's headers and body (``Authorization``, the ``/setup`` token) are never emitted.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os

from flask import Flask, jsonify, request

from backend.fetch.download import _size
from backend.http.limits import body_limit, too_many_hints, too_many_tasks
from backend.ops.allocator import trim
from backend.predict.tickets import TICKET_RE, Busy

log = logging.getLogger("backend.http.edge")

JSON_ENDPOINTS = ("/predict", "/setup", "/versions", "/train", "/webhook")
MAX_JSON_DEPTH = 64  # Label Studio's bodies nest about 8 deep
#: keyword names of label-studio-ml's manager.predict(): a ``params`` key with one of them is a TypeError
PREDICT_ARGUMENTS = ("tasks", "project", "label_config", "force_reload", "try_fetch")
OPEN_PATHS = ("/health",)
REALM = "CASS ML backend"
TICKET_HEADER = "X-CASS-Ticket"
TICKET_COOKIE = "cass_ticket"


def install(app: Flask, settings, predictor) -> Flask:
    """Add the checks above to ``app`` (idempotent: hooks are registered once per app)."""
    state = app.extensions.setdefault("cass_security", {})
    state.update(settings=settings, predictor=predictor)
    if os.environ.get("FLASK_DEBUG", "").strip().lower() in ("1", "true", "yes", "on") or \
            os.environ.get("FLASK_ENV", "").strip().lower() == "development":
        log.warning("FLASK_DEBUG/FLASK_ENV ask for debug mode: ignored, the backend never runs in debug mode")
    app.debug = False
    app.config["DEBUG"] = False
    # label-studio-ml logs each request's headers and body at DEBUG: never, whatever LOG_LEVEL says
    logging.getLogger("label_studio_ml").setLevel(max(logging.INFO, logging.getLogger("label_studio_ml").level))
    if state.get("installed"):
        return app
    state["installed"] = True
    app.before_request_funcs.setdefault(None, [])[0:0] = [_check_auth, _check_body]
    app.after_request(_strip_internals)
    original = app.view_functions["_predict"]

    def predict_with_admission():
        predictor = state["predictor"]
        ticket, problem = _ticket()
        if problem:
            return _answer(400, problem)
        try:
            with predictor.slots.admit(_admission_key(), ticket=ticket, tasks=_task_count(),
                                       client=request.remote_addr):
                resp = app.make_response(original())
        except Busy as exc:
            log.warning("POST /predict refused: %s (Retry-After %ds)", exc, exc.retry_after_s)
            # the client is told to wait: its connection is closed rather than kept alive across the wait
            # (a kept-alive one would meet the server's keep-alive timeout just as it is reused)
            headers = {"Retry-After": str(exc.retry_after_s), "Connection": "close"}
            if exc.ticket:
                headers[TICKET_HEADER] = exc.ticket
            resp = _answer(503, str(exc), headers)
            if exc.ticket:
                resp.set_cookie(TICKET_COOKIE, exc.ticket, max_age=MAX_TICKET_AGE_S, httponly=True,
                                samesite="Strict", path="/predict")
            return resp
        finally:
            trim()  # give the freed working set of this request back to the system (backend.ops.allocator)
        if request.cookies.get(TICKET_COOKIE):
            resp.delete_cookie(TICKET_COOKIE, path="/predict")  # used (or stale): not sent again
        return resp

    app.view_functions["_predict"] = predict_with_admission
    return app


MAX_TICKET_AGE_S = 300  # the cookie's lifetime; the reservation itself expires much sooner


def _ticket() -> tuple[str | None, str | None]:
    """The reservation ticket this ``/predict`` presents (header first, then cookie), or a reason it is
    malformed. An unknown or expired but well-formed ticket counts as none (backend.predict.slots)."""
    for where, value in (("header " + TICKET_HEADER, request.headers.get(TICKET_HEADER)),
                         ("cookie " + TICKET_COOKIE, request.cookies.get(TICKET_COOKIE))):
        if value is None or value == "":
            continue
        if not TICKET_RE.fullmatch(value):
            return None, (f"malformed {where}: a reservation ticket is 8-64 characters of A-Z, a-z, 0-9, "
                          f"'_' and '-', as the backend's 503 answer handed it out (send none to queue afresh)")
        return value, None
    return None, None


def _admission_key() -> str:
    """Fair-admission key of a ``/predict``: its Label Studio project, else the client address."""
    data = request.get_json(silent=True)
    project = data.get("project") if isinstance(data, dict) else None
    if isinstance(project, (str, int)) and str(project):
        return f"project:{str(project)[:200]}"
    return f"client:{request.remote_addr}"


def _task_count() -> int:
    """Tasks of a ``/predict`` (its share of the queued work; ``_check_body`` checked the list)."""
    data = request.get_json(silent=True)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return max(1, len(tasks)) if isinstance(tasks, list) else 1


def _settings():
    from flask import current_app

    return current_app.extensions["cass_security"]["settings"]


def _answer(status: int, message: str, headers: dict | None = None):
    resp = jsonify({"status": status, "error": message, "detail": message})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _digest(text: str | None) -> bytes:
    return hashlib.sha256((text or "").encode("utf-8", "surrogatepass")).digest()


def credentials_match(auth, user: str, password: str) -> bool:
    """Constant-time check of a werkzeug ``Authorization`` (or None) against ``user``/``password``."""
    given_user = auth.username if auth is not None and auth.type == "basic" else None
    given_pass = auth.password if auth is not None and auth.type == "basic" else None
    user_ok = hmac.compare_digest(_digest(given_user), _digest(user))
    pass_ok = hmac.compare_digest(_digest(given_pass), _digest(password))
    return auth is not None and user_ok & pass_ok


def _check_auth():
    settings = _settings()
    if not settings.basic_auth_user or request.path in OPEN_PATHS:
        return None
    if credentials_match(request.authorization, settings.basic_auth_user, settings.basic_auth_pass):
        return None
    log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote_addr,
                "wrong basic auth credentials" if request.authorization is not None else "no basic auth credentials")
    return _answer(401, "authentication required: this backend needs HTTP basic auth (set the user and password "
                        "of BASIC_AUTH_USER / BASIC_AUTH_PASS in Label Studio's model connection)",
                   {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})


def _check_body():
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    limit, setting = body_limit(request.path, _settings())
    length = request.content_length
    if length is not None and length > limit:
        return _too_large(length, limit, setting)
    environ = request.environ
    if length is None and (environ.get("wsgi.input_terminated")
                           or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()):
        data = environ["wsgi.input"].read(limit + 1)  # a body without Content-Length: read it bounded
        if len(data) > limit:
            return _too_large(None, limit, setting)
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ["wsgi.input_terminated"] = True  # the buffer ends where the body ends
    if request.path not in JSON_ENDPOINTS:
        return None
    where = f"{request.method} {request.path}"
    if not request.is_json:
        if request.path == "/webhook":
            return _bad_request(f"{where} needs Label Studio's webhook payload: a JSON object with an 'action' "
                                f"string, with Content-Type: application/json")
        return _bad_request(f"{where} needs a JSON body with Content-Type: application/json (got "
                            f"{request.mimetype or 'no Content-Type'!s})")
    raw = request.get_data(cache=True)
    if not raw.strip():
        return _bad_request(f"{where} has an empty body: it needs a JSON object")
    too_deep = False
    try:
        data = json.loads(raw)
    except RecursionError:
        data = too_deep = True
    except ValueError as exc:
        return _bad_request(f"the body of {where} is not valid JSON: {str(exc)[:200]}")
    if too_deep or _too_deep(data):
        return _bad_request(f"the body of {where} is nested too deeply (more than {MAX_JSON_DEPTH} levels of "
                            f"arrays/objects)")
    if not isinstance(data, dict):
        what = " with an 'action' string (Label Studio's webhook payload)" if request.path == "/webhook" else ""
        return _bad_request(f"the body of {where} must be a JSON object{what}, got {type(data).__name__}")
    if request.path == "/train":
        return _bad_request("POST /train: CASS is training-free, and Label Studio (since 1.4.1) sends training "
                            "events to /webhook; there is nothing to train")
    if request.path == "/predict":
        if "tasks" not in data:
            return _bad_request(f"the body of {where} has no 'tasks' (the list of Label Studio tasks to predict)")
        over = too_many_tasks(data, _settings()) or too_many_hints(data, _settings())
        if over:
            return _bad_request(over)
        params = data.get("params")
        if params is not None and not isinstance(params, dict):
            return _bad_request(f"'params' must be a JSON object, got {type(params).__name__}")
        clash = [key for key in PREDICT_ARGUMENTS if key in (params or {})]
        if clash:
            return _bad_request(f"'params' may not contain {clash[0]!r} (it is a top-level field of {where})")
    return None


def _too_deep(data, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when parsed JSON nests arrays/objects more than ``limit`` levels (iterative, stops early)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def _bad_request(message: str):
    log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote_addr, message)
    return _answer(400, message)


def _too_large(length: int | None, limit: int, setting: str = "CASS_MAX_REQUEST_MB"):
    size = _size(length) if length is not None else f"more than {_size(limit)}"
    hint = ": retrieve predictions for fewer tasks at a time" if request.path == "/predict" else ""
    message = f"the request body ({size}) is over the limit of {_size(limit)} for {request.path} ({setting}){hint}"
    log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote_addr, message)
    return _answer(413, message)


def _strip_internals(response):
    """Error answers keep their message but lose label-studio-ml's Python traceback."""
    if response.status_code >= 400 and response.is_json:
        data = response.get_json(silent=True)
        result = data.get("result") if isinstance(data, dict) else None
        if isinstance(result, dict) and "traceback" in result:
            result.pop("traceback")
            response.set_data(json.dumps(data))
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
