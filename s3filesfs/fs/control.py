"""The mount's control socket: ``GET /metrics`` and ``GET /status`` on a Unix socket of its own.

The socket (mode 0600, in the runtime folder's private ``mounts/`` beside the pid file) is served by
a stdlib HTTP server on one thread: a scrape or ``s3filesfs status`` must not wait on, or slow down,
the kernel's requests. ``status()`` is whatever the mount hands in (``mount.run``); the socket is
removed when the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .. import metrics
from ..runtime_dir import ensure_private

log = logging.getLogger(__name__)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    status: Callable[[], dict]

    def server_bind(self) -> None:
        old_umask = os.umask(0o177)  # no window in which the socket is reachable by others
        try:
            super().server_bind()
        finally:
            os.umask(old_umask)
        os.chmod(str(self.server_address), 0o600)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, metrics.exposition(), metrics.CONTENT_TYPE)
        elif path == "/status":
            try:
                body = json.dumps(self.server.status()).encode()
            except Exception:  # a bug: say so in the log, answer 500 rather than drop the connection
                log.exception("mount status failed")
                self._answer(500, b'{"error": "internal error"}', "application/json")
                return
            self._answer(200, body, "application/json")
        else:
            self._answer(404, b'{"error": "not found"}', "application/json")

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "local"  # a Unix socket's peer has no address (the default would fail on it)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("control socket: " + format, *args)


def socket_path(pid_path: Path) -> Path:
    """The control socket of the mount whose pid file is ``pid_path``."""
    return pid_path.with_suffix(".sock")


class ControlSocket:
    def __init__(self, path: Path, status: Callable[[], dict]):
        self.path = path
        ensure_private(path.parent)
        if path.exists() or path.is_symlink():
            path.unlink()  # a live mount here would have been refused before: a dead mount's
        self._server = _Server(str(path), _Handler)
        self._server.status = status
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="control", daemon=True)

    def start(self) -> ControlSocket:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)

