"""Logging setup shared by ``python -m backend`` and the gunicorn entry point."""
from __future__ import annotations

import logging
import os

from backend.ops.log_redaction import install_redaction, redact  # noqa: F401 (re-exported)


def setup_logging(level: str | None = None) -> None:
    """Log to stderr at ``level`` (default: ``$LOG_LEVEL`` or INFO), every line redacted
    (:mod:`backend.ops.log_redaction`: no credentials or presigned signatures, DEBUG included)."""
    install_redaction()
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s")
    logging.getLogger().setLevel(level)
    # label-studio-ml logs every request and response body at DEBUG: keep it quieter than ours
    logging.getLogger("label_studio_ml").setLevel(max(logging.getLogger().level, logging.INFO))
