"""The one place that decides what of a URL or a log text may be shown (issue 21).

:func:`redact` is used for every display: log lines (``backend.ops.log_redaction``), the feature
cache's URL in ``/health`` (``cass.cache.redact_url``), image URLs in errors
(``backend.fetch.urls.show_url``). It removes, in any scheme (``redis://``, ``s3://``, ``https://``...):

* user info: ``scheme://user:password@host`` -> ``scheme://<redacted>@host`` (up to the *last* ``@``
  of the authority, so an unencoded ``@`` in a password does not leak its tail);
* query strings after a path or authority: ``...?X-Amz-Signature=...`` -> ``...?<redacted>``;
* ``name=value`` pairs whose name mentions a secret (password, token, key, secret, sig, signature,
  credential, auth, code...) anywhere in the text -> ``name=<redacted>``;
* ``Authorization`` header values and JWTs.

:func:`escape_controls` makes one line of any text: C0 and C1 control characters (CR, LF, ESC...),
DEL and the Unicode line/paragraph separators become ``\\r``, ``\\n``, ``\\x1b``, ``\\u2028``...
"""
from __future__ import annotations

import re

MARK = "<redacted>"

#: Parameter names that carry a secret: anything mentioning these words (``x-amz-signature``,
#: ``refresh_token``, ``client_secret``...), or exactly one of the short ones (``key``, ``sig``...:
#: ``cache_key=`` or ``status_code=`` stay readable).
_SECRET_NAME = (r"(?:[\w.-]*(?:passw(?:or)?d|secret|token|signature|credential|apikey|api_key|access_key)[\w.-]*"
                r"|key|sig|code|fileuri|pwd|auth|refresh|session)")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s?#\"'<>]*@")
_QUERY = re.compile(r"((?:\b[a-z][a-z0-9+.-]*://[^\s\"'<>?#]*|/[^\s\"'<>?#]*)\?)[^\s\"'<>]+", re.I)
_SENSITIVE = re.compile(rf"(?i)\b({_SECRET_NAME})=([^\s&;\"'<>]+)")
_AUTH = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:token|bearer|basic)?\s*[^\s'\",}]+")
_JWT = re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def redact(text: str) -> str:
    """``text`` (a URL or a log line) without user info, query strings, secret parameters,
    Authorization values or JWTs."""
    text = _USERINFO.sub(rf"\1{MARK}@", str(text))
    text = _QUERY.sub(rf"\1{MARK}", text)
    text = _SENSITIVE.sub(rf"\1={MARK}", text)
    text = _AUTH.sub(rf"\1{MARK}", text)
    return _JWT.sub(MARK, text)


def _escape(match: re.Match) -> str:
    char = match.group(0)
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character escaped (``keep_newlines``: ``\\n`` stays, for the lines
    of a traceback; the caller keeps them from starting a line of their own)."""
    if keep_newlines:
        return "\n".join(_CONTROLS.sub(_escape, part) for part in str(text).split("\n"))
    return _CONTROLS.sub(_escape, str(text))
