"""WSGI entry point for gunicorn: ``gunicorn --workers 1 --threads 4 backend._wsgi:app``.

Each worker process loads the engine once when it imports this module.
"""
from backend.http.app import create_app
from backend.ops.logs import setup_logging

setup_logging()
app = create_app()
