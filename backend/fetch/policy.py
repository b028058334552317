"""Which URLs may be fetched: allowed hosts (``CASS_ALLOWED_HOSTS``), Label Studio's origin (always
allowed), schemes, refusal of private addresses (SSRF), and the size/time/pixel bounds of a download.

Every decision is made on a :class:`backend.fetch.urls.HttpURL` (the one strict parse the downloader also
connects with), never on a re-parsed string.
"""
from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import warnings
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from cass.imageformat import header_size
from cass.images import ImageError

from backend.fetch.urls import HttpURL, URLRefused, normal_host, parse_http_url, show_url

log = logging.getLogger("backend.fetch.images")

MiB = 1 << 20


class ImageFetchError(Exception):
    """An image that could not be fetched; the message is safe to log (no credentials, no query)."""


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
        host = normal_host(host)
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


#: Defaults of the download policy (also ``Settings``' CASS_FETCH_TIMEOUT_S and CASS_MAX_IMAGE_MB).
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_BYTES = 64 * MiB


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

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
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
        self.approve(self.parse(url))

    def parse(self, url: str) -> HttpURL:
        """The strict parse of ``url`` (:mod:`backend.fetch.urls`), refusals as :class:`ImageFetchError`."""
        try:
            return parse_http_url(url, self.schemes)
        except URLRefused as exc:
            raise ImageFetchError(str(exc)) from None

    def approve(self, target: HttpURL) -> bool:
        """Raise :class:`ImageFetchError` unless ``target`` may be fetched; returns True when the
        connected peer must be a public address too (checked on the socket by the downloader)."""
        host, port, shown = target.host, target.port, target.shown()
        if any(rule.matches(host, port) for rule in self._trusted):
            return False
        if self._rules is not None:
            matching = [rule for rule in self._rules if rule.matches(host, port)]
            if not matching:
                allowed = ", ".join(map(str, self._trusted + self._rules)) or "none"
                raise ImageFetchError(
                    f"refusing to fetch {shown}: host {target.netloc} is not Label Studio's "
                    f"and not in CASS_ALLOWED_HOSTS (allowed: {allowed}); add {host!r} to "
                    f"CASS_ALLOWED_HOSTS to allow it")
            if any(rule.exact for rule in matching):
                return False
        if self.allow_private:
            return False
        try:
            infos = self.resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ImageFetchError(f"could not fetch {shown}: the host name does not resolve "
                                  f"({type(exc).__name__})") from None
        for info in infos:
            address = info[4][0]
            kind = address_kind(address)
            if kind is not None:
                raise ImageFetchError(self._private_message(shown, address, kind))
        return True

    def check_peer(self, shown: str, address: str | None) -> None:
        """The connected socket's address, for hosts that must be public (a DNS answer can change
        between the check and the connection); ``shown`` names the URL in the error."""
        kind = address_kind(address) if address else None
        if kind is not None:
            raise ImageFetchError(self._private_message(shown, address, kind))

    @staticmethod
    def _private_message(shown: str, address: str, kind: str) -> str:
        return (f"refusing to fetch {shown}: it is on a {kind} address ({address}); private and "
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



def policy_from_settings(settings, label_studio_url: str | None) -> FetchPolicy:
    """The backend's policy: :class:`backend.config.Settings` limits and hosts, with the Label Studio
    at ``label_studio_url`` (``LABEL_STUDIO_URL`` or the ``/setup`` hostname) always allowed."""
    trusted: tuple[str, ...] = ()
    if label_studio_url:
        try:
            ls = parse_http_url(label_studio_url)
            trusted = (str(HostRule(ls.host, ls.port)),)
        except URLRefused:
            log.warning("Label Studio address %s is not a valid URL: no image host is trusted as Label "
                        "Studio's", show_url(label_studio_url))
    return FetchPolicy(timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_image_bytes,
                       allowed_hosts=tuple(settings.allowed_hosts), trusted_hosts=trusted,
                       allow_private=settings.allow_private_hosts, local_files_root=settings.local_files_root,
                       max_pixels=settings.max_image_pixels)
