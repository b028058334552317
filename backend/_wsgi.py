"""WSGI entry point for gunicorn: ``gunicorn --workers 1 --threads 4 backend._wsgi:app``.

Each worker process loads the engine once when it imports this module, after
:func:`backend.startup.server_checks` (no basic auth and no ``CASS_ALLOW_UNAUTHENTICATED=true``:
the import fails with the reason, and gunicorn stops with "Worker failed to boot").
"""
import logging

from backend.config import ConfigError, Settings
from backend.http.app import create_app
from backend.ops.logs import setup_logging
from backend.startup import server_checks

setup_logging()
settings = Settings.from_env()
try:
    server_checks(settings)
except ConfigError as exc:
    logging.getLogger("backend").error("configuration error: %s", exc)
    raise
app = create_app(settings)
