"""Bytes of a task's image reference: resolution against Label Studio, then one bounded download.

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
``file:///...``                     below ``CASS_LOCAL_FILES_ROOT`` only
==================================  =================================================================

Every http(s) URL (the first and each redirect) is parsed once, strictly (:mod:`backend.fetch.urls`); the
policy (:class:`backend.fetch.policy.FetchPolicy`) approves that parse, and the connection is opened to
that parse's host and port (:mod:`backend.fetch.transport`); the Label Studio credentials go only on a
connection to Label Studio's origin. One deadline (``CASS_FETCH_TIMEOUT_S``) bounds connect, headers
and body of all hops together.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from urllib3.exceptions import HTTPError as Urllib3Error

from backend.fetch.health import DOWNLOADS
from backend.fetch.ls_auth import PAT_HELP, LabelStudioAuth
from backend.fetch.policy import FetchPolicy, ImageFetchError, MiB
from backend.fetch.transport import Deadline, Transport
from backend.fetch.urls import HttpURL, show_url

log = logging.getLogger("backend.fetch.images")

CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "azure-spi"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK = 256 * 1024


def _size(n: float) -> str:
    return f"{n / MiB:.4g} MiB" if n >= MiB else f"{int(n)} bytes"


class ImageFetcher:
    """Bytes of a task's image reference, following :class:`FetchPolicy`.

    ``label_studio``: auth for the Label Studio instance that relative ``/data/...`` URLs and cloud
    storage URIs are resolved against (None: such references fail with a clear error).
    """

    def __init__(self, policy: FetchPolicy, label_studio: LabelStudioAuth | None = None):
        self.policy = policy
        self.label_studio = label_studio

    # -- resolution ----------------------------------------------------------------------------
    def resolve(self, ref: str, task_id=None) -> str:
        """The absolute URL to fetch for ``ref`` (``data:`` and ``file:`` references as they are)."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageFetchError(f"empty image reference {ref!r}")
        ref = ref.strip()
        if ref.startswith("data:"):
            return ref
        if ref.startswith("/") and not ref.startswith("//"):
            return self._label_studio_base(ref) + ref
        scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageFetchError(f"{show_url(ref)} is a cloud storage URI and needs the task id to be "
                                      f"presigned by Label Studio")
            try:
                task = int(task_id)
            except (TypeError, ValueError):
                raise ImageFetchError(f"task id {task_id!r} is not a number") from None
            fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
            return f"{self._label_studio_base(ref)}/tasks/{task}/presign/?fileuri={fileuri}"
        if scheme in ("http", "https"):
            return ref
        if scheme == "file":
            if not self.policy.local_files_root:
                raise ImageFetchError(f"refusing to read {show_url(ref)}: file:// URLs are off (set "
                                      f"CASS_LOCAL_FILES_ROOT to a directory to allow files below it)")
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
        """The bytes of ``ref`` (:class:`ImageFetchError`; :class:`~cass.images.ImageError` when the
        image declares more pixels than the policy allows)."""
        url = self.resolve(ref, task_id)
        if url.startswith("data:"):
            data = self._data_uri(url)
        elif url.lower().startswith("file:"):
            data = self._local_file(url)
        else:
            data = self._download(url)
        self.policy.check_pixels(data)
        return data

    def _download(self, url: str) -> bytes:
        deadline = Deadline(self.policy.timeout_s)
        target = self.policy.parse(url)
        state = {"target": target, "public": False}

        def on_connect(host: str, port: int, peer: str | None) -> None:
            if state["public"]:
                self.policy.check_peer(state["target"].shown(), peer)

        with Transport(deadline, on_connect) as transport:
            try:
                return self._hops(transport, state)
            except ImageFetchError:
                if deadline.expired:
                    raise self._timed_out(deadline, state["target"]) from None
                raise

    def _timed_out(self, deadline: Deadline, target: HttpURL) -> ImageFetchError:
        return ImageFetchError(f"timed out after {deadline.elapsed():.1f}s fetching {target.shown()} (the "
                               f"whole download, redirects included, is bounded by CASS_FETCH_TIMEOUT_S="
                               f"{self.policy.timeout_s:g}s)")

    def _hops(self, transport: Transport, state: dict) -> bytes:
        deadline, ls = transport.deadline, self.label_studio
        retried_auth, hops = False, 0
        while True:
            target: HttpURL = state["target"]
            state["public"] = self.policy.approve(target)
            owned = ls is not None and ls.owns(target)
            headers = ls.headers() if owned else {}
            if deadline.remaining() <= 0:
                raise self._timed_out(deadline, target)
            try:
                resp = transport.request("GET", target, credentials=(ls.origin, headers) if owned else None)
            except (Urllib3Error, OSError) as exc:
                if deadline.expired:
                    raise self._timed_out(deadline, target) from None
                message = f"could not fetch {target.shown()}: {_describe(exc)}"
                if owned:
                    DOWNLOADS.record(ls.base_url, message)
                raise ImageFetchError(message) from None
            if owned:
                DOWNLOADS.record(ls.base_url, None)
            try:
                status, location = resp.status, resp.headers.get("Location")
                if status in REDIRECT_CODES and location:
                    hops += 1
                    if hops > self.policy.max_redirects:
                        raise ImageFetchError(f"too many redirects (> {self.policy.max_redirects}) fetching "
                                              f"{target.shown()}")
                    state["target"] = self.policy.parse(urljoin(target.url, location))
                    log.debug("redirect %d: %s -> %s", hops, target.shown(), state["target"].shown())
                    continue
                if status == 401 and owned and ls.is_personal_token and not retried_auth:
                    ls.invalidate()  # the access token was revoked early: exchange once more
                    retried_auth = True
                    continue
                if status != 200:
                    raise ImageFetchError(self._status_message(target, status, ls if owned else None, headers))
                ctype = resp.headers.get("Content-Type", "")
                if ctype.lower().startswith(("text/html", "application/json")):
                    raise ImageFetchError(f"{target.shown()} returned {ctype.split(';')[0]} instead of an "
                                          f"image" + (" (not logged in?)" if owned else ""))
                return self._read_limited(resp, target, deadline)
            finally:
                resp.close()  # a redirect's or error's unread body is not left on the connection
                resp.release_conn()

    def _status_message(self, target: HttpURL, status: int, ls: LabelStudioAuth | None, headers: dict) -> str:
        msg = f"{target.shown()} answered HTTP {status}"
        if ls is not None and status in (401, 403):
            if not headers:
                msg += (f"; Label Studio needs credentials and the backend has none: {PAT_HELP} (or call "
                        f"/setup from Label Studio so that it sends its token)")
            else:
                msg += f"; Label Studio refused {ls.describe_token()}"
                if not ls.is_personal_token:
                    msg += (" (legacy tokens may be disabled for the organization, the default on Label "
                            "Studio 1.23.2: use a personal access token)")
                msg += f"; {PAT_HELP}"
        elif ls is not None and status == 404 and "/presign/" in target.target:
            msg += "; Label Studio found no cloud storage of the project for this URI"
        return msg

    def _read_limited(self, resp, target: HttpURL, deadline: Deadline) -> bytes:
        limit = self.policy.max_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ImageFetchError(f"{target.shown()} is {_size(int(declared))}, over the limit of "
                                  f"{_size(limit)} (CASS_MAX_IMAGE_MB)")
        chunks, total = [], 0
        try:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ImageFetchError(f"{target.shown()} is over the limit of {_size(limit)} "
                                          f"(CASS_MAX_IMAGE_MB)")
                chunks.append(chunk)
        except (Urllib3Error, OSError) as exc:
            if deadline.expired:
                raise self._timed_out(deadline, target) from None
            raise ImageFetchError(f"download of {target.shown()} failed: {_describe(exc)}") from None
        if deadline.expired:  # a body that ends at close reads as complete when the deadline cut it
            raise self._timed_out(deadline, target)
        data = b"".join(chunks)
        if not data:
            raise ImageFetchError(f"{target.shown()} returned an empty body")
        return data

    def _local_file(self, url: str) -> bytes:
        """A ``file://`` URL below ``policy.local_files_root`` (symbolic links resolved first)."""
        root = self.policy.local_files_root
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageFetchError(f"refusing to read {show_url(url)}: a file:// URL names no host")
        name = unquote(parts.path)
        if "\x00" in name:
            raise ImageFetchError(f"refusing to read {show_url(url)}: the path contains a NUL byte (%00)")
        base = os.path.realpath(root)
        path = os.path.realpath(name)
        if os.path.commonpath([base, path]) != base:
            raise ImageFetchError(f"refusing to read {show_url(url)}: it is outside CASS_LOCAL_FILES_ROOT")
        if os.path.exists(path) and not os.path.isfile(path):
            raise ImageFetchError(f"{show_url(url)} is not a regular file")
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.policy.max_bytes + 1)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ImageFetchError(f"could not read {show_url(url)}: {reason}") from None
        if len(data) > self.policy.max_bytes:
            raise ImageFetchError(f"{show_url(url)} is over the limit of {_size(self.policy.max_bytes)} "
                                  f"(CASS_MAX_IMAGE_MB)")
        if not data:
            raise ImageFetchError(f"{show_url(url)} is empty (0 bytes)")
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
    """A short reason without the URL (urllib3's messages repeat it, query string included)."""
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return "timed out"
    if "NewConnection" in name or "MaxRetry" in name or isinstance(exc, ConnectionError):
        return "connection failed"
    return name
