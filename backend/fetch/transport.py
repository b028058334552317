"""HTTP requests for the downloader: a connection to exactly the checked host, one wall-clock deadline,
the connected peer checked, credentials only on Label Studio's connection.

:class:`Transport` opens urllib3 connection pools itself, from the ``scheme``/``host``/``port`` of a
:class:`backend.fetch.urls.HttpURL` (no URL string is parsed again), and sends ``target`` on them. Its
connections (:class:`GuardedHTTPConnection`, :class:`GuardedHTTPSConnection`) do two things right
after the TCP connect, before a byte of the request is sent:

* hand the socket to the fetch's :class:`Deadline`, which shuts it down when the deadline passes, so
  a server dripping its headers or body cannot hold a download past ``CASS_FETCH_TIMEOUT_S``
  (socket timeouts alone bound each read, not the whole);
* pass the peer address to the fetch's peer check (refusal of private addresses, DNS rebinding).

``credentials`` of :meth:`Transport.request` are attached only when the pool the request goes on is
the credentials' origin.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import certifi
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import BaseHTTPResponse
from urllib3.util import Timeout

from backend.fetch.urls import HttpURL


class Deadline:
    """One wall-clock bound for a whole download: sockets handed to :meth:`watch` are shut down when
    it passes (any blocked read then ends), and :attr:`expired` says so."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.start = clock()
        self._expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        """True once the bound has passed (by the timer or the clock: a socket timeout set to the
        remaining time can fire a moment before the timer does)."""
        return self._expired or self.remaining() <= 0

    def remaining(self) -> float:
        return self.start + self.seconds - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self._expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown (an SSLSocket's own one would tear down TLS state under a reader)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Guard:
    """What a connection reports to once connected: the deadline and the peer check."""

    def __init__(self, deadline: Deadline, on_connect: Callable[[str, int, str | None], None] | None):
        self.deadline = deadline
        self.on_connect = on_connect

    def connected(self, conn: HTTPConnection) -> None:
        sock = conn.sock
        self.deadline.watch(sock)
        if self.on_connect is not None:
            try:
                peer = sock.getpeername()[0]
            except OSError:
                peer = None
            self.on_connect(conn.host, conn.port, peer)


class _Guarded:
    """Mixin for urllib3 connections: the fetch guard sees every socket right after it connects."""

    def __init__(self, *args, fetch_guard: _Guard, **kwargs):
        self.fetch_guard = fetch_guard
        super().__init__(*args, **kwargs)

    def connect(self) -> None:
        super().connect()
        self.fetch_guard.connected(self)


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class Transport:
    """The connections of one download (all its redirect hops), under one :class:`Deadline`.

    ``on_connect(host, port, peer_address)`` runs on every new connection (it may raise to refuse).
    Use as a context manager: leaving it closes the connections and stops the deadline's timer.
    """

    def __init__(self, deadline: Deadline, on_connect: Callable[[str, int, str | None], None] | None = None):
        self.deadline = deadline
        self.guard = _Guard(deadline, on_connect)
        self._pools: dict[tuple[str, str, int], HTTPConnectionPool] = {}

    def pool(self, url: HttpURL) -> HTTPConnectionPool:
        key = url.origin
        if key not in self._pools:
            kwargs = dict(maxsize=1, retries=False, block=False, fetch_guard=self.guard)
            if url.scheme == "https":
                self._pools[key] = _HTTPSPool(url.host, url.port, ca_certs=certifi.where(),
                                              cert_reqs="CERT_REQUIRED", **kwargs)
            else:
                self._pools[key] = _HTTPPool(url.host, url.port, **kwargs)
        return self._pools[key]

    def request(self, method: str, url: HttpURL, headers: dict[str, str] | None = None,
                credentials: tuple[tuple[str, str, int], dict[str, str]] | None = None,
                body: bytes | None = None) -> BaseHTTPResponse:
        """Send ``method url.target`` on the pool of ``url``; the response's body is not read yet.

        ``credentials`` = (origin, headers): the headers are added only when the pool is that origin.
        """
        pool = self.pool(url)
        headers = dict(headers or {})
        if credentials is not None and (pool.scheme, normal(pool.host), pool.port) == credentials[0]:
            headers.update(credentials[1])
        remaining = max(self.deadline.remaining(), 0.001)
        return pool.urlopen(method, url.target, body=body, headers=headers, redirect=False, retries=False,
                            preload_content=False, decode_content=True, assert_same_host=True,
                            timeout=Timeout(connect=remaining, read=remaining))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self.deadline.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def normal(host: str) -> str:
    from backend.fetch.urls import normal_host

    return normal_host(host)
