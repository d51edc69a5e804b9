"""The staging folder's records, as another process sees them: what ``status`` lists, ``retry``
uploads and ``retry --drop`` discards.

Each staged file ``<token>.data`` has a ``<token>.json`` record beside it (purpose, filename, the id
it replaces, state). A running mount holds a shared lock on the records of files it is writing; a
record that is "failed", or "writing" but unlocked (its mount died), waits for ``retry``. Written
atomically, the lock taken before the rename. No mfusepy here: the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFound, S3FilesError
from ..files import FileService
from ..model import FileObject, is_temporary_name

log = logging.getLogger(__name__)


@dataclass
class StagedRecord:
    """What a sidecar says: an upload waiting in staging."""

    token: str
    purpose: str
    filename: str
    replaces: str | None
    state: str  # "writing" (a mount has it open) or "failed" (waiting for retry)
    error: str | None
    bytes: int
    unfinished: list[str]  # ids of uploads begun for it, whose parts may still be in the store

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "token"}


def write_record(folder: Path, token: str, record: dict, hold: bool = False) -> int | None:
    """Write a record atomically; with ``hold``, return an fd holding a shared lock on it.

    The lock is taken before the rename, so no other process ever sees the record unlocked.
    """
    tmp = folder / f".{token}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hold:
            fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, json.dumps(record).encode())
        os.replace(tmp, folder / f"{token}.json")
    except BaseException:
        os.close(fd)
        raise
    if hold:
        return fd
    os.close(fd)
    return None


def _abandon_unfinished(service: FileService, record: StagedRecord) -> None:
    """Remove the parts of the uploads a dead or failed writer of ``record`` began. Best effort:
    what cannot be removed now is only litter (a bucket lifecycle rule removes it too)."""
    for file_id in record.unfinished:
        try:
            service.abandon(file_id)  # an id that got registered after all is left alone
        except S3FilesError as exc:
            log.warning("unfinished upload %s of %s/%s not removed: %s",
                        file_id, record.purpose, record.filename, exc.message)


def delete_quietly(service: FileService, file_id: str) -> None:
    try:
        service.delete(file_id)
    except NotFound:
        pass
    except S3FilesError as exc:  # the new file is registered; the old one is left for `gc`/`check`
        log.warning("replaced file %s could not be removed: %s", file_id, exc.message)


def discard(folder: Path, token: str) -> None:
    for suffix in (".data", ".json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / f"{token}{suffix}")


def records(folder: Path) -> list[StagedRecord]:
    """Every sidecar in the folder, oldest first."""
    found = []
    if not Path(folder).is_dir():
        return found
    for path in sorted(Path(folder).glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            data = path.with_suffix(".data")
            # The data file knows the size; a record written when the file was opened does not.
            size = data.stat().st_size if data.exists() else int(raw.get("bytes") or 0)
            found.append(StagedRecord(token=path.stem, purpose=raw["purpose"], filename=raw["filename"],
                                      replaces=raw.get("replaces"), state=raw.get("state", "failed"),
                                      error=raw.get("error"), bytes=size,
                                      unfinished=list(raw.get("unfinished") or [])))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable staging record %s: %s", path, exc)
    return found


def failed(folder: Path) -> list[StagedRecord]:
    """Uploads waiting for ``retry``: failed ones, and ones a dead mount left "writing".

    Temporary names (an editor's swap file a dead mount left) are never uploaded.
    """
    return [r for r in records(folder) if not is_temporary_name(r.filename)
            and (r.state == "failed" or not _held(folder, r.token))]


def _held(folder: Path, token: str) -> bool:
    """True if a running mount holds this record (it is being written, not failed)."""
    try:
        fd = os.open(Path(folder) / f"{token}.json", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _claimed(folder: Path, token: str):
    """Hold the record's exclusive lock for the block. Yields False, holding nothing, if another
    process has it (a running mount, another ``retry``) or the record is gone."""
    sidecar = Path(folder) / f"{token}.json"
    try:
        fd = os.open(sidecar, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield sidecar.exists()  # the lock's holder may have finished it meanwhile
    finally:
        os.close(fd)


def retry(service: FileService, folder: Path) -> tuple[list[FileObject], list[tuple[StagedRecord, S3FilesError]]]:
    """Upload every failed staged file; returns (registered, still failing)."""
    done, failing = [], []
    for record in failed(folder):
        with _claimed(folder, record.token) as claimed:
            if not claimed:
                continue
            _abandon_unfinished(service, record)
            try:
                with open(Path(folder) / f"{record.token}.data", "rb") as body:
                    file = service.create(body, record.filename, record.purpose)
            except FileNotFoundError:
                log.warning("staged data for %s/%s is missing; dropping its record", record.purpose, record.filename)
                discard(folder, record.token)
                continue
            except S3FilesError as exc:
                write_record(Path(folder), record.token, {**record.to_dict(), "state": "failed", "error": exc.message})
                failing.append((record, exc))
                continue
            if record.replaces and record.replaces != file.id:
                delete_quietly(service, record.replaces)
            discard(folder, record.token)
            done.append(file)
    return done, failing


def drop(service: FileService, folder: Path, purpose: str, filename: str) -> list[StagedRecord]:
    """Discard the uploads waiting as ``purpose/filename`` instead of uploading them.

    No file in the store changes: a file the upload would have replaced stays; only the parts of
    uploads its writer began are removed. A file a running mount is still writing is not waiting,
    so it is not dropped.
    """
    dropped = []
    for record in failed(folder):
        if (record.purpose, record.filename) != (purpose, filename):
            continue
        with _claimed(folder, record.token) as claimed:
            if claimed:
                _abandon_unfinished(service, record)
                discard(folder, record.token)
                dropped.append(record)
    return dropped
