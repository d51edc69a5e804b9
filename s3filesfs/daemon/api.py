"""The daemon's HTTP API: the OpenAI Files API plus ``/v1/status``, served by uvicorn.

``GET /metrics`` answers the process's Prometheus metrics (``metrics.py``).

The main listener is a Unix socket (mode 0600 in a 0700 folder: only its owner can connect); an
optional TCP listener serves the same app behind a bearer key. Each request acts as an identity
(``access.py``): the one its bearer key is mapped to, or, on the Unix socket, the local user's when it
sends no key; a key that is not one of them is refused (401). It sees only the files that identity may
see: any other id answers 404, exactly as a missing one. Every error leaves as an OpenAI-shaped
body ``{"error": {"message", "type", "param", "code"}}`` whose status comes from ``errors.py``:
validation problems are 400 (not FastAPI's 422), unknown ids 404, storage failures 502/503.
Handlers are plain functions, so FastAPI runs the blocking FileService calls in its thread pool.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import metrics
from ..access import Identity
from ..errors import ConfigError, InvalidRequest, S3FilesError, internal_error
from ..runtime_dir import ensure_private
from . import schema

log = logging.getLogger(__name__)


def _error(status: int, message: str, error_type: str, param=None, code=None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# RFC 5987 attr-char: what may stand unencoded in ``filename*=UTF-8''…`` (besides letters and digits).
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_disposition(filename: str) -> str:
    """``attachment`` with the file's name, as the seed sends it, spelled for every client (RFC 6266).

    ``filename="…"`` alone for a plain ASCII name; otherwise that parameter carries an ASCII stand-in
    (each other character an underscore: old clients, and no quote, backslash or line break can end
    the header early) and ``filename*=UTF-8''…`` the exact name, percent-encoded (RFC 5987).
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += "; filename*=UTF-8''" + urllib.parse.quote(filename, safe=_ATTR_CHARS)
    return header


def _identity_of(given: bytes, keys: list[tuple[bytes, Identity]]) -> Identity | None:
    """The identity of the ``Authorization`` header ``given``, compared with every key in constant
    time (how long it takes says nothing about which key came close)."""
    found = None
    for expected, identity in keys:
        if hmac.compare_digest(given, expected) and found is None:
            found = identity
    return found


def create_app(service, status: Callable[[], dict], keys: Mapping[str, Identity] | None = None,
               without_key: Identity | None = None) -> FastAPI:
    """The app over ``service``; ``keys`` maps each bearer key to the identity it acts as, and a
    request without a key acts as ``without_key`` (None: a key is required, as on TCP)."""
    app = FastAPI(title="s3filesfs", description="The OpenAI Files API over an S3 bucket, plus the daemon's status.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    schema.install(app, bearer_key=without_key is None)
    expected = [(f"Bearer {key}".encode(), identity) for key, identity in (keys or {}).items()]

    @app.middleware("http")
    async def identify(request: Request, call_next):
        given = request.headers.get("authorization", "").encode()
        identity = without_key if not given else _identity_of(given, expected)
        if identity is None:
            return _error(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'",
                          "invalid_request_error", code="invalid_api_key")
        request.state.identity = identity
        return await call_next(request)

    def caller(request: Request):
        return service.acting_as(request.state.identity)

    @app.exception_handler(S3FilesError)
    async def store_error(request: Request, exc: S3FilesError):
        metrics.error(exc, f"{request.method} {request.url.path}")
        return JSONResponse(exc.to_openai(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
        return JSONResponse(InvalidRequest(message, param).to_openai(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), error_type)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("internal error in the API")
        metrics.error(exc, f"{request.method} {request.url.path}")
        return JSONResponse(internal_error(exc).to_openai(), status_code=500)

    @app.get("/v1/files", responses={200: {"model": schema.OpenAIFileList}, **schema.errors(400, 502, 503)})
    def list_files(request: Request, after: str | None = None, limit: int | None = None,
                   order: str | None = None, purpose: str | None = None):
        return caller(request).list(after=after, limit=limit, order=order, purpose=purpose).to_openai()

    @app.get("/v1/files/{file_id}", responses={200: {"model": schema.OpenAIFile}, **schema.errors(404, 502, 503)})
    def retrieve(request: Request, file_id: str):
        return caller(request).retrieve(file_id).to_openai()

    @app.get("/v1/files/{file_id}/content", response_class=StreamingResponse,
             responses={**schema.CONTENT, **schema.errors(404, 502, 503)})
    def content(request: Request, file_id: str):
        file, chunks = caller(request).content(file_id)
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"Content-Length": str(file.bytes),
                                          "Content-Disposition": content_disposition(file.filename)})

    @app.delete("/v1/files/{file_id}",
                responses={200: {"model": schema.OpenAIFileDeleted}, **schema.errors(404, 502, 503)})
    def delete(request: Request, file_id: str):
        return caller(request).delete(file_id)

    @app.post("/v1/files", responses={200: {"model": schema.OpenAIFile}, **schema.errors(400, 502, 503)})
    def upload(request: Request, file: UploadFile = File(...), purpose: str = Form(...),
               anchor: str | None = Form(None, alias="expires_after[anchor]"),
               seconds: str | None = Form(None, alias="expires_after[seconds]")):
        expires_after = None
        if anchor is not None or seconds is not None:
            expires_after = {"anchor": anchor, "seconds": seconds}
        return caller(request).create(file.file, file.filename, purpose, expires_after).to_openai()

    @app.get("/v1/status", responses={200: {"description": "What the daemon is doing (see docs/daemon.md)"}})
    def get_status():
        return status()

    @app.get("/metrics", response_class=Response,
             responses={200: {"description": "The daemon's metrics, in the Prometheus text format",
                              "content": {metrics.CONTENT_TYPE: {}}}})
    def get_metrics():
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    return app


# --- serving -----------------------------------------------------------------------------------


def bind_unix(path: Path) -> socket.socket:
    """A listening socket at ``path``: folder 0700, socket 0600; a stale socket file is replaced.

    A folder that another user owns or can write to is refused (``runtime_dir.ensure_private``).
    """
    ensure_private(path.parent)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: left by a daemon that was killed
        else:
            raise ConfigError(f"another daemon is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is reachable by others
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def bind_tcp(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(128)
    return sock


class ApiServer:
    """One uvicorn server on one already-bound socket, run in a thread."""

    def __init__(self, app: FastAPI, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name
        # log_config=None: uvicorn's messages go through the process's own (redacting) handler.
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name=f"api-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def serving(self) -> bool:
        """True once uvicorn accepts connections on the socket (and until its thread ends)."""
        return bool(self.server.started) and self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(10)
        self.sock.close()
