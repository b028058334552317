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
for the first URL and every redirect: schemes, allowed hosts, refusal of private addresses) and bounds
time, size and pixels. ``file://`` URLs are read only below a configured local-files root.

Decoding (EXIF orientation, grayscale/RGBA/16-bit) is not done here: the bytes go to the engine.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import requests
from PIL import Image

from cass.imageformat import header_size
from cass.images import ImageError

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


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class HostRule:
    """One ``CASS_ALLOWED_HOSTS`` entry: ``host``, ``host:port``, ``*.domain[:port]``, ``*[:port]``,
    IP literals (``10.0.0.5:9000``, ``[::1]:8080``). Without a port every port of the host matches."""

    host: str               # lower case, no brackets; "*" for any host
    port: int | None = None
    wildcard: bool = False  # "*.domain": any subdomain of ``host`` (not ``host`` itself)

    @classmethod
    def parse(cls, entry: str) -> "HostRule":
        """Parse one entry; :class:`ValueError` with the reason when it is not ``host[:port]``."""
        text = entry.strip().lower()
        if not text:
            raise ValueError("empty entry")
        if any(c in text for c in "/@?#") or any(c.isspace() for c in text):
            raise ValueError(f"{entry!r} is not host[:port] (no scheme, path or spaces: e.g. minio:9000)")
        wildcard = text.startswith("*.")
        rest = text[2:] if wildcard else text
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0 or (rest[close + 1:] and not rest[close + 1:].startswith(":")):
                raise ValueError(f"{entry!r}: an IPv6 address is written [address] or [address]:port")
            host, port_text = rest[1:close], rest[close + 2:] if rest[close + 1:] else None
            if wildcard or _ip(host) is None or _ip(host).version != 6:
                raise ValueError(f"{entry!r}: {host!r} is not an IPv6 address")
        else:
            if rest.count(":") > 1:
                raise ValueError(f"{entry!r}: write IPv6 addresses in brackets, e.g. [::1]:8080")
            host, _, port_text = rest.partition(":")
            port_text = port_text if ":" in rest else None
            host = host.rstrip(".")
            if host == "*":
                if wildcard:
                    raise ValueError(f"{entry!r}: write * for any host")
            elif not host or len(host) > 253 or not all(_HOST_LABEL.match(p) for p in host.split(".")):
                raise ValueError(f"{entry!r}: {host!r} is not a host name or IP address")
            elif wildcard and _ip(host) is not None:
                raise ValueError(f"{entry!r}: a wildcard needs a domain name, not an IP address")
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"{entry!r}: the port must be a number in 1..65535")
            port = int(port_text)
        ip = _ip(host)
        return cls(str(ip) if ip is not None else host, port, wildcard)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return ("*." if self.wildcard else "") + host + (f":{self.port}" if self.port is not None else "")

    @property
    def exact(self) -> bool:
        """Names one host (not ``*`` or ``*.domain``): trusted even on a private address."""
        return not self.wildcard and self.host != "*"

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.host == "*":
            return True
        host = _normal_host(host)
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """``"minio:9000, *.example.com"`` -> normalised entries; :class:`ValueError` naming a bad one."""
    out: list[str] = []
    for part in (text or "").split(","):
        if part.strip():
            entry = str(HostRule.parse(part))
            if entry not in out:
                out.append(entry)
    return tuple(out)


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    host = (host or "").lower().rstrip(".")
    ip = _ip(host.strip("[]"))
    return str(ip) if ip is not None else host


