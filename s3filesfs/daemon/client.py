"""The client side of the daemon's socket, for the CLI: plain ``http.client`` over AF_UNIX.

Kept free of the daemon's heavy imports (watchdog, uvicorn), so ``s3filesfs ls`` stays quick.
``DaemonClient.running()`` says whether a daemon answers; errors from the API are turned back into
the project's exceptions so the CLI maps them to exit codes as it does for local calls.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from pathlib import Path

from ..errors import InvalidRequest, NotFound, S3FilesError, StorageError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class DaemonClient:
    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout

    def running(self) -> bool:
        try:
            self.get("/v1/status")
        except (OSError, S3FilesError):
            return False
        return True

    def get(self, url: str, params: dict | None = None) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", url + (f"?{query}" if query else ""))
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status >= 400:
            error = body.get("error") or {}
            message = error.get("message") or f"daemon answered {response.status}"
            if response.status == 404:
                missing = NotFound(url.rsplit("/", 1)[-1])
                missing.message = message
                raise missing
            if response.status < 500:
                raise InvalidRequest(message, error.get("param"))
            raise StorageError(message)
        return body
