"""One strict parse of every http(s) URL the backend fetches: the host that is checked, the host a
Label Studio token is scoped to, and the host that is connected to all come from it.

:func:`parse_http_url` parses with :func:`urllib3.util.parse_url` (the parser of the HTTP client the
backend connects with) and refuses anything that another parser (``urllib.parse``, a browser, Label
Studio) could read differently: backslashes, control characters and whitespace, user info (``@`` in
the authority), percent-encoded or non-ASCII host names, numeric host forms other than dotted-quad
IPv4 (``2130706433``, ``0x7f.1``, ``0177.0.0.1``), IPv6 zone ids, and ports that are not 1-5 digits
(``:+18080``). What it returns, :class:`HttpURL`, is the only thing the downloader connects to: its
``scheme``, ``host`` and ``port`` open the connection, its ``target`` (path and query) is what is
requested, so no second parse happens anywhere.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from cass.redaction import redact

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


class URLRefused(ValueError):
    """A URL the backend will not fetch; the message names the problem (never the query string)."""


@dataclass(frozen=True)
class HttpURL:
    """An http(s) URL as the downloader uses it.

    ``host`` is lower case, without brackets (IPv6) and without a trailing dot; ``port`` is always set
    (the scheme's default when the URL has none); ``target`` is the request target (``/path?query``).
    """

    scheme: str
    host: str
    port: int
    target: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical URL (every parser reads the same host and port from it)."""
        return f"{self.scheme}://{self.netloc}{self.target}"

    def shown(self) -> str:
        """For logs and errors: the host actually contacted and the path, the query left out."""
        path, sep, _ = self.target.partition("?")
        return f"{self.scheme}://{self.netloc}{path}" + ("?..." if sep else "")


def _refuse(url: str, why: str) -> URLRefused:
    return URLRefused(f"refusing to fetch {safe_repr(url)}: {why}")


def safe_repr(url: str) -> str:
    """``url`` (its first 200 characters) for a refusal message: :func:`cass.redaction.redact`-ed
    (user info, query, secrets) and printable."""
    text = redact(str(url)[:200])
    return text if text.isprintable() else repr(text)


def normal_host(host: str) -> str:
    """Lower case, no brackets or trailing dot; IP literals in their canonical form."""
    host = (host or "").lower().strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def check_host(host: str, url: str = "") -> str:
    """The normalised host, or :class:`URLRefused` when it is not a plain DNS name or IP literal."""
    shown = url or host
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        if "%" in inner:
            raise _refuse(shown, "IPv6 zone ids are not accepted")
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise _refuse(shown, f"{host!r} is not an IPv6 address") from None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise _refuse(shown, "no host name")
    if not name.isascii() or "%" in name:
        raise _refuse(shown, "the host name must be plain ASCII (no percent-encoding; write IDNs as xn--)")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _refuse(shown, f"{host!r} is not a valid host name")
    if _NUMERIC_LABEL.match(labels[-1]):  # looks numeric: only canonical dotted-quad IPv4
        try:
            ip = ipaddress.IPv4Address(name)
        except ValueError:
            raise _refuse(shown, f"{host!r} is a numeric host that is not a dotted-quad IPv4 address "
                                 f"(decimal, octal and hex forms are refused)") from None
        return str(ip)
    return name


def parse_http_url(url: str, schemes: frozenset[str] | tuple[str, ...] = ("http", "https")) -> HttpURL:
    """Parse ``url`` strictly (see the module docstring); :class:`URLRefused` naming the problem."""
    if not isinstance(url, str):
        raise URLRefused(f"refusing to fetch {url!r}: a URL is a string")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise _refuse(url, "it contains whitespace or control characters")
    if "\\" in url:
        raise _refuse(url, "it contains a backslash (read as '/' by some parsers and as data by others)")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise _refuse(url, f"scheme {scheme if sep else ''!r} is not one of {sorted(schemes)}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise _refuse(url, "user info (user:password@) is not accepted in image URLs")
    host_text, port_text = authority, None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0 or authority[close + 1:] not in ("",) and not authority[close + 1:].startswith(":"):
            raise _refuse(url, "an IPv6 address is written [address] or [address]:port")
        host_text = authority[:close + 1]
        port_text = authority[close + 2:] if authority[close + 1:] else None
    elif ":" in authority:
        host_text, port_text = authority.split(":", 1)
    if port_text is not None and not _PORT.match(port_text):
        raise _refuse(url, f"the port {port_text!r} is not a number in 1..65535")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise _refuse(url, f"the port {port_text!r} is not a number in 1..65535")
    host = check_host(host_text, url)
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError) as exc:
        raise _refuse(url, f"not a valid URL ({type(exc).__name__})") from None
    # belt and braces: both parsers must read the host and port that were checked
    for other_host, other_port in ((parsed.host, parsed.port), (split.hostname, split_port)):
        if normal_host(other_host or "") != host or (other_port or DEFAULT_PORTS[scheme]) != port:
            raise _refuse(url, "URL parsers disagree about its host")
    target = parsed.path or "/"
    if parsed.query is not None:
        target += "?" + parsed.query
    return HttpURL(scheme, host, port, target)


def show_url(url: str) -> str:
    """``url`` for logs and errors: an http(s) URL as the host contacted and its path (query left out),
    any other (``s3://``, ``redis://``...) through :func:`cass.redaction.redact` (user info, query and
    secret parameters removed)."""
    if not isinstance(url, str):
        return repr(url)[:80]
    if url.startswith("data:"):
        return f"{url[:url.find(',') + 1 if ',' in url[:64] else 32]}... ({len(url)} characters)"
    try:
        return parse_http_url(url).shown()
    except URLRefused:
        return safe_repr(url)
