"""Connection-level deadlines for the served configurations (issue 21).

A client that opens a connection and drips its request line and headers a byte at a time used to
keep a server thread forever (gunicorn's gthread reads headers in a pool thread; werkzeug's dev
server opens a thread per connection): 20 such connections made every endpoint, ``/health``
included, time out. Here:

* :class:`Watchdog`: one daemon thread that shuts down (``SHUT_RDWR``) each socket whose request line
  and headers are not complete ``CASS_HEADER_TIMEOUT_S`` (default 10 s) after the server started
  reading it; the blocked read returns and the thread is free again;
* the body and the answer: the socket gets an idle timeout of ``CASS_BODY_IDLE_S`` (default 30 s)
  once the headers are in, so a body (or a reader of the answer) that stalls that long is cut;
* :func:`serve_werkzeug` (``python -m backend``): werkzeug's threaded server with the header deadline,
  the idle timeout and at most ``CASS_MAX_CONNECTIONS`` (default 64) connections served at once
  (beyond: closed at once);
* :mod:`backend.http.gworker` / :mod:`backend.http.gunicorn_conf`: the same deadline for gunicorn.

The three values are :class:`backend.config.ConnectionSettings` (``Settings.connections``), where their
defaults live.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from typing import Callable

from backend.config import ConnectionSettings

log = logging.getLogger("backend.http.deadlines")


class Watchdog:
    """Shuts down sockets whose deadline passes before they are disarmed (one daemon thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, socket.socket] = {}
        self._ids = itertools.count(1)
        self.cut = 0
        threading.Thread(target=self._run, name="cass-deadlines", daemon=True).start()

    def arm(self, sock: socket.socket, seconds: float) -> int:
        """Cut ``sock`` in ``seconds`` unless :meth:`disarm` is called with the returned token first."""
        with self._lock:
            token = next(self._ids)
            self._armed[token] = sock
            heapq.heappush(self._heap, (self.clock() + seconds, token))
            self._lock.notify()
            return token

    def disarm(self, token: int | None) -> None:
        if token is not None:
            with self._lock:
                self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed
                wait = self._heap[0][0] - self.clock() if self._heap else None
                if wait is None or wait > 0:
                    self._lock.wait(wait)
                    continue
                _, token = heapq.heappop(self._heap)
                sock = self._armed.pop(token)
                self.cut += 1
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the server closes it
            except OSError:
                pass


_WATCHDOG: Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def watchdog() -> Watchdog:
    """The process's watchdog (started on first use)."""
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None:
            _WATCHDOG = Watchdog()
        return _WATCHDOG


def serve_werkzeug(app, host: str, port: int, *, connections: ConnectionSettings | None = None) -> None:
    """``python -m backend``'s server: werkzeug, threaded, with the deadlines above (blocks);
    ``connections``: ``Settings.connections`` (default: the environment's)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    connections = connections or ConnectionSettings.from_env()
    header_s, idle_s = connections.header_timeout_s, connections.body_idle_s
    limit = connections.max_connections
    dog = watchdog()

    class DeadlineHandler(WSGIRequestHandler):
        """Request line and headers within ``header_s``; then ``idle_s`` without a byte at most."""

        timeout = idle_s  # socketserver sets it on the connection: every read and write
        _token: int | None = None

        def handle_one_request(self) -> None:
            self._token = dog.arm(self.connection, header_s)
            try:
                super().handle_one_request()
            finally:
                dog.disarm(self._token)

        def parse_request(self) -> bool:
            ok = super().parse_request()  # the headers are in (or refused)
            dog.disarm(self._token)
            return ok

    server = make_server(host, port, app, threaded=True, request_handler=DeadlineHandler)
    slots = threading.BoundedSemaphore(limit)
    serve_thread = server.process_request_thread

    def process_request(request, client_address) -> None:
        if not slots.acquire(blocking=False):  # CASS_MAX_CONNECTIONS being served: no more threads
            server.shutdown_request(request)
            return
        thread = threading.Thread(target=bounded, args=(request, client_address), daemon=True)
        thread.start()

    def bounded(request, client_address) -> None:
        try:
            serve_thread(request, client_address)
        finally:
            slots.release()

    server.process_request = process_request
    log.info("serving on http://%s:%d (header deadline %gs, body idle %gs, %d connections at most)",
             host, port, header_s, idle_s, limit)
    server.serve_forever()
