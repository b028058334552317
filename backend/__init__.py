"""Label Studio ML backend serving CASS brush-mask pre-annotations (label-studio-ml 1.0.9).

Run ``python -m backend --host 0.0.0.0 --port 9090`` or ``gunicorn backend._wsgi:app``; settings
come from the environment (:mod:`backend.config`).
"""
