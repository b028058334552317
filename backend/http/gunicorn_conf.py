"""gunicorn settings of the Docker image: ``gunicorn -c python:backend.http.gunicorn_conf backend._wsgi:app``.

One worker (one copy of the model) of ``THREADS`` threads (gthread, with the header deadline of
:mod:`backend.http.gworker`), bound to ``0.0.0.0:$PORT`` (``GUNICORN_BIND`` wins), request line and
header sizes bounded, idle kept-alive connections closed after 5 s. docs/security.md, "Connections".
``PORT``, ``WORKERS``, ``THREADS`` and ``GUNICORN_BIND`` are :class:`backend.config.GunicornSettings`.
"""
from backend.config import GunicornSettings

_settings = GunicornSettings.from_env()
bind = _settings.bind or f"0.0.0.0:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "backend.http.gworker.DeadlineThreadWorker"
timeout = 300                 # the worker's heartbeat (a model call may take long on a CPU)
graceful_timeout = 30
keepalive = 5                 # idle kept-alive connections
limit_request_line = 8190     # bytes of the request line (Label Studio's are short)
limit_request_fields = 100    # header lines
limit_request_field_size = 8190
