"""Talking to a real Label Studio 1.23.2 the way its web UI does: session login, personal access token.

No pytest in here: ``scripts/docker_e2e.sh`` (via ``tests/e2e/compose_check.py``) and
``scripts/ui_check.py`` use it too.

* :func:`login` posts the login form (``/user/login/``) with the CSRF token, as the browser does, and
  returns the headers that authenticate later API calls with that session (``Cookie`` + ``X-CSRFToken``).
* :func:`create_personal_access_token` is the "Create" button of *Account & Settings -> Personal Access
  Token* (``POST /api/token/``). A personal access token (PAT) is a long-lived JWT refresh token; the
  backend exchanges it for short-lived access tokens (``/api/token/refresh/``).
"""
from __future__ import annotations

import re

import requests

from tests.waiting import wait_for  # noqa: F401  (the e2e tests import it from here)

# The settings docs/deployment.md tells users to give Label Studio when the backend (and the images)
# are on the same machine or a private network: without the first two Label Studio refuses the model
# URL / its webhook (403 "URL resolves to a reserved network address"); without the last two Label
# Studio does not serve local files (tasks that point at /data/local-files/ get no prediction).
DOCUMENTED_SETTINGS = ("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",
                       "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")

# Label Studio calls outside hosts at start (version check on PyPI, Sentry error reports); this machine
# reaches loopback only. These change nothing that Label Studio does towards the backend.
OFFLINE_SETTINGS = {"SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
                    "LATEST_VERSION_CHECK": "false"}


class LabelStudioError(RuntimeError):
    """Label Studio answered something other than what the UI expects."""


def documented_settings(files_root: str) -> dict[str, str]:
    """The values of :data:`DOCUMENTED_SETTINGS` for a same-machine deployment serving ``files_root``."""
    return {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": files_root}


def login(url: str, email: str, password: str, timeout_s: float = 60) -> dict[str, str]:
    """Log in like the browser (GET the form for the CSRF cookie, POST it); returns request headers
    (``Cookie`` with ``sessionid`` and ``csrftoken``, ``X-CSRFToken``, ``Referer``) for the API."""
    session = requests.Session()
    form = session.get(f"{url}/user/login/", timeout=timeout_s)
    if form.status_code != 200 or "csrftoken" not in session.cookies:
        raise LabelStudioError(f"GET {url}/user/login/ -> {form.status_code}, no CSRF cookie")
    csrf = session.cookies["csrftoken"]
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    resp = session.post(f"{url}/user/login/", timeout=timeout_s, allow_redirects=False,
                        data={"email": email, "password": password,
                              "csrfmiddlewaretoken": match.group(1) if match else csrf},
                        headers={"Referer": f"{url}/user/login/"})
    if resp.status_code != 302 or "sessionid" not in session.cookies:
        raise LabelStudioError(f"login of {email!r} at {url} failed: HTTP {resp.status_code} "
                               f"(wrong user or password?)")
    csrf = session.cookies["csrftoken"]  # rotated at login
    cookie = "; ".join(f"{k}={v}" for k, v in (("csrftoken", csrf), ("sessionid", session.cookies["sessionid"])))
    return {"Cookie": cookie, "X-CSRFToken": csrf, "Referer": f"{url}/"}


def create_personal_access_token(url: str, headers: dict[str, str], timeout_s: float = 60) -> str:
    """``POST /api/token/`` as the logged-in user (the UI's "Create" button); returns the PAT."""
    resp = requests.post(f"{url}/api/token/", headers=headers, timeout=timeout_s)
    if resp.status_code not in (200, 201) or "token" not in resp.json():
        raise LabelStudioError(f"POST {url}/api/token/ -> {resp.status_code}: {resp.text[:300]}")
    return resp.json()["token"]


def legacy_tokens_enabled(url: str, headers: dict[str, str], timeout_s: float = 60) -> bool:
    """The organisation's ``legacy_api_tokens_enabled`` (``GET /api/jwt/settings``)."""
    resp = requests.get(f"{url}/api/jwt/settings", headers=headers, timeout=timeout_s)
    if resp.status_code != 200:
        raise LabelStudioError(f"GET {url}/api/jwt/settings -> {resp.status_code}: {resp.text[:300]}")
    return bool(resp.json()["legacy_api_tokens_enabled"])