def address_kind(address: str) -> str | None:
    """None for a public (globally routable) address, else what it is: ``"loopback"``, ``"private"``..."""
    ip = _ip(address)
    if ip is None:
        return "unparsable"
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class FetchPolicy:
    """Which URLs may be downloaded, and within which bounds.

    ``timeout_s`` bounds one image's whole download (all redirect hops, connect and read);
    ``max_bytes`` its size (checked against Content-Length first, then while streaming);
    ``max_pixels`` its declared width x height (read from the header before anything is decoded).

    Hosts: ``trusted_hosts`` (``host:port``, the Label Studio the backend talks to) are always
    allowed; other hosts must match an ``allowed_hosts`` entry (:class:`HostRule`; None: any host,
    the class default for library use; the backend always passes ``CASS_ALLOWED_HOSTS``). With
    ``allow_private=False``, a host that is only matched by a wildcard (``*``, ``*.domain``) must resolve
    to public addresses only, checked before connecting and again on the connected socket; hosts named
    exactly (trusted, or an exact entry) are the operator's choice and may be private.
    ``local_files_root``: ``file://`` URLs are read from below this directory (None: refused).
    """

    timeout_s: float = 30.0
    max_bytes: int = 64 * MiB
    max_redirects: int = 5
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https"}))
    allowed_hosts: tuple[str, ...] | None = None
    trusted_hosts: tuple[str, ...] = ()
    allow_private: bool = True
    local_files_root: str | None = None
    max_pixels: int | None = None
    resolver: Callable = field(default=socket.getaddrinfo, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_trusted", tuple(HostRule.parse(h) for h in self.trusted_hosts))
        object.__setattr__(self, "_rules", None if self.allowed_hosts is None else
                           tuple(HostRule.parse(h) for h in self.allowed_hosts))

    def check_url(self, url: str) -> None:
        """Raise :class:`ImageFetchError` unless ``url`` may be fetched (first URL and each redirect)."""
        self._check(url)

    def _check(self, url: str) -> bool:
        """:meth:`check_url`; returns True when the connected peer must be a public address too."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in self.schemes:
            raise ImageFetchError(f"refusing to fetch {show_url(url)}: scheme {parts.scheme!r} is not "
                                  f"one of {sorted(self.schemes)}")
        if not parts.hostname:
            raise ImageFetchError(f"refusing to fetch {show_url(url)}: no host name")
        try:
            _, host, port = origin(url)
        except ValueError:
            raise ImageFetchError(f"refusing to fetch {show_url(url)}: invalid port") from None
        if any(rule.matches(host, port) for rule in self._trusted):
            return False
        if self._rules is not None:
            matching = [rule for rule in self._rules if rule.matches(host, port)]
            if not matching:
                allowed = ", ".join(map(str, self._trusted + self._rules)) or "none"
                raise ImageFetchError(
                    f"refusing to fetch {show_url(url)}: host {_normal_host(host)}:{port} is not Label Studio's "
                    f"and not in CASS_ALLOWED_HOSTS (allowed: {allowed}); add {_normal_host(host)!r} to "
                    f"CASS_ALLOWED_HOSTS to allow it")
            if any(rule.exact for rule in matching):
                return False
        if self.allow_private:
            return False
        try:
            infos = self.resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ImageFetchError(f"could not fetch {show_url(url)}: the host name does not resolve "
                                  f"({type(exc).__name__})") from None
        for info in infos:
            address = info[4][0]
            kind = address_kind(address)
            if kind is not None:
                raise ImageFetchError(self._private_message(url, address, kind))
        return True

    def check_peer(self, url: str, address: str | None) -> None:
        """The connected socket's address, for hosts that must be public (a DNS answer can change
        between the check and the connection)."""
        kind = address_kind(address) if address else None
        if kind is not None:
            raise ImageFetchError(self._private_message(url, address, kind))

    @staticmethod
    def _private_message(url: str, address: str, kind: str) -> str:
        return (f"refusing to fetch {show_url(url)}: it is on a {kind} address ({address}); private and "
                f"loopback addresses are only reached through hosts listed exactly in CASS_ALLOWED_HOSTS, "
                f"or with CASS_ALLOW_PRIVATE_HOSTS=true")

    def check_pixels(self, data: bytes) -> None:
        """:class:`~cass.images.ImageError` when the image header declares more than ``max_pixels``
        (nothing is decoded; bytes that are not an image are left for the decoder to report)."""
        if not self.max_pixels:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                found = header_size(data)  # never decodes; ImageError for formats off the allow-list
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow refuses to even open it (> 2x its own limit)
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
            raise ImageError(f"the image declares {size}, over the limit of {self.max_pixels / 1e6:g} MP "
                             f"(CASS_MAX_IMAGE_MP; decompression-bomb and memory guard)") from None
        except Exception:
            return
        if found is None:  # not a recognisable image: the decoder reports it
            return
        _, width, height = found
        if width * height > self.max_pixels:
            raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
                             f"limit of {self.max_pixels / 1e6:g} MP (CASS_MAX_IMAGE_MP; decompression-bomb "
                             f"and memory guard)")


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
            data = self._download(url, ref)
        self.policy.check_pixels(data)
        return data

    def _download(self, url: str, ref: str) -> bytes:
        deadline = time.monotonic() + self.policy.timeout_s
        retried_auth = False
        hops = 0
        while True:
            must_be_public = self.policy._check(url)
            ls = self.label_studio if self.label_studio is not None and self.label_studio.owns(url) else None
            headers = ls.headers(self.session) if ls is not None else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageFetchError(f"timed out after {self.policy.timeout_s:g}s fetching {show_url(url)}")
            try:
                resp = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                        timeout=(min(remaining, 10.0), remaining))
            except requests.RequestException as exc:
                message = f"could not fetch {show_url(url)}: {_describe(exc)}"
                if ls is not None:
                    DOWNLOADS.record(ls.base_url, message)
                raise ImageFetchError(message) from None
            if ls is not None:
                DOWNLOADS.record(ls.base_url, None)
            with resp:
                if must_be_public:
                    self.policy.check_peer(url, _peer_address(resp))
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
        sock = _socket(resp)
        timed_out = ImageFetchError(f"timed out after {self.policy.timeout_s:g}s downloading {show_url(url)}")
        try:
            while True:
                # one socket read at a time, each bounded by what is left of the deadline, so a server
                # that drips bytes slowly cannot hold the download past it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out
                if sock is not None:
                    try:
                        sock.settimeout(remaining)
                    except OSError:  # closed: the body is complete (http.client closes at its end)
                        sock = None
                chunk = resp.raw.read1(256 * 1024, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ImageFetchError(f"{show_url(url)} is over the limit of {_size(limit)} "
                                          f"(CASS_MAX_IMAGE_MB)")
                chunks.append(chunk)
        except (requests.RequestException, urllib3_errors(), OSError) as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in str(exc).lower():
                raise timed_out from None
            raise ImageFetchError(f"download of {show_url(url)} failed: {_describe(exc)}") from None
        data = b"".join(chunks)
        if not data:
            raise ImageFetchError(f"{show_url(url)} returned an empty body")
        return data

    def _local_file(self, url: str) -> bytes:
        """A ``file://`` URL below ``policy.local_files_root`` (symbolic links resolved first)."""
        root = self.policy.local_files_root
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageFetchError(f"refusing to read {show_url(url)}: a file:// URL names no host")
        base = os.path.realpath(root)
        path = os.path.realpath(unquote(parts.path))
        if os.path.commonpath([base, path]) != base:
            raise ImageFetchError(f"refusing to read {show_url(url)}: it is outside CASS_LOCAL_FILES_ROOT")
        if os.path.exists(path) and not os.path.isfile(path):
            raise ImageFetchError(f"{show_url(url)} is not a regular file")
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.policy.max_bytes + 1)
        except OSError as exc:
            raise ImageFetchError(f"could not read {show_url(url)}: {exc.strerror or type(exc).__name__}") \
                from None
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
    """A short reason without the URL (requests' messages repeat it, query string included)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def urllib3_errors() -> type:
    import urllib3.exceptions

    return urllib3.exceptions.HTTPError


def _socket(resp: requests.Response):
    """The socket under a streamed response (None if it cannot be reached)."""
    conn = getattr(resp.raw, "connection", None) or getattr(resp.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:  # a response that closes its connection owns the socket (http.client hands it over)
        fp = getattr(getattr(resp.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


def _peer_address(resp: requests.Response) -> str | None:
    sock = _socket(resp)
    try:
        return sock.getpeername()[0] if sock is not None else None
    except OSError:
        return None


class DownloadHealth:
    """The last download outcome per Label Studio origin (for ``/health``): reachable or not, the
    failures in a row and the last error (connection failures and timeouts; an HTTP answer, even an
    error status, means the host is reachable)."""

    MAX_ORIGINS = 16

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._origins: "OrderedDict[str, dict]" = OrderedDict()

    def record(self, base_url: str, error: str | None) -> None:
        parts = urlsplit(base_url)
        key = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        with self._lock:
            state = self._origins.pop(key, None) or {"failures_in_a_row": 0}
            state["reachable"] = error is None
            state["at"] = self.clock()
            if error is None:
                state["failures_in_a_row"] = 0
                state.pop("last_error", None)
            else:
                state["failures_in_a_row"] += 1
                state["last_error"] = error
            self._origins[key] = state
            while len(self._origins) > self.MAX_ORIGINS:
                self._origins.popitem(last=False)

    def report(self) -> dict:
        now = self.clock()
        with self._lock:
            return {key: {**{k: v for k, v in state.items() if k != "at"},
                          "seconds_ago": round(now - state["at"], 1)}
                    for key, state in self._origins.items()}

    def clear(self) -> None:
        with self._lock:
            self._origins.clear()


#: Label Studio download outcomes of this process (``/health``).
DOWNLOADS = DownloadHealth()


def policy_from_settings(settings, label_studio_url: str | None) -> FetchPolicy:
    """The backend's policy: :class:`backend.config.Settings` limits and hosts, with the Label Studio
    at ``label_studio_url`` (``LABEL_STUDIO_URL`` or the ``/setup`` hostname) always allowed."""
    trusted: tuple[str, ...] = ()
    if label_studio_url:
        try:
            _, host, port = origin(label_studio_url)
            if host:
                trusted = (str(HostRule.parse(str(HostRule(_normal_host(host), port)))),)
        except ValueError:
            log.warning("Label Studio address %s is not a valid URL: no image host is trusted as Label "
                        "Studio's", show_url(label_studio_url))
    return FetchPolicy(timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_image_bytes,
                       allowed_hosts=tuple(settings.allowed_hosts), trusted_hosts=trusted,
                       allow_private=settings.allow_private_hosts, local_files_root=settings.local_files_root,
                       max_pixels=settings.max_image_pixels)
