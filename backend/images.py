"""Getting a task's image bytes: every download of the backend goes through this module.

What a task's image value can be, and where its bytes come from:

==================================  =================================================================
``/data/upload/3/x.png``            Label Studio upload: ``LABEL_STUDIO_URL`` + path, with LS auth
``/data/local-files/?d=dir/x.png``  Label Studio local-files serving: same
``/tasks/7/resolve/?fileuri=...``   any other Label Studio-relative path: same
``http(s)://<LS host>/...``         an absolute URL on Label Studio's own origin: with LS auth
``s3://``, ``gs://``, ``azure-blob://``  cloud storage: Label Studio's presign endpoint
                                    (``/tasks/<id>/presign/?fileuri=<base64>``, LS auth), which
                                    redirects to a presigned URL (fetched *without* LS auth) or
                                    proxies the bytes
``http(s)://elsewhere/...``         plain download, no credentials
``data:image/...;base64,...``       inline bytes
==================================  =================================================================

The Label Studio credentials are attached only to URLs on Label Studio's origin (scheme, host and
port), re-checked at every redirect hop, so they never reach another host. :class:`FetchPolicy` is
the one place that decides which URLs may be fetched at all (:meth:`FetchPolicy.check_url`, called
for the first URL and every redirect) and bounds time and size; allowed-host lists, refusal of private
addresses or basic auth for other hosts belong there.

Decoding (EXIF orientation, grayscale/RGBA/16-bit) is not done here: the bytes go to the engine.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import requests

log = logging.getLogger("backend.images")

MiB = 1 << 20
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "azure-spi"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class ImageFetchError(Exception):
    """An image that could not be fetched; the message is safe to log (no credentials, no query)."""


def _size(n: float) -> str:
    return f"{n / MiB:.4g} MiB" if n >= MiB else f"{int(n)} bytes"


def show_url(url: str) -> str:
    """``url`` for logs and errors: query strings (presigned signatures) and user info removed."""
    if url.startswith("data:"):
        return f"{url[:url.find(',') + 1 if ',' in url[:64] else 32]}... ({len(url)} characters)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return repr(url[:80])
    if not parts.scheme:
        return parts.path + ("?..." if parts.query else "")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class FetchPolicy:
    """Which URLs may be downloaded, and within which bounds.

    ``timeout_s`` bounds one image's whole download (all redirect hops, connect and read);
    ``max_bytes`` its size (checked against Content-Length first, then while streaming).
    """

    timeout_s: float = 30.0
    max_bytes: int = 64 * MiB
    max_redirects: int = 5
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https"}))

    def check_url(self, url: str) -> None:
        """Raise :class:`ImageFetchError` unless ``url`` may be fetched (first URL and each redirect)."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in self.schemes:
            raise ImageFetchError(f"refusing to fetch {show_url(url)}: scheme {parts.scheme!r} is not "
                                  f"one of {sorted(self.schemes)}")
        if not parts.hostname:
            raise ImageFetchError(f"refusing to fetch {show_url(url)}: no host name")


def _looks_like_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("eyJ")


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(data["exp"])
    except Exception:
        return None


class LabelStudioAuth:
    """The ``Authorization`` header for one Label Studio and API key.

    A legacy token (``Token <key>``) is used as is. A personal access token (a JWT refresh token) is
    exchanged at ``/api/token/refresh/`` for a short-lived access token (``Bearer <access>``); the
    access token is shared by every request of the process until shortly before it expires, or until
    Label Studio answers 401.
    """

    _access: dict[tuple[str, str], tuple[str, float]] = {}
    _lock = threading.Lock()

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.is_personal_token = bool(api_key) and _looks_like_jwt(api_key)
        self._key = (self.base_url, hashlib.sha256((api_key or "").encode()).hexdigest())

    def owns(self, url: str) -> bool:
        """True when ``url`` is on this Label Studio's origin (the only place credentials go)."""
        return origin(url) == origin(self.base_url)

    def headers(self, session: requests.Session) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.is_personal_token:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            cached = self._access.get(self._key)
        if cached is None or cached[1] <= time.time():
            cached = self._exchange(session)
            with self._lock:
                self._access[self._key] = cached
        return {"Authorization": f"Bearer {cached[0]}"}

    def invalidate(self) -> None:
        with self._lock:
            self._access.pop(self._key, None)

    def _exchange(self, session: requests.Session) -> tuple[str, float]:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            resp = session.post(url, json={"refresh": self.api_key}, timeout=self.timeout_s,
                                allow_redirects=False)
        except requests.RequestException as exc:
            raise ImageFetchError(f"could not reach Label Studio at {show_url(url)} to exchange the "
                                  f"personal access token: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise ImageFetchError(f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                                  f"(POST {show_url(url)} -> HTTP {resp.status_code}); create a new one "
                                  f"under Account & Settings")
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise ImageFetchError(f"unexpected answer from {show_url(url)}: no 'access' token") from None
        expiry = _jwt_expiry(access) or time.time() + 300
        return access, expiry - 30


