"""Staging: the local files that hold what is written through the mount, and each one's lifecycle.

(The records as another process sees them, and ``status``/``retry``, are in ``records.py``.)

Every file being written lives in the staging folder as ``<token>.data`` with a ``<token>.json``
record beside it: purpose, filename, the id it replaces, its state and, while it is being
registered, the id it is being registered under. The record is written before each step that has an
effect elsewhere, so a crash at any point leaves a record that says what to do next (``records.py``).
The folder has a size cap; a write past it fails with ENOSPC.

A ``StagedFile`` is one path being written, and it alone moves itself from state to state
(``State``), under its own ``_lock``. Sequential writes of a new file are also streamed to the store
as they arrive (multipart parts go out while the data comes in), so ``close()`` of a big file only
waits for the last part. Any write out of order drops the stream; the upload then happens from the
staged copy at close.

Locks, in the order they may be taken (see docs/architecture.md): ``StagedFile.io`` (its content
and its upload; may be held across disk and network I/O) before the mount's table lock
(``core.MountCore._lock``) before ``StagedFile._lock`` (state and open count; never held across I/O)
before ``Staging._lock`` (the cap's accounting).

No mfusepy here (only ``ops.py`` talks to libfuse), so all of this runs without a mount.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from ..errors import NoSpace, S3FilesError, StagingFailed, StagingInUse, StorageError
from ..files import FileService, PendingFile
from ..model import FileObject, is_temporary_name, new_file_id
from .reader import Reader
from .records import delete_quietly, discard, finish_registered, records, write_record

log = logging.getLogger(__name__)

COPY_CHUNK = 8 * 1024 * 1024
LOCK_NAME = ".mount.lock"


class State(enum.Enum):
    """Where one path's content stands. Transitions are ``StagedFile``'s alone."""

    REGISTERED = "registered"  # the content is a registered file (``shown_file``): nothing to upload
    WRITING = "writing"  # changed since, not yet covered by its writer's close
    CLOSED = "closed"  # covered by a close, not uploaded: a temporary name, kept local until renamed
    UPLOADING = "uploading"  # being registered under ``uploading_id``
    FAILED = "failed"  # covered by a close, but the upload failed: kept for ``retry``
    INTERRUPTED = "interrupted"  # a write failed or the writer died first: registered only when named
    UNLINKED = "unlinked"  # removed from its path while open: never uploaded
    DISCARDED = "discarded"  # gone: staged bytes deleted
    KEPT = "kept"  # handed to ``retry``: the mount no longer has it, its record waits


# What happens once the last handle is gone, by state.
_SETTLED = {State.REGISTERED: State.DISCARDED, State.UNLINKED: State.DISCARDED,
            State.FAILED: State.KEPT, State.INTERRUPTED: State.KEPT}
_DONE = (State.DISCARDED, State.KEPT)


class Staging:
    """The staging folder: its owner lock, reservations against its cap, recovery at start."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()
        self._mount_lock_fd: int | None = None

    # --- ownership ---------------------------------------------------------------------------

    def claim(self, service: FileService) -> None:
        """Take the folder for one mount (a second mount on it is refused) and settle what an
        earlier mount left: registered uploads are finished, the rest waits for ``retry``."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StagingInUse(self.folder) from None
        self._mount_lock_fd = fd
        self._recover(service)

    def _recover(self, service: FileService) -> None:
        for record in records(self.folder):
            if not record.belongs_to(None, service.host):
                # Another host's (a staging folder in a shared home): its upload, registered or
                # not, is that host's to settle. It takes room here all the same.
                self._used += record.bytes
                continue
            if record.state in ("registered", "unlinked") or (
                    record.state != "uploading" and is_temporary_name(record.filename)):
                discard(self.folder, record.token)  # nothing to keep: registered, removed, or a swap file
                continue
            if record.state == "uploading" and finish_registered(service, self.folder, record):
                log.info("%s/%s had been registered as %s before the mount stopped", record.purpose,
                         record.filename, record.uploading_id)
                continue
            self._used += record.bytes
            if record.state in ("writing", "closed", "uploading"):
                state = "interrupted" if record.state == "writing" else "failed"
                why = ("the mount stopped before this file was closed" if state == "interrupted"
                       else "the mount stopped before this file was uploaded")
                write_record(self.folder, record.token, {**record.to_dict(), "state": state, "error": why,
                                                          "uploading_id": None})
                log.warning("%s/%s from an earlier mount is kept for `s3filesfs retry` (%s)",
                            record.purpose, record.filename, state)
        try:
            reaped = service.reap_abandoned()
        except S3FilesError as exc:
            log.warning("uploads cut off by an earlier crash could not be cleaned up yet: %s", exc.message)
        else:
            if reaped:
                log.info("removed what %d upload(s) cut off by a crash left in the store", len(reaped))

    # --- space -------------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, size: int) -> None:
        if size <= 0:
            return
        with self._lock:
            if self._used + size > self.max_bytes:
                self._used = self._measure()  # `retry` in another process may have freed some
            if self._used + size > self.max_bytes:
                raise NoSpace(f"staging folder {self.folder} is full ({self.max_bytes // (1024 * 1024)} MiB cap)")
            self._used += size

    def _measure(self) -> int:
        total = 0
        for data in self.folder.glob("*.data"):
            with contextlib.suppress(FileNotFoundError):
                total += data.stat().st_size
        return total

    def release(self, size: int) -> None:
        with self._lock:
            self._used = max(0, self._used - size)

    # --- files -------------------------------------------------------------------------------

    def new_file(self, service: FileService, purpose: str, filename: str, replaces: str | None) -> StagedFile:
        token = f"{int(time.time())}-{secrets.token_hex(6)}"
        return StagedFile(self, service, token, purpose, filename, replaces)


def _staging_error(exc: OSError, folder: Path) -> S3FilesError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"staging folder {folder} is full: {exc.strerror}")
    return StagingFailed(f"staging folder {folder} failed: {exc.strerror or exc}")


class StagedFile:
    """One path being written: its staged bytes, its state, the optional stream, what it replaces.

    ``opens`` counts the mount's handles on it; the mount changes it only through ``attach`` and
    ``detach`` while holding its table lock, so deciding that the last handle is gone and taking
    the file off its path happen together.
    """

    def __init__(self, staging: Staging, service: FileService, token: str, purpose: str, filename: str,
                 replaces: str | None):
        self.staging = staging
        self.service = service
        self.token = token
        self.purpose = purpose
        self.filename = filename
        self.replaces = replaces  # the committed id this path showed, removed once replaced
        self.io = threading.RLock()  # content and upload; may be held across I/O
        self._lock = threading.Lock()  # state and opens; never held across I/O
        self.state = State.WRITING  # a new file is uploaded at close even if empty (`touch`)
        self.opens = 0
        self.size = 0
        self.uploaded: FileObject | None = None
        self.uploading_id: str | None = None
        self._replaced: list[str] = []  # ids the last upload replaced, for the listing to drop
        self.failure: S3FilesError | None = None  # why it is FAILED or INTERRUPTED
        self.kept_as = "failed"  # what the record of a KEPT file says: failed or interrupted
        # The file's created_at once registered, fixed now so that the attributes the kernel
        # caches while the file is written (mtime) are the ones it shows after the upload.
        self.created_at = int(time.time())
        self._stream: PendingFile | None = None
        self._streamed = 0
        self._stream_possible = not self.temporary
        self._reserved = 0  # bytes of the staging cap held: the staged data's size
        self._base: FileObject | None = None  # copy-on-write source not copied yet
        self._base_reader: Reader | None = None
        self._fd: int | None = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._record_fd: int | None = None
        self._save()

    @property
    def data_path(self) -> Path:
        return self.staging.folder / f"{self.token}.data"

    @property
    def temporary(self) -> bool:
        return is_temporary_name(self.filename)

    @property
    def waiting(self) -> bool:
        """Written and not registered yet: what a stop waits for while a handle is open."""
        return self.state in (State.WRITING, State.CLOSED, State.UPLOADING) and not self.temporary

    @property
    def changed(self) -> bool:
        """Something for a close to do: changed content to register, or a failure to report."""
        return self.state not in (State.REGISTERED, State.UNLINKED, *_DONE)

    # --- handles (called under the mount's table lock) ----------------------------------------

    def attach(self) -> bool:
        """One more handle; False if the file is already done with (the caller starts afresh)."""
        with self._lock:
            if self.state in _DONE:
                return False
            self.opens += 1
            return True

    def detach(self) -> State:
        """One handle fewer. With none left, decide what becomes of it: the state it settles into
        (DISCARDED and KEPT take it off its path), or its current one if there is work left."""
        with self._lock:
            self.opens -= 1
            return self._settle_if_idle()

    def settle(self) -> State:
        """The same decision as ``detach`` without giving up a handle (after a late upload)."""
        with self._lock:
            return self._settle_if_idle()

    def _settle_if_idle(self) -> State:
        if self.opens == 0 and self.state in _SETTLED:
            self.kept_as = self.state.value
            self.state = State.DISCARDED if self._nothing_to_keep else _SETTLED[self.state]
        return self.state

    @property
    def _nothing_to_keep(self) -> bool:
        """A failed or interrupted file that is not kept for `retry`: a temporary name (never
        uploaded under it, and `status` and `retry` never list it, so a record would stay forever),
        or cut short by a full staging disk (keeping the part written would keep it full and fail
        every other write too; the writer was told, its write and close failed, and still has it)."""
        return self.temporary or (self.state == State.INTERRUPTED and isinstance(self.failure, NoSpace))

    def unlink(self) -> bool:
        """Taken off its path: never uploaded. True if no handle is left (discard it now)."""
        with self._lock:
            if self.state in _DONE:
                return False
            self.state = State.UNLINKED
            if self.opens == 0:
                self.state = State.DISCARDED
                return True
            return False

    def note_unlinked(self) -> None:
        """Record that the file left its path (a crash now leaves nothing to keep)."""
        with self.io:
            if self.state == State.UNLINKED:
                self._save()

    def _move(self, *allowed: State, to: State) -> bool:
        with self._lock:
            if self.state not in allowed:
                return False
            self.state = to
            return True

    # --- content -----------------------------------------------------------------------------

    def start_from(self, file: FileObject) -> None:
        """Copy-on-write: this path's content is ``file``'s until the first change copies it here.

        Opening for writing costs nothing by itself (`touch`, an editor that opens and closes): the
        copy is made by the first write or truncate, and reads until then come from the store.
        """
        self._base = file
        self.size = file.bytes
        self._stream_possible = False  # writes into an existing file are not a sequential stream
        self._move(State.WRITING, to=State.REGISTERED)
        self._save()  # a crash now leaves nothing to do: the content is `file`

    def _copy_base(self) -> None:
        """Make the copy-on-write copy now; on failure nothing has changed (the write fails)."""
        base = self._base
        if base is None:
            return
        self._reserve(base.bytes)
        try:
            _, chunks = self.service.content(base.id)
            offset = 0
            for chunk in chunks:
                self._pwrite(chunk, offset)
                offset += len(chunk)
        except BaseException:
            self._reserve(0)
            raise
        self._base = None
        if self._base_reader is not None:
            self._base_reader.close()
            self._base_reader = None

    def _reserve(self, size: int) -> None:
        """Hold ``size`` bytes of the staging cap for this file (more, or fewer, than before)."""
        if size > self._reserved:
            self.staging.reserve(size - self._reserved)
        else:
            self.staging.release(self._reserved - size)
        self._reserved = size

    def _pwrite(self, data, offset: int) -> int:
        try:
            return os.pwrite(self._fd, data, offset)  # type: ignore[arg-type]
        except OSError as exc:
            raise _staging_error(exc, self.staging.folder) from None

    def _changing(self) -> None:
        """A change is about to be made: the content becomes a new file, not yet closed."""
        with self._lock:
            previous = self.state
            if previous in (State.REGISTERED, State.CLOSED, State.FAILED):
                self.state = State.WRITING
        if previous == State.REGISTERED:  # the first change since the last upload: a new file
            self.created_at = int(time.time())
            self.uploading_id = None
        if previous in (State.REGISTERED, State.CLOSED, State.FAILED):
            # Saved before the bytes change: a crash from now on leaves the file interrupted (no
            # close covers them yet), not `closed`/`failed`, which `retry` would register.
            self._save()

    def _start_over(self) -> None:
        """Cut to nothing (an ``O_TRUNC`` open): an incomplete content no longer matters."""
        with self._lock:
            if self.state != State.INTERRUPTED:
                return
            self.state, self.failure = State.WRITING, None
        self._save()

    def _interrupted(self, failure: S3FilesError) -> None:
        with self._lock:
            if self.state in (State.UNLINKED, *_DONE):
                return
            self.state = State.INTERRUPTED
            self.failure = failure
        self._drop_stream("the content is incomplete")
        try:
            self._save()
        except OSError as exc:  # the staging disk itself failing: the state in memory still holds
            log.warning("%s/%s: its staging record could not be updated: %s", self.purpose, self.filename, exc)
        fate = ("dropped once closed: staging is full, and the writer was told" if isinstance(failure, NoSpace)
                else "kept in staging, never registered unless named to `s3filesfs retry`")
        log.warning("%s/%s is incomplete (%s): %s", self.purpose, self.filename, failure.message, fate)

    @property
    def shown_file(self) -> FileObject | None:
        """The registered file whose content this path holds while unchanged: the last upload, or
        the copy-on-write source (opened for writing, nothing written yet). None once changed."""
        if self.state != State.REGISTERED:
            return None
        return self.uploaded if self.uploaded is not None else self._base

    @property
    def shown_created_at(self) -> int:
        """What ``stat`` shows as mtime: the content's creation, as it will be or as it is."""
        shown = self.shown_file
        return shown.created_at if shown is not None else self.created_at

    def write(self, data, offset: int) -> int:
        """Stage ``data`` (any bytes-like, possibly a view valid for this call only) at ``offset``."""
        with self.io:
            self._copy_base()
            end = offset + len(data)
            self._changing()
            try:
                self._reserve(max(end, self.size))
                written = self._pwrite(data, offset)
            except S3FilesError as exc:  # the staged content now misses this write: never upload it
                self._interrupted(exc)
                raise
            self.size = max(self.size, end)
            self._feed_stream(data, offset)
            return written

    def _feed_stream(self, data, offset: int) -> None:
        if not self._stream_possible or self.state != State.WRITING:
            return
        if self._stream is None and offset == 0 and self._streamed == 0:
            try:
                self._stream = self.service.begin(self.filename, self.purpose, created_at=self.created_at)
            except S3FilesError as exc:
                self._drop_stream(f"could not start: {exc.message}")
                return
        if self._stream is None or offset != self._streamed:
            self._drop_stream("writes are not sequential")
            return
        try:
            self._stream.write(data)
            self._streamed += len(data)
        except S3FilesError as exc:
            self._drop_stream(f"a part failed: {exc.message}")

    def _drop_stream(self, why: str) -> None:
        self._stream_possible = False
        if self._stream is not None:
            log.debug("%s/%s: uploading at close instead of while writing (%s)", self.purpose, self.filename, why)
            with contextlib.suppress(Exception):
                self._stream.abort()
            self._stream = None

    def read(self, size: int, offset: int) -> bytes:
        with self.io:
            base = self._base
            if base is not None and self._base_reader is None:
                self._base_reader = Reader(self.service, base)
            reader = self._base_reader
            if base is None:
                return os.pread(self._fd, size, offset)  # type: ignore[arg-type]
        return reader.read(size, offset)  # type: ignore[union-attr]

    def truncate(self, length: int) -> None:
        with self.io:
            if length == 0:
                self._start_over()
            if length == 0 and self._base is not None:
                self._base, self.size = None, 0  # nothing of the old content survives: no copy
            self._copy_base()
            self._changing()
            try:
                self._reserve(length)
                os.ftruncate(self._fd, length)  # type: ignore[arg-type]
            except OSError as exc:
                failure = _staging_error(exc, self.staging.folder)
                self._interrupted(failure)
                raise failure from None
            except S3FilesError as exc:
                self._interrupted(exc)
                raise
            if length != self.size or length < self._streamed:
                self._drop_stream("truncated")
            self.size = length

    # --- closing and uploading -----------------------------------------------------------------

    def closed_by_writer(self, defer: bool = False) -> None:
        """The writer's own close: what it wrote is complete. Register it (a temporary name waits
        to be renamed; with ``defer``, write-back, it is made durable in staging and registered
        later). Raises what made it fail: the close reports it."""
        with self.io:
            if self.state == State.INTERRUPTED:
                raise self.failure  # type: ignore[misc]
            if self.temporary:
                self._move(State.WRITING, to=State.CLOSED)
                return
            if defer:
                self.synced()
                return
            if self._move(State.WRITING, State.CLOSED, State.FAILED, to=State.UPLOADING):
                self._upload()

    def take_replaced(self) -> list[str]:
        with self.io:
            replaced, self._replaced = self._replaced, []
            return replaced

    def synced(self) -> None:
        """The writer's fsync: what it wrote is on the staging disk and complete so far, so a
        crash from now on leaves it for `retry` (failed, not interrupted)."""
        with self.io:
            if self.state == State.INTERRUPTED:
                raise self.failure  # type: ignore[misc]
            try:
                os.fsync(self._fd)  # type: ignore[arg-type]
            except OSError as exc:
                failure = _staging_error(exc, self.staging.folder)
                self._interrupted(failure)
                raise failure from None
            if self._move(State.WRITING, to=State.CLOSED):
                self._save()

    def writer_died(self, how: str) -> None:
        """The writer ended without closing (killed): what it wrote may be incomplete."""
        with self.io:
            if self.state in (State.WRITING, State.CLOSED):
                self._interrupted(StagingFailed(f"the writer {how} before closing the file"))

    def upload_if_complete(self) -> None:
        """Register content no close covered but nobody can change any more (the last handle is gone:
        a shared mmap written back after close), or a temporary name just renamed to a real one."""
        with self.io:
            if self.temporary:
                return
            if self._move(State.WRITING, State.CLOSED, to=State.UPLOADING):
                self._upload()

    def upload_when_idle(self) -> None:
        """Write-back: register what the last close covered, once no handle is left (one that is
        open may be writing: its own last release submits the file again). An earlier failure is
        tried again. Raises what made it fail."""
        with self.io:  # held from here, no write can start before the upload is done
            with self._lock:
                idle = self.opens == 0
            if idle and not self.temporary and self._move(State.WRITING, State.CLOSED, State.FAILED,
                                                          to=State.UPLOADING):
                self._upload()

    def _upload(self) -> None:
        """Register the staged content (state UPLOADING, ``io`` held): REGISTERED, or FAILED with
        the error raised. The id is in the record before any byte goes out under it."""
        try:
            file = self._commit()
        except S3FilesError as exc:
            self.uploading_id = None
            self.failure = exc
            self._move(State.UPLOADING, to=State.FAILED)
            self._save()
            raise
        old, self.replaces, self.uploaded = self.replaces, file.id, file
        with self._lock:
            unlinked = self.state != State.UPLOADING  # removed from its path meanwhile
            if not unlinked:
                self.state = State.REGISTERED
        self._stream_possible = False  # further writes make another file, uploaded whole
        self._streamed = 0
        if old and old != file.id:
            self._delete_quietly(old)
            self._replaced.append(old)
        if unlinked:
            self._delete_quietly(file.id)

    def _delete_quietly(self, file_id: str) -> None:
        delete_quietly(self.service, file_id)

    def _commit(self) -> FileObject:
        stream, self._stream = self._stream, None
        named_as_begun = stream is not None and (stream.file.filename, stream.file.purpose) == (
            self.filename, self.purpose)
        if stream is not None and named_as_begun and self._streamed == self.size:
            self.uploading_id = stream.id
            self._save()
            return stream.commit()
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
        self.uploading_id = new_file_id()
        self._save()
        pending = self.service.begin(self.filename, self.purpose, created_at=self.created_at,
                                     file_id=self.uploading_id)
        try:
            offset = 0
            while offset < self.size:
                chunk = os.pread(self._fd, min(COPY_CHUNK, self.size - offset), offset)  # type: ignore[arg-type]
                if not chunk:
                    break
                pending.write(chunk)
                offset += len(chunk)
        except BaseException:
            pending.abort()
            raise
        return pending.commit()

    def rename(self, purpose: str, filename: str) -> None:
        with self.io:
            self.purpose, self.filename = purpose, filename
            self._save()

    def replacing(self, file_id: str | None) -> None:
        """The registered file this one replaces once uploaded is now ``file_id`` (renamed onto a
        name that shows another file, or the one it replaced is gone). Recorded at once: `retry`
        after a crash must replace the same file, or the name would show two."""
        with self.io:
            self.replaces = file_id
            self._save()

    # --- end of life -------------------------------------------------------------------------

    def stop(self) -> None:
        """The mount is stopping with this file still in its hands: keep what must be kept."""
        with self.io:
            if self.state == State.WRITING and not self.temporary:
                self._interrupted(StagingFailed("the mount stopped before this file was closed"))
            elif self.state == State.CLOSED and not self.temporary:
                self._move(State.CLOSED, to=State.FAILED)
                self.failure = StorageError("the mount stopped before this file was uploaded")
            with self._lock:
                if self.state in (State.FAILED, State.INTERRUPTED) and not self._nothing_to_keep:
                    self.kept_as, self.state = self.state.value, State.KEPT
                else:
                    self.state = State.DISCARDED
            self.finish()

    def finish(self) -> None:
        """Let go of a file that has settled: DISCARDED deletes it, KEPT hands its record to ``retry``."""
        with self.io:
            self._drop_stream("done with")
            if self._base_reader is not None:
                self._base_reader.close()
                self._base_reader = None
            if self.state == State.KEPT:
                self._save()  # no longer held: `retry` may take it
                self._close_fds()
                log.warning("%s/%s kept in staging for `s3filesfs retry` (%s)", self.purpose, self.filename,
                            self.failure.message if self.failure else "not uploaded")
                return
            self._close_fds()
            self._reserve(0)
            discard(self.staging.folder, self.token)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._record_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._record_fd = None

    def _save(self) -> None:
        """Write the record as things stand. While the mount has the file the record stays
        locked, so that `status` and `retry` in another process leave it alone."""
        record = {"purpose": self.purpose, "filename": self.filename, "replaces": self.replaces,
                  "state": self.kept_as if self.state == State.KEPT else self.state.value,
                  "error": self.failure.message if self.failure else None,
                  "bytes": self.size, "uploading_id": self.uploading_id, "store": self.service.location,
                  "host": self.service.host}
        held = write_record(self.staging.folder, self.token, record, hold=self.state != State.KEPT)
        if self._record_fd is not None:
            os.close(self._record_fd)
        self._record_fd = held
