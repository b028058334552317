"""No credentials, presigned-URL signatures or control characters in any log line, at any level,
from any logger.

:func:`install_redaction` wraps the process's log record factory, so every record that is going to be
handled (urllib3's DEBUG lines about presigned URLs included) is formatted once and cleaned before any
handler or formatter sees it:

* :func:`redact` (``cass.redaction``, the one redaction of the code base): query strings become
  ``?<redacted>``, ``key=value`` pairs of sensitive names lose their value, ``Authorization`` values,
  JWTs and ``user:password@`` in URLs of any scheme are removed;
* :func:`escape_controls`: CR, LF, ESC, the other C0/C1 controls and U+2028/2029 in the message
  become ``\\r``, ``\\n``, ``\\x1b``... so a task id, project or webhook action holding ``"\\r\\n"``
  cannot forge a line or drive the terminal. The attached traceback keeps its line breaks, but every
  line of it is indented, so no line of it can pass for a record of its own.
"""
from __future__ import annotations

import logging
import traceback

from cass.redaction import MARK, escape_controls, redact  # noqa: F401 (re-exported)

#: Prefix of every traceback line of a record (a record's own lines start with the format's ``[``).
TRACEBACK_INDENT = "  | "


def clean_traceback(text: str) -> str:
    """A formatted traceback: redacted, controls escaped, every line indented by :data:`TRACEBACK_INDENT`."""
    lines = escape_controls(redact(text.rstrip("\n")), keep_newlines=True).split("\n")
    return "\n".join(TRACEBACK_INDENT + line for line in lines)


_installed = False


def install_redaction() -> None:
    """Redact and escape every log record of the process from now on (idempotent)."""
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
        record.msg, record.args = escape_controls(redact(message)), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = clean_traceback("".join(traceback.format_exception(*record.exc_info)))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