class ImageFetcher:
    """Bytes of a task's image reference, following :class:`FetchPolicy`.

    ``label_studio``: auth for the Label Studio instance that relative ``/data/...`` URLs and cloud
    storage URIs are resolved against (None: such references fail with a clear error).
    """

    def __init__(self, policy: FetchPolicy, label_studio: LabelStudioAuth | None = None,
                 session: requests.Session | None = None):
        self.policy = policy
        self.label_studio = label_studio
        self.session = session or requests.Session()

    # -- resolution ----------------------------------------------------------------------------
    def resolve(self, ref: str, task_id=None) -> str:
        """The absolute http(s) URL to fetch for ``ref`` (``data:`` references are returned as is)."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageFetchError(f"empty image reference {ref!r}")
        ref = ref.strip()
        if ref.startswith("data:"):
            return ref
        parts = urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageFetchError(f"{show_url(ref)} is a cloud storage URI and needs the task id to be "
                                      f"presigned by Label Studio")
            fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
            return f"{self._label_studio_base(ref)}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"
        if not scheme and ref.startswith("/"):
            return self._label_studio_base(ref) + ref
        if scheme in ("http", "https"):
            return ref
        raise ImageFetchError(f"unsupported image reference {show_url(ref)}: expected an http(s) URL, a "
                              f"Label Studio path (/data/upload/..., /data/local-files/?d=...), a cloud "
                              f"storage URI ({', '.join(sorted(CLOUD_SCHEMES))}) or a data: URI")

    def _label_studio_base(self, ref: str) -> str:
        if self.label_studio is None:
            raise ImageFetchError(f"{show_url(ref)} is served by Label Studio, but its address is unknown: "
                                  f"set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend")
        return self.label_studio.base_url

    # -- download ------------------------------------------------------------------------------
    def fetch(self, ref: str, task_id=None) -> bytes:
        url = self.resolve(ref, task_id)
        if url.startswith("data:"):
            return self._data_uri(url)
        deadline = time.monotonic() + self.policy.timeout_s
        retried_auth = False
        hops = 0
        while True:
            self.policy.check_url(url)
            ls = self.label_studio if self.label_studio is not None and self.label_studio.owns(url) else None
            headers = ls.headers(self.session) if ls is not None else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageFetchError(f"timed out after {self.policy.timeout_s:g}s fetching {show_url(url)}")
            try:
                resp = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                        timeout=(min(remaining, 10.0), remaining))
            except requests.RequestException as exc:
                raise ImageFetchError(f"could not fetch {show_url(url)}: {_describe(exc)}") from None
            with resp:
                if resp.status_code in REDIRECT_CODES and resp.headers.get("Location"):
                    hops += 1
                    if hops > self.policy.max_redirects:
                        raise ImageFetchError(f"too many redirects (> {self.policy.max_redirects}) fetching "
                                              f"{show_url(ref)}")
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status_code == 401 and ls is not None and ls.is_personal_token and not retried_auth:
                    ls.invalidate()  # the access token expired early: exchange once more
                    retried_auth = True
                    continue
                if resp.status_code != 200:
                    raise ImageFetchError(self._status_message(url, resp.status_code, ls, headers))
                ctype = resp.headers.get("Content-Type", "")
                if ctype.lower().startswith(("text/html", "application/json")):
                    raise ImageFetchError(f"{show_url(url)} returned {ctype.split(';')[0]} instead of an "
                                          f"image" + (" (not logged in?)" if ls is not None else ""))
                return self._read_limited(resp, url, deadline)

    def _status_message(self, url: str, status: int, ls: LabelStudioAuth | None, headers: dict) -> str:
        msg = f"{show_url(url)} answered HTTP {status}"
        if ls is not None and status in (401, 403):
            if not headers:
                msg += ("; Label Studio needs credentials: set LABEL_STUDIO_API_KEY (a personal access "
                        "token, or a legacy token)")
            elif not ls.is_personal_token:
                msg += ("; Label Studio refused the legacy token in LABEL_STUDIO_API_KEY (legacy tokens may "
                        "be disabled for the organization: use a personal access token)")
            else:
                msg += "; Label Studio refused the personal access token in LABEL_STUDIO_API_KEY"
        elif ls is not None and status == 404 and "/presign/" in urlsplit(url).path:
            msg += "; Label Studio found no cloud storage of the project for this URI"
        return msg

    def _read_limited(self, resp: requests.Response, url: str, deadline: float) -> bytes:
        limit = self.policy.max_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ImageFetchError(f"{show_url(url)} is {_size(int(declared))}, over the limit of "
                                  f"{_size(limit)} (CASS_MAX_IMAGE_MB)")
        chunks, total = [], 0
        try:
            for chunk in resp.iter_content(chunk_size=256 * 1024):
                total += len(chunk)
                if total > limit:
                    raise ImageFetchError(f"{show_url(url)} is over the limit of {_size(limit)} "
                                          f"(CASS_MAX_IMAGE_MB)")
                if time.monotonic() > deadline:
                    raise ImageFetchError(f"timed out after {self.policy.timeout_s:g}s downloading "
                                          f"{show_url(url)}")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise ImageFetchError(f"download of {show_url(url)} failed: {_describe(exc)}") from None
        data = b"".join(chunks)
        if not data:
            raise ImageFetchError(f"{show_url(url)} returned an empty body")
        return data

    def _data_uri(self, url: str) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep:
            raise ImageFetchError(f"malformed data URI {show_url(url)}: no ','")
        if len(payload) * 3 // 4 > self.policy.max_bytes:
            raise ImageFetchError(f"data URI of about {_size(len(payload) * 3 // 4)} is over the limit "
                                  f"of {_size(self.policy.max_bytes)} (CASS_MAX_IMAGE_MB)")
        try:
            if head.endswith(";base64"):
                data = base64.b64decode(payload, validate=False)
            else:
                data = unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise ImageFetchError(f"malformed data URI {show_url(url)}: {exc}") from None
        if not data:
            raise ImageFetchError(f"data URI {show_url(url)} holds no bytes")
        return data


def _describe(exc: Exception) -> str:
    """A short reason without the URL (requests' messages repeat it, query string included)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__
