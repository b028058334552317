"""No credentials or presigned-URL signatures in any log line, at any level, from any logger.

:func:`install_redaction` wraps the process's log record factory, so every record that is going to be
handled (urllib3's DEBUG lines about presigned URLs included) is formatted once and :func:`redact`-ed
before any handler or formatter sees it: query strings after a path (``?X-Amz-Signature=...``) become
``?<redacted>``, ``key=value`` pairs of sensitive names anywhere lose their value, ``Authorization``
values and ``user:password@`` in URLs are removed. Tracebacks attached to a record are redacted too.
"""
from __future__ import annotations

import logging
import re
import traceback

_QUERY = re.compile(r"((?:https?://[^\s\"'<>?#]*|/[^\s\"'<>?#]*)\?)[^\s\"'<>]+")
_SENSITIVE = re.compile(r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
                        r"x-goog-credential|signature|sig|token|access_token|refresh|refresh_token|api_key|"
                        r"apikey|password|secret|key|code|fileuri)=([^\s&\"'<>]+)")
_AUTH = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:token|bearer|basic)?\s*[^\s'\",}]+")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")
_JWT = re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+")
MARK = "<redacted>"


def redact(text: str) -> str:
    """``text`` without query strings, secret parameters, Authorization values, user info or JWTs."""
    text = _USERINFO.sub(rf"\1{MARK}@", text)
    text = _QUERY.sub(rf"\1{MARK}", text)
    text = _SENSITIVE.sub(rf"\1={MARK}", text)
    text = _AUTH.sub(rf"\1{MARK}", text)
    return _JWT.sub(MARK, text)


_installed = False


def install_redaction() -> None:
    """Redact every log record of the process from now on (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler's error path
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
