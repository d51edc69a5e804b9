"""Keeping bucket and table in order: ``rebuild`` the table from the bucket, ``repair`` what
``check`` found, and the expiry timer of the long-running processes.

Only ``FileService`` is used: what an object's metadata means and when a row or an object may be
judged are its rules (files.py). This module walks the store, decides, counts and reports:

* **rebuild** streams the bucket listing (any number of objects, in bounded memory), asks a small
  pool of threads for each object's metadata (a HEAD each, at most a few in flight), and gives
  every object that carries our ``x-amz-meta-*`` its row back, exactly as it was written. Objects
  without it (written by the seed) are listed, and registered only under a purpose the caller
  names. Rows already there are left alone, so running it again changes nothing;
* **repair** acts on a ``CheckReport``: rows whose object is gone, objects without a row, open
  multipart uploads. Nothing younger than its grace is touched, nor anything recorded as being
  uploaded right now;
* **ExpiryTimer** removes expired files every ``expiry.interval_seconds`` in the mount and the
  daemon. On a shared database one process at a time does it, whichever host it runs on: the one
  holding the ``expiry`` lease, which it renews before every removal. Without the lease, N hosts
  would each list and remove the same expired files every interval.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from . import metrics
from .blobs import BlobInfo, UploadInfo
from .errors import S3FilesError
from .files import ORPHAN_GRACE, CheckReport, FileService, file_from_object
from .model import FileObject, expires_at_for

log = logging.getLogger(__name__)

UPLOAD_GRACE = 24 * 3600  # an open multipart upload younger than this may still be under way elsewhere
HEAD_WORKERS = 8
EXPIRY_LEASE = "expiry"
# Past twice the interval, a lease lapses: long enough for the holder to renew it at its next
# sweep, with room for a store request that stalls (stall_timeout_seconds, 30 s by default).
LEASE_MARGIN = 60.0
UNDER_WAY = "an upload of this id is recorded as under way"


@dataclass(frozen=True)
class Action:
    """One thing rebuild or repair did, would do, or left alone, and why."""

    action: str
    id: str
    detail: str = ""
    file: FileObject | None = None
    error: S3FilesError | None = None  # what a "failed" action failed with (its exit code, for the CLI)

    def to_dict(self) -> dict:
        data: dict = {"action": self.action, "id": self.id}
        if self.detail:
            data["detail"] = self.detail
        if self.file is not None:
            data["file"] = self.file.to_row()
        return data


Report = Callable[[Action], None]


# --- rebuild ---------------------------------------------------------------------------------


def rebuild(service: FileService, report: Report, *, apply: bool = False, unlabelled_purpose: str | None = None,
            workers: int = HEAD_WORKERS, progress: Callable[[Counter], None] | None = None) -> Counter:
    """Give every object of the store its row again; returns the counts.

    Reported (``report``), one per object: ``register`` (with ``apply``; else ``would register``),
    ``unlabelled`` (no metadata, and no ``unlabelled_purpose`` to register it under), ``unreadable``
    (metadata that does not describe a file), ``under way`` (an upload in progress), ``failed``.
    Counted only: ``objects`` listed, rows already ``present``, objects ``vanished`` meanwhile.
    """
    counts: Counter = Counter()
    under_way = service.uploads_under_way()

    def settle(info: BlobInfo, head: Future) -> None:
        try:
            described = head.result()
        except S3FilesError as exc:
            _count(counts, report, Action("failed", info.key, exc.message, error=exc))
            return
        if described is None:
            counts["vanished"] += 1
        else:
            _rebuild_one(service, described, counts, report, apply, unlabelled_purpose, under_way)
        counts["checked"] += 1
        if progress is not None:
            progress(counts)

    # HEADs run a few at a time while the listing streams on; results are settled in listing order
    # and at most `window` objects are held at once, whatever the size of the bucket.
    window = workers * 4
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rebuild-head")
    pending: deque[tuple[BlobInfo, Future]] = deque()
    try:
        for info in service.objects():
            counts["objects"] += 1
            pending.append((info, pool.submit(service.describe_object, info.key)))
            if len(pending) >= window:
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return counts


def _rebuild_one(service: FileService, info: BlobInfo, counts: Counter, report: Report, apply: bool,
                 unlabelled_purpose: str | None, under_way: set[str]) -> None:
    try:
        file = file_from_object(info)
    except ValueError as exc:
        _count(counts, report, Action("unreadable", info.key, str(exc)))
        return
    source = "from its metadata"
    if file is None:
        if unlabelled_purpose is None:
            _count(counts, report, Action("unlabelled", info.key, f"no metadata ({info.size} bytes)"))
            return
        file = unlabelled_file(info, unlabelled_purpose)
        source = "no metadata: named by its id, created when stored"
    if info.key in under_way:
        _count(counts, report, Action("under way", info.key, UNDER_WAY))
        return
    if service.has_row(info.key):
        counts["present"] += 1
        return
    if not apply:
        _count(counts, report, Action("would register", info.key, source, file))
        return
    # Asked only now, after the HEAD saw the object: a writer records its upload before sending
    # it and forgets it only once the row is in, so an object whose writer is still committing
    # is seen here, and no row is slipped in under that writer.
    if info.key in service.uploads_under_way():
        _count(counts, report, Action("under way", info.key, UNDER_WAY))
    elif service.restore(file):
        _count(counts, report, Action("register", info.key, source, file))
    else:
        counts["present"] += 1


def unlabelled_file(info: BlobInfo, purpose: str) -> FileObject:
    """The row of an object that carries no metadata (the seed's): its id for a name, written when
    the store says it was, and the expiry its purpose has by default."""
    created_at = int(info.modified or 0)
    return FileObject(id=info.key, filename=info.key, purpose=purpose, bytes=info.size, created_at=created_at,
                      expires_at=expires_at_for(purpose, created_at, None))


def _count(counts: Counter, report: Report, action: Action) -> None:
    counts[action.action] += 1
    report(action)


# --- repair ----------------------------------------------------------------------------------


def repair(service: FileService, found: CheckReport, report: Report, *, grace: float = ORPHAN_GRACE,
           upload_grace: float = UPLOAD_GRACE, delete_orphans: bool = False) -> Counter:
    """Put right what ``check`` found; returns the counts of what was done and left.

    Done: ``abandoned`` (what a dead process's upload left, as every mount start removes it),
    ``removed row`` (its object gone, the row ``grace`` seconds old), ``registered`` (an object
    without a row, from its metadata), ``deleted object`` (instead, with ``delete_orphans``),
    ``aborted upload`` (open for ``upload_grace`` seconds). Left, and reported as ``left``: anything
    younger, recorded as under way, or (without ``delete_orphans``) without metadata to register it
    by. Size mismatches are not changed. A failure is reported and the rest still done.

    Run by hand (``s3filesfs check --repair``), never on a timer, so no lease: two hosts repairing
    at once only repeat checks (a registration and an abort are idempotent). It never takes another
    host's work: the abandoned uploads are this host's own (``reap_abandoned``), and an upload
    recorded as under way by any host, its process dead or not, is left alone; a host that is gone
    for good has its leftovers reaped by a repair run with its ``host_id``.
    """
    counts: Counter = Counter()

    def attempt(file_id: str, step: Callable[[], Action | None]) -> None:
        try:
            action = step()
        except S3FilesError as exc:
            action = Action("failed", file_id, exc.message, error=exc)
        if action is not None:
            _count(counts, report, action)

    try:
        for file_id in service.reap_abandoned():
            _count(counts, report, Action("abandoned", file_id, "what an interrupted upload left, removed"))
    except S3FilesError as exc:
        _count(counts, report, Action("failed", "", f"leftovers of interrupted uploads: {exc.message}", error=exc))

    for file_id in found.rows_without_objects:
        attempt(file_id, functools.partial(_repair_row, service, file_id, grace))
    for file_id in found.objects_without_rows:
        attempt(file_id, functools.partial(_repair_object, service, file_id, grace, delete_orphans))
    for upload in _listed(service.open_uploads(), counts, report):
        attempt(upload.key, functools.partial(_repair_upload, service, upload, upload_grace))
    for file_id in found.size_mismatches:
        _count(counts, report, Action("left", file_id, "its size differs from the row's: not changed"))
    return counts


def _listed(uploads: Iterator[UploadInfo], counts: Counter, report: Report) -> Iterator[UploadInfo]:
    try:
        yield from uploads
    except S3FilesError as exc:
        _count(counts, report, Action("failed", "", f"listing open uploads: {exc.message}", error=exc))


def _repair_row(service: FileService, file_id: str, grace: float) -> Action | None:
    outcome = service.drop_row_without_object(file_id, grace)
    if outcome == "removed":
        return Action("removed row", file_id, "its object is gone")
    if outcome == "young":
        return Action("left", file_id, f"row younger than {grace:.0f} s: its object may still be on its way")
    return None  # the object arrived, or the row went, meanwhile: nothing to repair


def _repair_object(service: FileService, file_id: str, grace: float, delete_orphans: bool) -> Action | None:
    if file_id in service.uploads_under_way():
        return Action("left", file_id, UNDER_WAY)
    info = service.describe_object(file_id)
    if info is None or service.has_row(file_id):
        return None  # gone, or registered, meanwhile
    age = service.now() - (info.modified if info.modified is not None else service.now())
    if age < grace:
        return Action("left", file_id, f"object younger than {grace:.0f} s: its row may still be on its way")
    try:
        file = file_from_object(info)
        problem = "" if file is not None else "it carries no metadata (written by the seed?)"
    except ValueError as exc:
        file, problem = None, f"its metadata is unreadable: {exc}"
    if file_id in service.uploads_under_way():  # asked again after the HEAD: see _rebuild_one
        return Action("left", file_id, UNDER_WAY)
    if delete_orphans:
        if service.delete_object_without_row(file_id):
            return Action("deleted object", file_id, f"{info.size} bytes without a row")
        return None
    if file is None:
        return Action("left", file_id, f"{problem}; --delete-orphans deletes it, "
                                       "`s3filesfs rebuild --unlabelled-purpose` registers it")
    if service.restore(file):
        return Action("registered", file_id, f"{file.purpose}/{file.filename}, from its metadata", file)
    return None


def _repair_upload(service: FileService, upload: UploadInfo, upload_grace: float) -> Action | None:
    if upload.key in service.uploads_under_way():
        return None  # a process is sending it
    if service.now() - upload.initiated < upload_grace:
        return Action("left", upload.key, f"open upload begun less than {upload_grace:.0f} s ago")
    service.abort_upload(upload)
    return Action("aborted upload", upload.key, f"open since {int(upload.initiated)}")


# --- the expiry timer ------------------------------------------------------------------------


class ExpiryTimer:
    """Removes expired files (and trims the change feed) every ``interval`` seconds, one process
    at a time per database.

    A sweep runs only while this timer holds the ``expiry`` lease; it takes (or renews) it for
    ``2 × interval + LEASE_MARGIN`` seconds before the sweep and again before every removal, and
    stops the sweep the moment it cannot. So the process that swept last keeps the job while it
    lives, another takes over once the lease lapses, and two never remove at the same time.
    """

    def __init__(self, service: FileService, interval: float, lease_seconds: float | None = None):
        self.service = service
        self.interval = interval
        self.lease_seconds = lease_seconds if lease_seconds is not None else 2 * interval + LEASE_MARGIN
        self.holder = f"{service.owner}/{uuid.uuid4().hex[:8]}"  # unique even among timers of one process
        self.counts: Counter = Counter()  # sweeps, removed, skipped (the lease was elsewhere), failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False  # once taken, released at stop

    def start(self) -> ExpiryTimer:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="expiry", daemon=True)
            self._thread.start()
            atexit.register(self.stop)  # hand the lease on at once when the process ends
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if not self._held:
            return  # never had it: nothing to hand on (and no need to ask the database)
        try:
            self.service.release_lease(EXPIRY_LEASE, self.holder)
        except S3FilesError as exc:
            log.debug("expiry lease not released: %s", exc.message)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except S3FilesError as exc:
                self.counts["failed"] += 1
                log.warning("expiry sweep failed (tried again in %.0f s): %s", self.interval, exc.message)
            except Exception:  # a bug: say so, and keep the timer going
                self.counts["failed"] += 1
                log.exception("expiry sweep failed")

    def _hold(self) -> bool:
        if self._stop.is_set():
            return False
        held = self.service.hold_lease(EXPIRY_LEASE, self.holder, self.lease_seconds)
        self._held = self._held or held
        return held

    def sweep(self) -> list[str] | None:
        """Remove the expired files now, if this timer holds (or can take) the lease; their ids,
        or None when another process holds it."""
        if not self._hold():
            self.counts["skipped"] += 1
            log.debug("expiry: another process holds the lease")
            return None
        removed = self.service.gc(before_each=self._hold)
        self.service.trim_changes()  # the same once-per-store job: the feed's old entries
        self.counts["sweeps"] += 1
        self.counts["removed"] += len(removed)
        metrics.EXPIRY_REMOVED.inc(len(removed))
        for file_id in removed:
            log.info("expiry: removed expired file %s", file_id)
        if removed:
            log.info("expiry: %d expired file(s) removed (%d since start)", len(removed), self.counts["removed"])
        return removed


def start_expiry_timer(service: FileService, interval: float) -> ExpiryTimer:
    """Start removing expired files every ``interval`` seconds (0: never); what the mount and the
    daemon call at start."""
    if interval > 0:
        log.info("expired files are removed every %g s", interval)
    return ExpiryTimer(service, interval).start()
