"""The process's Prometheus metrics: one registry, the counters the code moves, the text a scrape gets.

Counters are moved where the work is central and cheap: ``files.py`` (a file registered after its
upload), the S3 store (bytes read, and every request's latency through botocore's events), the places
that already map errors (the mount's ``fs/ops.py``, the API's error handler), the expiry timer. The
gauges (upload queue, staging bytes) are read when scraped, from a function the daemon or the mount
hands in with ``watch_queue`` / ``watch_staging``. The last few errors are kept for the mount's status.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

FILES_UPLOADED = Counter("s3filesfs_files_uploaded", "Files uploaded and registered", registry=REGISTRY)
BYTES_UPLOADED = Counter("s3filesfs_uploaded_bytes", "Bytes of the files uploaded and registered",
                         registry=REGISTRY)
READS = Counter("s3filesfs_reads", "Reads from the store (ranged GETs and streamed downloads)", registry=REGISTRY)
BYTES_READ = Counter("s3filesfs_read_bytes", "Bytes read from the store", registry=REGISTRY)
ERRORS = Counter("s3filesfs_errors", "Errors answered to a caller (the mount's kernel requests, the API), "
                 "by error class", ["kind"], registry=REGISTRY)
S3_REQUEST_SECONDS = Histogram("s3filesfs_s3_request_seconds", "S3 requests by operation, retries included",
                               ["operation"], registry=REGISTRY,
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
UPLOAD_QUEUE = Gauge("s3filesfs_upload_queue", "Files waiting or being uploaded (the daemon's uploader queue, "
                     "the mount's write-back)", registry=REGISTRY)
STAGING_BYTES = Gauge("s3filesfs_staging_bytes", "Bytes the mount holds in its staging folder", registry=REGISTRY)
EXPIRY_REMOVED = Counter("s3filesfs_expiry_removed", "Expired files removed by the expiry timer", registry=REGISTRY)

LAST_ERRORS = 20
_last_errors: collections.deque[dict] = collections.deque(maxlen=LAST_ERRORS)
_last_errors_lock = threading.Lock()
_STARTED = "s3filesfs_metrics_started"  # the key a call's start time is kept under in botocore's context


def exposition() -> bytes:
    """Every metric of this process, in the Prometheus text format (``CONTENT_TYPE``)."""
    return generate_latest(REGISTRY)


def uploaded(size: int) -> None:
    FILES_UPLOADED.inc()
    BYTES_UPLOADED.inc(size)


def read(size: int) -> None:
    READS.inc()
    BYTES_READ.inc(size)


def error(exc: BaseException, where: str = "", keep: bool = True) -> None:
    """One error answered to a caller: counted by its class, and kept among the last ones unless
    ``keep`` is false (the answers ``ls`` and ``cp`` ask for all the time, like a missing name)."""
    kind = type(exc).__name__
    ERRORS.labels(kind=kind).inc()
    if not keep:
        return
    message = getattr(exc, "message", None) or str(exc)
    with _last_errors_lock:
        _last_errors.append({"at": int(time.time()), "kind": kind, "where": where, "message": message})


def last_errors() -> list[dict]:
    with _last_errors_lock:
        return list(_last_errors)


def watch_queue(depth: Callable[[], float]) -> None:
    UPLOAD_QUEUE.set_function(depth)


def watch_staging(used: Callable[[], float]) -> None:
    STAGING_BYTES.set_function(used)


def time_s3_calls(events) -> None:
    """Time every call of a botocore client (``client.meta.events``) by operation name: from
    ``before-call`` to ``after-call`` (an answer, an error status included) or ``after-call-error``
    (no answer). The handlers only read the clock and keep it in the call's own context."""
    events.register("before-call.s3", _call_started)
    events.register("after-call.s3", _call_ended)
    events.register("after-call-error.s3", _call_ended)


def _call_started(model=None, context=None, **_) -> None:
    if context is not None and model is not None:
        context[_STARTED] = (model.name, time.perf_counter())


def _call_ended(context=None, **_) -> None:
    started = context.pop(_STARTED, None) if context is not None else None
    if started is not None:
        operation, at = started
        S3_REQUEST_SECONDS.labels(operation=operation).observe(time.perf_counter() - at)
