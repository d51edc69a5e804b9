"""FileService: the OpenAI Files semantics over a MetadataStore and a BlobStore.

The only module that touches both. Its rules, shared with the Llama Stack ``remote::s3`` provider:

* **create** writes the object first and the row second, so a failed upload registers nothing and
  a registered file always has its body (a row whose insert fails has its object removed again);
* every upload is recorded (``s3filesfs_intents``: its id and the process sending it, named with
  its host id) before its first byte leaves, and forgotten once its row is in or its upload
  aborted. A process that dies mid-upload leaves that record behind, and ``reap_abandoned`` (run by
  every mount start and ``retry`` on the same host) removes what it may have left in the bucket: an
  object without a row, an open multipart upload;
* **delete** removes the object, then the row; a missing object is not an error;
* a row whose object has vanished is treated as gone: reading it removes the row and answers
  not-found. Rows younger than ``ORPHAN_GRACE`` are spared, because the seed server writes its row
  *before* its object and may simply not have finished: such a row is hidden from listings instead
  (noted in ``s3filesfs_missing``, so every process on the database hides it), shown again once a
  read finds its object, and deleted by the first listing after the grace if its object is still
  missing then (one process at a time: the holder of the ``settle-missing`` lease);
* expired files are invisible and removed on touch or by ``gc``;
* listings are ordered by ``(created_at, id)``, so files created in the same second are never
  skipped or repeated across pages;
* a service acts as an ``Identity`` (``acting_as``): it writes rows owned by it, and list, retrieve,
  content, rename and delete see only the rows it may see (``access.py``); any other id is simply
  not found. The upkeep steps (gc, check, rebuild, repair, reaping abandoned uploads, settling
  missing objects) always see every row. A service built here acts as the operator, who sees all.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from . import metrics
from .access import ANONYMOUS, OPERATOR, Identity
from .blobs import BlobInfo, BlobStore, BlobWriter, UploadInfo
from .errors import BlobMissing, InvalidRequest, NotFound, S3FilesError, StorageUnavailable
from .metadata import ChangeFeed, MetadataStore
from .metadata.feed import KEEP_SECONDS
from .model import (
    DEFAULT_FILENAME,
    LIST_LIMIT_MAX,
    PURPOSES,
    FileObject,
    FilePage,
    check_purpose,
    expires_at_for,
    is_file_id,
    new_file_id,
    parse_expires_after,
)
from .processes import default_host, is_running, this_process

ORPHAN_GRACE = 300  # seconds a row may wait for its object before a read may reap it
# The lease under which one process at a time settles rows hidden for want of their object; held
# only for the few requests that takes, and released at once.
SETTLE_LEASE = "settle-missing"
SETTLE_LEASE_SECONDS = 120.0


@dataclass
class CheckReport:
    """What ``check()`` found: rows without objects, objects without rows, sizes that differ; and
    warnings, about what is consistent but may trouble others sharing the store (not a disagreement)."""

    rows_without_objects: list[str] = field(default_factory=list)
    objects_without_rows: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.rows_without_objects or self.objects_without_rows or self.size_mismatches)

    def to_dict(self) -> dict:
        return {
            "clean": self.clean,
            "rows_without_objects": self.rows_without_objects,
            "objects_without_rows": self.objects_without_rows,
            "size_mismatches": self.size_mismatches,
            "warnings": self.warnings,
        }


def object_metadata(file: FileObject) -> dict[str, str]:
    """The ``x-amz-meta-*`` values that let the index be rebuilt from the bucket alone.

    S3 metadata must be ASCII, so the filename is percent-encoded UTF-8.
    """
    return {
        "filename": urllib.parse.quote(file.filename, safe=""),
        "purpose": file.purpose,
        "created-at": str(file.created_at),
        "expires-at": str(file.expires_at),
    }


def file_from_object(info: BlobInfo) -> FileObject | None:
    """The file an object's metadata describes (the inverse of ``object_metadata``), its size the
    object's; None for an object that carries none of it (the seed writes none). ValueError,
    saying what is wrong, for metadata that is there but unusable."""
    labels = info.metadata
    missing = [name for name in ("filename", "purpose", "created-at", "expires-at") if name not in labels]
    if len(missing) == 4:
        return None
    if missing:
        raise ValueError(f"x-amz-meta-{missing[0]} is missing")
    try:
        filename = urllib.parse.unquote(labels["filename"], errors="strict")
    except UnicodeDecodeError:
        raise ValueError("x-amz-meta-filename is not percent-encoded UTF-8") from None
    if labels["purpose"] not in PURPOSES:
        raise ValueError(f"x-amz-meta-purpose {labels['purpose']!r} is not a purpose")
    try:
        created_at = int(labels["created-at"])
        expires_at = None if labels["expires-at"] == "None" else int(labels["expires-at"])
    except ValueError:
        raise ValueError(f"x-amz-meta-created-at/expires-at are not whole seconds "
                         f"({labels['created-at']!r}, {labels['expires-at']!r})") from None
    return FileObject(id=info.key, filename=filename or DEFAULT_FILENAME, purpose=labels["purpose"], bytes=info.size,
                      created_at=created_at, expires_at=expires_at)


class PendingFile:
    """A file being created: write its body, then ``commit`` to register it (or ``abort``)."""

    def __init__(self, service: FileService, file: FileObject, writer: BlobWriter):
        self._service = service
        self._file = file
        self._writer = writer
        self.id = file.id

    @property
    def file(self) -> FileObject:
        """The file as it will be registered (``bytes`` is known only at commit)."""
        return self._file

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except BaseException:
            self.abort()  # a writer that failed is done for: account for what it may have left
            raise

    @property
    def begun(self) -> bool:
        """True once part of the body sits in the store, which ``FileService.abandon`` removes
        if the writer dies before ``commit`` or ``abort``."""
        return self._writer.begun

    def commit(self) -> FileObject:
        service = self._service
        try:
            size = self._writer.commit()
        except BaseException as exc:
            service._live.discard(self.id)
            # The last request may have reached the store although we saw it fail: remove what it
            # left now, unless the store is not answering at all (then asking again would only
            # wait again); the record stays for `reap_abandoned` in any case until it is done.
            service._stranded.add(self.id)
            if not isinstance(exc, StorageUnavailable):
                with contextlib.suppress(S3FilesError):
                    service.abandon(self.id)
            raise
        file = FileObject(**{**self._file.to_row(), "bytes": size})
        try:
            service.metadata.insert(file.to_row(), writer=service.identity, uploaded=True)
        except BaseException:
            service.blobs.delete(file.id)
            service.metadata.intent_remove(file.id)
            raise
        finally:
            service._live.discard(self.id)
        metrics.uploaded(size)
        if service._stranded:
            service.clean_stranded()  # the store answers again: clean up what it would not take before
        return file

    def abort(self) -> None:
        """Drop the upload. Its record stays if the store may still hold a piece of it (the abort
        itself failed), for ``reap_abandoned`` to finish the job."""
        cleaned = self._writer.abort()
        self._service._live.discard(self.id)
        if cleaned:
            self._service.metadata.intent_remove(self.id)
        else:
            self._service._stranded.add(self.id)


class FileService:
    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        purposes: tuple[str, ...] = PURPOSES,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        identity: Identity = OPERATOR,
    ):
        self.identity = identity
        self._root = self  # views (``acting_as``) share this one's readiness and uploads under way
        self.metadata = metadata
        self._blobs = blobs
        self.purposes = tuple(purposes)
        self.clock = clock
        # The host id (``host_id``) this process works as: its uploads under way, journal entries and
        # staging records carry it, and only its own are ever cleaned up or resolved here.
        self.host = host or default_host()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._live: set[str] = set()  # ids this process is uploading right now
        self._stranded: set[str] = set()  # ids this process gave up on, whose leftovers may remain

    def acting_as(self, identity: Identity) -> FileService:
        """This service for ``identity``: the same database, store and uploads under way, writing
        rows owned by ``identity`` and seeing only what it may see. Cheap: one per request is fine."""
        view = copy.copy(self)
        view.identity = identity
        return view

    @property
    def blobs(self) -> BlobStore:
        """The blob store, checked once on first use (metadata-only commands never wait on S3)."""
        root = self._root
        if not root._ready:
            with root._ready_lock:
                if not root._ready:
                    root._blobs.ensure_ready()
                    root._ready = True
        return self._blobs

    @property
    def location(self) -> str:
        """Where the bodies go (``s3://bucket/prefix at endpoint``), without touching the store."""
        return self._blobs.location

    def recheck_storage(self) -> None:
        """Check the blob store again on next use (re-creating the bucket if configured).

        For long-running callers: a bucket that vanished (an emptied test server, a re-created
        environment) comes back under ``auto_create_bucket`` instead of failing forever.
        """
        with self._root._ready_lock:
            self._root._ready = False

    def now(self) -> int:
        return int(self.clock())

    @property
    def owner(self) -> str:
        """This process's owner name, ``host:pid:start`` (recomputed after a fork)."""
        return this_process(self.host)

    # --- create ------------------------------------------------------------------------------

    def begin(self, filename: str | None, purpose: str, expires_after: object = None,
              created_at: int | None = None, file_id: str | None = None) -> PendingFile:
        """Start a file; ``created_at`` defaults to now (the mount passes when writing began).

        The id is recorded as an upload under way before anything is sent; a caller that needs to
        know the id first (to note it in a record of its own) chooses it with ``file_id``.
        """
        check_purpose(purpose, self.purposes)
        seconds = parse_expires_after(expires_after)
        created_at = self.now() if created_at is None else created_at
        file = FileObject(
            id=file_id or new_file_id(),
            filename=filename or DEFAULT_FILENAME,
            purpose=purpose,
            bytes=0,
            created_at=created_at,
            expires_at=expires_at_for(purpose, created_at, seconds),
        )
        blobs = self.blobs  # a missing bucket fails here, before anything is recorded
        self._live.add(file.id)
        self.metadata.intent_add(file.id, self.owner, self.now())
        return PendingFile(self, file, blobs.writer(file.id, object_metadata(file)))

    def create(
        self,
        body: BinaryIO,
        filename: str | None,
        purpose: str,
        expires_after: object = None,
        progress: Callable[[int], None] | None = None,
    ) -> FileObject:
        pending = self.begin(filename, purpose, expires_after)
        try:
            while chunk := body.read(1024 * 1024):
                pending.write(chunk)
                if progress:
                    progress(len(chunk))
        except BaseException:
            pending.abort()
            raise
        return pending.commit()

    # --- read --------------------------------------------------------------------------------

    def retrieve(self, file_id: str) -> FileObject:
        row = self.metadata.get(file_id, viewer=self.identity) if is_file_id(file_id) else None
        if row is None:
            raise NotFound(file_id)  # missing, or not this identity's to see: the same answer
        file = FileObject.from_row(row)
        if file.is_expired(self.clock()):
            self._remove(file_id)
            raise NotFound(file_id)
        return file

    def list(
        self,
        after: str | None = None,
        limit: int | None = LIST_LIMIT_MAX,
        order: str | None = "desc",
        purpose: str | None = None,
    ) -> FilePage:
        limit = LIST_LIMIT_MAX if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidRequest(f"limit must be an integer from 1 to {LIST_LIMIT_MAX} (got {limit!r})", "limit")
        order = order or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc' (got {order!r})", "order")
        if purpose is not None:
            check_purpose(purpose, PURPOSES)
        cursor = None
        if after:
            row = self.metadata.get(after, viewer=self.identity) if is_file_id(after) else None
            if row is None:
                raise InvalidRequest(f"after: no file '{after}' to continue from", "after")
            cursor = (int(row["created_at"]), row["id"])
        self._settle_missing()
        rows = self.metadata.page(viewer=self.identity, now=self.now(), limit=limit + 1,
                                  descending=order == "desc", purpose=purpose, after=cursor)
        return FilePage([FileObject.from_row(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def iter_all(self, purpose: str | None = None, order: str = "asc") -> Iterator[FileObject]:
        """Every live file, page by page."""
        after = None
        while True:
            page = self.list(after=after, purpose=purpose, order=order)
            yield from page.data
            if not page.has_more:
                return
            after = page.data[-1].id

    def content(self, file_id: str, start: int = 0, end: int | None = None) -> tuple[FileObject, Iterator[bytes]]:
        """The file and its bytes ``start..end`` (end exclusive) as a stream of chunks."""
        file = self.retrieve(file_id)
        try:
            chunks = self.blobs.stream(file_id, start, end)
        except BlobMissing:
            raise self._vanished(file) from None
        if end is None or end > start:  # (an empty range asks the store nothing)
            self._found(file_id)
        return file, chunks

    def read(self, file_id: str, offset: int, length: int) -> bytes:
        file = self.retrieve(file_id)
        try:
            data = self.blobs.read(file_id, offset, length)
        except BlobMissing:
            raise self._vanished(file) from None
        if length > 0:
            self._found(file_id)
        return data

    def read_body(self, file: FileObject, offset: int, length: int) -> bytes:
        """Like ``read``, for a file already looked up (a reader holding it open): one ranged GET,
        no lookup of its row (the bytes of an id never change)."""
        try:
            return self.blobs.read(file.id, offset, length)
        except BlobMissing:
            raise self._vanished(file) from None

    def stream_body(self, file: FileObject, offset: int) -> Iterator[bytes]:
        """Like ``read_body``, from ``offset`` to the end, as chunks: one GET, read as it is used."""
        try:
            return self.blobs.stream(file.id, offset)
        except BlobMissing:
            raise self._vanished(file) from None

    def _vanished(self, file: FileObject) -> NotFound:
        """A read found no object: delete the row if it is past the grace, else hide it."""
        if self.now() - file.created_at >= ORPHAN_GRACE:
            self.metadata.delete(file.id, viewer=OPERATOR)
        else:
            self.metadata.missing_add(file.id, self.now())
        return NotFound(file.id)

    def _found(self, file_id: str) -> None:
        """A read found the object: a row hidden for want of it is listed again."""
        if self.metadata.is_missing(file_id):
            self.metadata.missing_remove(file_id)

    def _settle_missing(self) -> None:
        """Hidden rows past the grace: deleted if their object is still missing, else shown again.
        One look per row, once; a store that does not answer leaves them hidden until it does.

        Every listing of every process on every host sharing the database comes here. The query for
        what is due is cheap and usually empty; when something is due, only the holder of the
        ``settle-missing`` lease settles it (one HEAD and one delete per row for the whole store, not
        one per process, and never two deciding about one row at once); the others list without
        it, the rows staying hidden meanwhile."""
        due = self.metadata.missing_due(self.now() - ORPHAN_GRACE)
        if not due:
            return
        holder = f"{self.owner}/{id(self):x}"
        try:
            if not self.hold_lease(SETTLE_LEASE, holder, SETTLE_LEASE_SECONDS):
                return
        except S3FilesError:
            return  # the database will not take the lease now: the rows stay hidden until it does
        try:
            self._settle(due)
        finally:
            with contextlib.suppress(S3FilesError):
                self.release_lease(SETTLE_LEASE, holder)

    def _settle(self, due: builtins.list[tuple[str, bool]]) -> None:
        for file_id, has_row in due:
            if not has_row:  # deleted meanwhile (by us or by another server): only the note is left
                self.metadata.missing_remove(file_id)
                continue
            try:
                found = self.blobs.head(file_id) is not None
            except S3FilesError:
                return
            if found:
                self.metadata.missing_remove(file_id)
            else:
                self.metadata.delete(file_id, viewer=OPERATOR)

    # --- what a long-running reader (the mount) asks --------------------------------------------

    def follow_changes(self, catch_up_seconds: float) -> ChangeFeed:
        """A place in the store's change feed, starting now."""
        return ChangeFeed(self.metadata, catch_up_seconds)

    def change_token(self) -> int | None:
        """A number that moves whenever anyone changes the table; None if the store cannot tell
        cheaply (see ``MetadataStore.change_token``)."""
        return self.metadata.change_token()

    def count(self) -> int:
        """How many rows the table holds (expired or hidden ones included): cheap, and exact."""
        return self.metadata.count()

    def trim_changes(self) -> int:
        """Drop change feed entries older than any reader still needs (``feed.KEEP_SECONDS``)."""
        return self.metadata.feed_trim(int(self.clock()) - KEEP_SECONDS)

    def live(self, file_id: str) -> FileObject | None:
        """The file ``file_id`` if listings show it (not expired, not hidden), else None."""
        row = self.metadata.live(file_id, self.now(), viewer=self.identity) if is_file_id(file_id) else None
        return None if row is None else FileObject.from_row(row)

    def named(self, purpose: str, filenames: builtins.list[str], file_id: str | None = None,
              slash_form: str | None = None) -> builtins.list[FileObject]:
        """The live files of ``purpose`` with one of ``filenames`` (or the id ``file_id``, or a
        filename that reads ``slash_form`` with ``／`` for ``/``), oldest first."""
        return [FileObject.from_row(row)
                for row in self.metadata.named(purpose, filenames, file_id, self.now(), slash_form,
                                               viewer=self.identity)]

    def unusual(self, purpose: str | None = None) -> builtins.list[FileObject]:
        """The live files whose shown name may not be their filename (see ``MetadataStore.unusual``)."""
        return [FileObject.from_row(row) for row in self.metadata.unusual(self.now(), purpose, viewer=self.identity)]

    # --- rename ------------------------------------------------------------------------------

    def rename(self, file_id: str, filename: str, purpose: str) -> FileObject:
        """Give a file a new name and/or purpose: metadata only, the object is not touched."""
        check_purpose(purpose, self.purposes)
        file = self.retrieve(file_id)
        if not self.metadata.update(file_id, viewer=self.identity, filename=filename, purpose=purpose):
            raise NotFound(file_id)  # deleted by someone else between the two statements
        return FileObject(**{**file.to_row(), "filename": filename, "purpose": purpose})

    # --- delete ------------------------------------------------------------------------------

    def delete(self, file_id: str) -> dict:
        self.retrieve(file_id)  # not found, not ours to see, or expired (and now removed): NotFound
        self._remove(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def _remove(self, file_id: str, viewer: Identity | None = None) -> None:
        """Delete a file the caller has seen (``viewer``: this service's identity unless given)."""
        self.blobs.delete(file_id)
        self.metadata.delete(file_id, viewer=viewer or self.identity)

    def abandon(self, file_id: str) -> bool:
        """Remove what an interrupted create left under ``file_id``: an upload never completed
        (its parts stay in an S3 bucket, and are billed, until aborted) or an object without a row.

        A registered file (one with a row) is left alone; returns True if the id was free of a row.
        """
        if self.has_row(file_id):
            self.metadata.intent_remove(file_id)
            self._stranded.discard(file_id)
            return False
        self.blobs.abort_unfinished(file_id)
        self.blobs.delete(file_id)
        self.metadata.intent_remove(file_id)
        self._stranded.discard(file_id)
        return True

    def clean_stranded(self) -> None:
        """Remove what this process's own given-up uploads left, if the store answers now; what
        it still will not take stays for the next call (or the next start's ``reap_abandoned``)."""
        for file_id in list(self._stranded):
            try:
                self.abandon(file_id)
            except S3FilesError:
                return

    def keep_clean(self, interval: float) -> threading.Thread:
        """For long-running processes: call ``clean_stranded`` every ``interval`` seconds."""

        def loop() -> None:
            while True:
                time.sleep(interval)
                if self._stranded:
                    self.clean_stranded()

        thread = threading.Thread(target=loop, name="clean-stranded", daemon=True)
        thread.start()
        return thread

    def reap_abandoned(self) -> builtins.list[str]:
        """Clean up after every upload that its process (on this host) gave up or died in before
        finishing; returns the ids whose leftovers were removed. Uploads under way in any process,
        and those of processes on other hosts, are left alone. One failure does not stop the rest.

        Per host by construction, so no lease is needed although every mount start, daemon scan
        and ``retry`` on every host runs it: only this host can tell that one of its processes has
        ended (``processes.is_running``), and an owner named by another host id (another machine,
        or a process here configured as another host) is never judged dead here. What a host that
        is gone for good left is reaped by a ``repair`` run with its ``host_id``."""
        reaped, failures = [], []
        me = self.owner
        for intent in self.metadata.intents():
            if intent["owner"] == me:
                if intent["id"] in self._live:
                    continue  # ours and still under way
            elif is_running(intent["owner"], self.host) is not False:
                continue
            try:
                if self.abandon(intent["id"]):
                    reaped.append(intent["id"])
            except S3FilesError as exc:
                failures.append(exc)
        if failures and not reaped:
            raise failures[0]
        return reaped

    def gc(self, before_each: Callable[[], bool] | None = None) -> builtins.list[str]:  # builtins: see list()
        """Remove every expired file; returns their ids. One failure does not stop the rest.

        ``before_each`` is asked before each removal; False stops the sweep there (the expiry
        timer renews its lease with it)."""
        removed, failures = [], []
        for file_id in self.metadata.expired(self.now()):
            if before_each is not None and not before_each():
                break
            try:
                self._remove(file_id, OPERATOR)
                removed.append(file_id)
            except S3FilesError as exc:
                failures.append(exc)
        if failures and not removed:
            raise failures[0]
        return removed

    # --- upkeep: the steps of rebuild, repair and expiry, which upkeep.py orchestrates ---------

    def objects(self) -> Iterator[BlobInfo]:
        """Every object under a file id, streamed from the listing (metadata not filled in)."""
        return (info for info in self.blobs.keys() if is_file_id(info.key))

    def has_row(self, file_id: str) -> bool:
        """True if ``file_id`` has a row, expired or not, whoever owns it."""
        return self.metadata.get(file_id, viewer=OPERATOR) is not None

    def describe_object(self, file_id: str) -> BlobInfo | None:
        """The object of ``file_id`` with its metadata and time, or None if there is none."""
        return self.blobs.head(file_id)

    def uploads_under_way(self) -> set[str]:
        """Ids recorded as being uploaded: their objects and open uploads are not ours to judge."""
        return {intent["id"] for intent in self.metadata.intents()}

    def restore(self, file: FileObject) -> bool:
        """Register ``file``, whose object is already in the store, unless its id has a row (which
        is left as it is); True if the row was added. The row is public: an object does not say
        who owned it."""
        return self.metadata.insert_missing(file.to_row(), writer=ANONYMOUS)

    def drop_row_without_object(self, file_id: str, grace: float = ORPHAN_GRACE) -> str:
        """Remove ``file_id``'s row if its object is gone and the row is ``grace`` seconds old or
        more (younger, the seed may still be writing the object). Says what it found:
        ``removed``, ``young``, ``has object`` (it arrived meanwhile) or ``gone`` (no row now)."""
        row = self.metadata.get(file_id, viewer=OPERATOR)
        if row is None:
            return "gone"
        if self.now() - int(row["created_at"] or 0) < grace:
            return "young"
        if self.blobs.head(file_id) is not None:
            return "has object"
        self.metadata.delete(file_id, viewer=OPERATOR)
        return "removed"

    def delete_object_without_row(self, file_id: str) -> bool:
        """Delete the object of ``file_id`` unless it has a row (by now); True if deleted."""
        if self.has_row(file_id):
            return False
        self.blobs.delete(file_id)
        return True

    def open_uploads(self) -> Iterator[UploadInfo]:
        """Uploads to file ids begun and never completed or aborted, streamed."""
        return (upload for upload in self.blobs.open_uploads() if is_file_id(upload.key))

    def abort_upload(self, upload: UploadInfo) -> None:
        self.blobs.abort_upload(upload)

    def hold_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds`` from now; False if another holds it."""
        return self.metadata.take_lease(name, holder, self.clock(), seconds)

    def release_lease(self, name: str, holder: str) -> None:
        self.metadata.release_lease(name, holder)

    def check(self) -> CheckReport:
        """Compare the table with the store, both ways."""
        report = CheckReport()
        objects = {info.key: info.size for info in self.blobs.keys() if is_file_id(info.key)}
        rows = {row["id"]: row for row in self.metadata.all_files()}
        for file_id, row in sorted(rows.items()):
            if file_id not in objects:
                report.rows_without_objects.append(file_id)
            elif row["bytes"] is not None and int(row["bytes"]) != objects[file_id]:
                report.size_mismatches.append(file_id)
        report.objects_without_rows = sorted(set(objects) - set(rows))
        foreign = Counter(str(row["purpose"]) for row in rows.values() if row["purpose"] not in self.purposes)
        if foreign:
            # A Llama Stack server that knows fewer purposes fails its whole listing on one such row.
            found = ", ".join(f"{purpose} ({count})" for purpose, count in sorted(foreign.items()))
            report.warnings.append(
                f"the table holds files whose purpose the purposes setting ({', '.join(self.purposes)}) does not "
                f"include: {found}; a Llama Stack server sharing the table that does not know these purposes "
                "fails to list any file (see 'purposes' in docs/configuration.md)")
        return report


def open_service(settings) -> FileService:
    """Wire a FileService from ``config.Settings``: the embedded local store or S3, and the
    metadata on SQLite or PostgreSQL. It acts as the operator (every row): a face that serves a
    caller uses ``acting_as(settings.identity)`` or the caller's own identity."""
    if settings.backend == "s3":
        from .blobs.s3 import S3BlobStore  # boto3 is only imported when S3 is used

        blobs: BlobStore = S3BlobStore(
            bucket_name=settings.bucket_name,
            region=settings.region,
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token,
            auto_create_bucket=settings.auto_create_bucket,
            prefix=settings.prefix,
            server_side_encryption=settings.server_side_encryption,
            sse_kms_key_id=settings.sse_kms_key_id,
            part_size=settings.upload_part_size_mb * 1024 * 1024,
            concurrency=settings.upload_concurrency,
            stall_timeout=settings.stall_timeout_seconds,
        )
    else:
        from .blobs.local import LocalBlobStore

        blobs = LocalBlobStore(settings.local_store_dir)
    return FileService(MetadataStore(settings.metadata_location, host=settings.host_id), blobs,
                       purposes=settings.purposes, host=settings.host_id)
