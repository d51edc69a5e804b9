"""Staging: the local files that hold what is written through the mount until it is uploaded.

(The records beside them, and ``status``/``retry`` from another process, are in ``records.py``.)

Every file being written lives in the staging folder as ``<token>.data`` with a ``<token>.json``
beside it naming its purpose, filename and the id it replaces. That sidecar is what makes a failure
lose nothing: an upload that fails (or a mount that dies) leaves both files behind, ``status`` lists
them and ``retry`` uploads them. The folder has a size cap; a write past it fails with ENOSPC.

A ``StagedFile`` is one path being written. Sequential writes are also streamed to the store as
they arrive (a ``PendingFile``: multipart parts go out while the data comes in), so ``close()`` of a
big file only waits for the last part. Any write out of order, or a failed part, drops the stream;
the upload then happens from the staged copy at close.

No mfusepy here (only ``ops.py`` talks to libfuse), so this can be tested without a mount.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from ..errors import NoSpace, S3FilesError, StorageError
from ..files import FileService, PendingFile
from ..model import FileObject, is_temporary_name
from .reader import Reader
from .records import delete_quietly, discard, records, write_record

log = logging.getLogger(__name__)

COPY_CHUNK = 8 * 1024 * 1024
LOCK_NAME = ".mount.lock"


class Staging:
    """The staging folder: reservations against its cap, sidecars, and the retry of failures."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()
        self._mount_lock_fd: int | None = None

    # --- ownership ---------------------------------------------------------------------------

    def claim(self) -> None:
        """Take the folder for one mount; a second mount on the same folder is refused."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(f"staging folder {self.folder} is in use by another mount") from None
        self._mount_lock_fd = fd
        self._recover()

    def _recover(self) -> None:
        """Sidecars a previous mount left as "writing" (it died) become failures to retry."""
        for record in records(self.folder):
            data = self.folder / f"{record.token}.data"
            size = data.stat().st_size if data.exists() else 0
            self._used += size
            if record.state == "writing":
                if is_temporary_name(record.filename):
                    discard(self.folder, record.token)
                    self._used -= size
                    continue
                write_record(self.folder, record.token, {
                    **record.to_dict(), "state": "failed", "bytes": size,
                    "error": "the mount stopped before this file was uploaded"})
                log.warning("staged upload %s/%s from an earlier mount kept for `s3filesfs retry`",
                            record.purpose, record.filename)

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

    def new_file(self, service: FileService, purpose: str, filename: str, replaces: str | None,
                 temporary: bool) -> "StagedFile":
        token = f"{int(time.time())}-{secrets.token_hex(6)}"
        return StagedFile(self, service, token, purpose, filename, replaces, temporary)


class StagedFile:
    """One path being written: the staged bytes, the optional stream, what it replaces."""

    def __init__(self, staging: Staging, service: FileService, token: str, purpose: str, filename: str,
                 replaces: str | None, temporary: bool):
        self.staging = staging
        self.service = service
        self.token = token
        self.purpose = purpose
        self.filename = filename
        self.replaces = replaces  # the committed id this file takes the place of, once uploaded
        self.temporary = temporary
        self.lock = threading.RLock()
        self.opens = 0
        self.size = 0
        self.dirty = True  # a new file is uploaded at close even if empty (`touch`)
        self.replaced_ids: list[str] = []  # what the last upload replaced
        self.uploaded: FileObject | None = None
        self.unlinked = False  # removed while open: never upload
        self.write_error: S3FilesError | None = None  # a write failed: the content is incomplete
        self.last_error: str | None = None  # why the last upload failed
        # The file's created_at once registered, fixed now so that the attributes the kernel
        # caches while the file is written (mtime) are the ones it shows after the upload.
        self.created_at = int(time.time())
        self._stream: PendingFile | None = None
        self._streamed = 0
        self._unfinished: list[str] = []  # ids whose uploads have parts in the store (see _note_begun)
        self._stream_possible = not temporary
        self._reserved = 0  # bytes of the staging cap held: the staged data's size
        self._base: FileObject | None = None  # copy-on-write source not copied yet
        self._base_reader: Reader | None = None
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._sidecar_fd: int | None = None
        self._record_stale = False
        self._save("writing")

    @property
    def data_path(self) -> Path:
        return self.staging.folder / f"{self.token}.data"

    # --- content -----------------------------------------------------------------------------

    def start_from(self, file: FileObject) -> None:
        """Copy-on-write: this path's content is ``file``'s until the first change copies it here.

        Opening for writing costs nothing by itself (`touch`, an editor that opens and closes): the
        copy is made by the first write or truncate, and reads until then come from the store.
        """
        self._base = file
        self._base_reader = None
        self.size = file.bytes
        self._stream_possible = False  # writes into an existing file are not a sequential stream
        self.dirty = False

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
                os.pwrite(self._fd, chunk, offset)
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

    def _changing(self) -> None:
        if not self.dirty:  # the first change since the file was opened or uploaded: a new file
            self.created_at = int(time.time())
            self.dirty = True
            if self._record_stale:
                self._save("writing")

    @property
    def shown_file(self) -> FileObject | None:
        """The registered file whose content this path holds while unchanged: the last upload, or
        the copy-on-write source (opened for writing, nothing written yet). None once changed."""
        if self.dirty:
            return None
        return self.uploaded if self.uploaded is not None else self._base

    @property
    def shown_created_at(self) -> int:
        """What ``stat`` shows as mtime: the content's creation, as it will be or as it is."""
        shown = self.shown_file
        return shown.created_at if shown is not None else self.created_at

    def write(self, data, offset: int) -> int:
        """Stage ``data`` (any bytes-like, possibly a view valid for this call only) at ``offset``."""
        with self.lock:
            self._copy_base()
            end = offset + len(data)
            try:
                self._reserve(max(end, self.size))
            except NoSpace as exc:
                self.write_error = exc  # this file is now incomplete: never upload it
                raise
            written = os.pwrite(self._fd, data, offset)
            self.size = max(self.size, end)
            self._changing()
            self._feed_stream(data, offset)
            return written

    def _feed_stream(self, data: bytes, offset: int) -> None:
        if not self._stream_possible:
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
            self._note_begun(self._stream)
        except S3FilesError as exc:
            self._drop_stream(f"a part failed: {exc.message}")

    def _note_begun(self, pending: PendingFile) -> None:
        """Name an upload in the record once it has parts in the store: if the mount dies, or
        the server goes away, before the upload completes or is aborted, ``retry`` (or
        ``retry --drop``) removes those parts, which S3 would otherwise keep, and bill, forever."""
        if pending.begun and pending.id not in self._unfinished:
            self._unfinished.append(pending.id)
            self._save("writing")

    def _drop_stream(self, why: str) -> None:
        self._stream_possible = False
        if self._stream is not None:
            log.debug("%s/%s: uploading at close instead of while writing (%s)", self.purpose, self.filename, why)
            with contextlib.suppress(Exception):
                self._stream.abort()
            self._stream = None

    def read(self, size: int, offset: int) -> bytes:
        with self.lock:
            base = self._base
            if base is not None and self._base_reader is None:
                self._base_reader = Reader(self.service, base)
            reader = self._base_reader
        if base is not None:
            return reader.read(size, offset)
        return os.pread(self._fd, size, offset)

    def truncate(self, length: int) -> None:
        with self.lock:
            if length == 0 and self._base is not None:
                self._base, self.size = None, 0  # nothing of the old content survives: no copy
            self._copy_base()
            self._reserve(length)
            os.ftruncate(self._fd, length)
            if length != self.size or length < self._streamed:
                self._drop_stream("truncated")
            self.size = length
            self._changing()

    # --- upload ------------------------------------------------------------------------------

    def upload(self) -> FileObject:
        """Register the staged content as a new file; the replaced id is removed afterwards.

        On failure the staged data is kept, recorded as a failure for ``retry``, and the error is
        raised for ``close()`` to report.
        """
        with self.lock:
            if self.write_error is not None:
                raise self.write_error
            try:
                file = self._commit()
            except S3FilesError as exc:
                self.last_error = exc.message
                self._save("failed", exc.message)
                raise
            old, self.replaces, self.uploaded, self.dirty = self.replaces, file.id, file, False
            self._unfinished = [i for i in self._unfinished if i != file.id]  # complete: no parts left
            self.replaced_ids = [old] if old and old != file.id else []
            self._stream_possible = False  # further writes make another file, uploaded whole
            self._streamed = 0
            for replaced in self.replaced_ids:
                delete_quietly(self.service, replaced)
            # The record still describes the upload just done. It is rewritten at the next change,
            # not here, to keep close() short; until release removes it, a crash would have `retry`
            # upload this content once more (a duplicate, nothing lost).
            self._record_stale = True
            return file

    def _commit(self) -> FileObject:
        stream, self._stream = self._stream, None
        named_as_begun = stream is not None and (stream.file.filename, stream.file.purpose) == (self.filename, self.purpose)
        if stream is not None and named_as_begun and self._streamed == self.size:
            return stream.commit()
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
        pending = self.service.begin(self.filename, self.purpose, created_at=self.created_at)
        try:
            offset = 0
            while offset < self.size:
                chunk = os.pread(self._fd, min(COPY_CHUNK, self.size - offset), offset)
                if not chunk:
                    break
                pending.write(chunk)
                offset += len(chunk)
                self._note_begun(pending)
        except BaseException:
            pending.abort()
            raise
        return pending.commit()

    def rename(self, purpose: str, filename: str, temporary: bool) -> None:
        with self.lock:
            self.purpose, self.filename, self.temporary = purpose, filename, temporary
            self._save("writing")

    # --- end of life -------------------------------------------------------------------------

    def keep_for_retry(self, error: str) -> None:
        """Leave the data and a "failed" sidecar for ``retry``; this object is done."""
        with self.lock:
            self._save("failed", error)
            self._close(release=False)

    def discard(self) -> None:
        with self.lock:
            self._drop_stream("discarded")
            if self._base_reader is not None:
                self._base_reader.close()
            self._close(release=True)
            discard(self.staging.folder, self.token)

    def _close(self, release: bool) -> None:
        for fd in (self._fd, self._sidecar_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._sidecar_fd = None
        if release:
            self._reserve(0)

    def _save(self, state: str, error: str | None = None) -> None:
        record = {"purpose": self.purpose, "filename": self.filename, "replaces": self.replaces,
                  "state": state, "error": error, "bytes": self.size, "unfinished": self._unfinished}
        # A "writing" record stays locked while the mount has the file, so that `status` and
        # `retry` in another process leave it alone; a "failed" one is free for them.
        held = write_record(self.staging.folder, self.token, record, hold=state == "writing")
        self._record_stale = False
        if self._sidecar_fd is not None:
            os.close(self._sidecar_fd)
        self._sidecar_fd = held
