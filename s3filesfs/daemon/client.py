"""The client side of the daemon's socket, for the CLI: plain ``http.client`` over AF_UNIX.

Kept free of the daemon's heavy imports (watchdog, uvicorn), so ``s3filesfs ls`` stays quick.
``DaemonClient.status()`` says whether a daemon answers; errors from the API are turned back into
the project's exceptions so the CLI maps them to exit codes as it does for local calls.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from pathlib import Path

from ..errors import InvalidRequest, NotFound, S3FilesError, StorageError
from ..model import FileObject, FilePage


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

    def status(self) -> dict | None:
        """The daemon's ``/v1/status``, or None when no daemon answers on the socket."""
        try:
            return self.get("/v1/status")
        except (OSError, S3FilesError):
            return None

    def list(self, **params) -> FilePage:
        """``GET /v1/files`` as a FilePage, so callers print it exactly as a local listing."""
        body = self.get("/v1/files", params)
        return FilePage([FileObject.from_row(f) for f in body["data"]], has_more=body["has_more"])

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


def _when(timestamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "none yet"


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


def status_lines(info: dict) -> list[str]:
    """``/v1/status`` as the human text ``s3filesfs status`` prints."""
    lines = [
        f"daemon running (pid {info['pid']}) since {_when(info['started_at'])}",
        f"watching:   {', '.join(info['watched_folders'])}" + ("  (deletes mirrored)" if info["delete"] else ""),
        f"queue:      {info['queue_length']} waiting, {info['waiting_to_settle']} settling, "
        f"{len(info['in_flight'])} uploading, {len(info['retrying'])} retrying",
        f"journal:    {_counts(info['counts']['journal'])}",
        f"this run:   {_counts(info['counts']['this_run'])}",
        f"last sync:  {_when(info['last_sync_at'])}",
    ]
    lines += [f"  uploading {item['path']}" for item in info["in_flight"]]
    lines += [f"  failed    {item['path']}: {item['error']}" for item in info["failed"]]
    lines += [f"  skipped   {item['path']}: {item['reason']}" for item in info["not_uploaded"]]
    return lines
