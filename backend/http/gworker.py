"""gunicorn's threaded worker with a header deadline (:mod:`backend.http.deadlines`).

gthread reads a connection's request line and headers in a pool thread, blocking, with no limit: a
client dripping header bytes keeps that thread. :class:`DeadlineThreadWorker` arms the process's
:class:`~backend.http.deadlines.Watchdog` when a pool thread takes a connection and disarms it once
the headers are parsed; a connection that has not sent them within ``CASS_HEADER_TIMEOUT_S`` is shut
down. After the headers the socket gets an idle timeout of ``CASS_BODY_IDLE_S`` for the body and the
answer. An answer with ``Connection: close`` closes its connection (gunicorn alone would keep it).
Used by :mod:`backend.http.gunicorn_conf` (the Docker image's command).
"""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from backend.config import ConnectionSettings
from backend.http.deadlines import watchdog

_CONNECTIONS = ConnectionSettings.from_env()  # a bad value stops gunicorn here, naming the variable


class DeadlineThreadWorker(ThreadWorker):
    """``worker_class = "backend.http.gworker.DeadlineThreadWorker"``."""

    header_s = _CONNECTIONS.header_timeout_s
    idle_s = _CONNECTIONS.body_idle_s

    def load_wsgi(self):
        """The app, wrapped so that an answer's ``Connection: close`` closes its connection, as the
        Werkzeug server does (gunicorn drops the hop-by-hop header and would keep the connection)."""
        super().load_wsgi()
        app = self.wsgi

        def honour_connection_close(environ, start_response):
            def start(status, headers, exc_info=None):
                if any(k.lower() == "connection" and v.strip().lower() == "close" for k, v in headers):
                    # start_response is gunicorn's Response.start_response: its response closes after
                    start_response.__self__.force_close()
                return start_response(status, headers, exc_info)
            return app(environ, start)

        self.wsgi = honour_connection_close

    def handle(self, conn):
        token = watchdog().arm(conn.sock, self.header_s)
        conn.cass_deadline = token
        try:
            return super().handle(conn)
        finally:
            watchdog().disarm(token)

    def handle_request(self, req, conn):
        watchdog().disarm(getattr(conn, "cass_deadline", None))  # the headers are in
        conn.sock.settimeout(self.idle_s)  # body and answer: this long without a byte at most
        return super().handle_request(req, conn)
