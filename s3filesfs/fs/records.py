"""The staging folder's records, as another process sees them: what ``status`` lists, ``retry``
uploads and ``retry --drop`` discards.

Each staged file ``<token>.data`` has a ``<token>.json`` record beside it: purpose, filename, the id
it replaces, its state, and while it is being registered the id it is registered under. A running
mount holds a shared lock on the records of the files it has; a record nobody holds waits here:

* ``failed``: its writer's close covered it, only the upload failed. ``retry`` registers it.
* ``interrupted``: a write failed, or the writer or the mount died before the close. Registering it
  could put a truncated file under a real name, so ``retry`` does so only when it is named
  (``retry PURPOSE/NAME``) or told to (``--include-interrupted``).
* ``writing`` (its mount died) counts as interrupted; ``closed``/``uploading`` as failed, after
  ``uploading`` is first checked: if its row exists, it was registered and is finished instead.

A record names the store it is for and the host (``host_id``) whose mount wrote it: ``status``,
``retry`` and a mount's recovery take only their own host's records for their own store. A staging
folder is meant to be one host's, but one in a home folder shared by several hosts (NFS) may hold
another host's records, which that host's own ``retry`` or next mount registers, not this one.

Records are written atomically, the lock taken before the rename. ``retry`` writes the id it will
register under into the record before sending a byte, so a ``retry`` killed at any point is
finished by the next one, never registered twice. No mfusepy here: the CLI imports this module.
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
from ..model import FileObject, is_temporary_name, new_file_id

log = logging.getLogger(__name__)

INCOMPLETE = ("interrupted", "writing")
FOLDERS_FILE = "staging-folders"  # in the data folder: every staging folder a mount has used


@dataclass
class StagedRecord:
    """What a record says: an upload waiting in staging."""

    token: str
    purpose: str
    filename: str
    replaces: str | None
    state: str
    error: str | None
    bytes: int
    uploading_id: str | None = None
    store: str | None = None  # where it is to be registered (records of older mounts have none)
    host: str | None = None  # the host id of the mount that wrote it (records of older mounts have none)

    def belongs_to(self, store: str | None, host: str | None) -> bool:
        """Meant for ``store`` and written on ``host`` (None: any); a record of an older mount, which
        names neither, belongs everywhere, as it did before records named them."""
        return (store is None or self.store in (None, store)) and (host is None or self.host in (None, host))

    @property
    def interrupted(self) -> bool:
        """Possibly incomplete: never registered unless asked for by name."""
        return self.state in INCOMPLETE

    @property
    def reason(self) -> str:
        if self.error:
            return self.error
        if self.interrupted:
            return "the mount stopped before this file was closed"
        return "not uploaded yet"

    def to_dict(self) -> dict:
        return {"purpose": self.purpose, "filename": self.filename, "replaces": self.replaces,
                "state": "interrupted" if self.interrupted else "failed", "error": self.reason,
                "bytes": self.bytes, "uploading_id": self.uploading_id, "store": self.store, "host": self.host}


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
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk: leave no half-written record behind
        raise
    if hold:
        return fd
    os.close(fd)
    return None


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
            os.unlink(Path(folder) / f"{token}{suffix}")


def finish_registered(service: FileService, folder: Path, record: StagedRecord) -> bool:
    """If the upload a record names did register, finish it (remove the file it replaced, drop
    the staged copy) and return True. A registered file is never uploaded twice."""
    if not record.uploading_id or not service.has_row(record.uploading_id):
        return False
    if record.replaces and record.replaces != record.uploading_id:
        delete_quietly(service, record.replaces)
    discard(folder, record.token)
    return True


def records(folder: Path) -> list[StagedRecord]:
    """Every record in the folder, oldest first."""
    found: list[StagedRecord] = []
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
                                      error=raw.get("error"), bytes=size, uploading_id=raw.get("uploading_id"),
                                      store=raw.get("store"), host=raw.get("host")))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable staging record %s: %s", path, exc)
    return found


def waiting(folder: Path, store: str | None = None, host: str | None = None) -> list[StagedRecord]:
    """Uploads no running mount has: failed or interrupted ones, oldest first; with ``store``,
    only those meant for it (a staging folder may have served mounts of other stores), and with
    ``host`` only those of that host's mounts.

    Temporary names (an editor's swap file a dead mount left) are never uploaded.
    """
    return [r for r in records(folder) if not is_temporary_name(r.filename)
            and r.state not in ("registered", "unlinked") and r.belongs_to(store, host)
            and not _held(folder, r.token)]


def in_progress(folder: Path, host: str | None = None) -> list[StagedRecord]:
    """Files a running mount (with ``host``: of that host) has closed and is registering, or
    trying again to (in write-back mode, its queue)."""
    return [r for r in records(folder) if not is_temporary_name(r.filename)
            and r.state in ("closed", "uploading", "failed") and r.belongs_to(None, host)
            and _held(folder, r.token)]


def remember(data_dir: Path, folder: Path) -> None:
    """Note a mount's staging folder, so that `status` and `retry` find what it keeps wherever
    it is (``--staging-dir``)."""
    listing = Path(data_dir) / FOLDERS_FILE
    known = known_folders(data_dir)
    if Path(folder).resolve() not in known:
        listing.parent.mkdir(parents=True, exist_ok=True)
        with open(listing, "a") as out:
            out.write(f"{Path(folder).resolve()}\n")


def known_folders(data_dir: Path, default: Path | None = None) -> list[Path]:
    """``default`` and every staging folder a mount has used that still exists, each once."""
    found = [Path(default).resolve()] if default is not None else []
    try:
        lines = (Path(data_dir) / FOLDERS_FILE).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        folder = Path(line.strip())
        if line.strip() and folder.is_dir() and folder not in found:
            found.append(folder)
    return found


def _held(folder: Path, token: str) -> bool:
    """True if a running mount holds this record."""
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
    record_path = Path(folder) / f"{token}.json"
    try:
        fd = os.open(record_path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield record_path.exists()  # the lock's holder may have finished it meanwhile
    finally:
        os.close(fd)


def _selected(record: StagedRecord, names: list[tuple[str, str]] | None, include_interrupted: bool) -> bool:
    if names is not None:
        return (record.purpose, record.filename) in names
    return include_interrupted or not record.interrupted


def retry(service: FileService, folder: Path, names: list[tuple[str, str]] | None = None,
          include_interrupted: bool = False) -> tuple[list[FileObject], list[tuple[StagedRecord, S3FilesError]]]:
    """Register what waits in staging; returns (registered, still failing).

    By default only complete files (failed uploads); interrupted ones too with
    ``include_interrupted``; with ``names`` (purpose, filename pairs) exactly those, in any state.
    First, what crashed uploads of dead processes left in the store is removed.
    """
    service.reap_abandoned()
    done, failing = [], []
    for record in waiting(folder, service.location, service.host):
        if not _selected(record, names, include_interrupted):
            continue
        with _claimed(folder, record.token) as claimed:
            if not claimed:
                continue
            if finish_registered(service, folder, record):
                continue  # a `retry` or a mount killed after registering it: nothing to send again
            try:
                file = _register(service, folder, record)
            except FileNotFoundError:
                log.warning("staged data for %s/%s is missing; dropping its record", record.purpose, record.filename)
                discard(folder, record.token)
                continue
            except S3FilesError as exc:
                write_record(Path(folder), record.token, {
                    **_raw(record), "state": "interrupted" if record.interrupted else "failed",
                    "uploading_id": None, "error": exc.message})
                failing.append((record, exc))
                continue
            if record.replaces and record.replaces != file.id:
                delete_quietly(service, record.replaces)
            discard(folder, record.token)
            done.append(file)
    return done, failing


def _raw(record: StagedRecord) -> dict:
    return {"purpose": record.purpose, "filename": record.filename, "replaces": record.replaces,
            "state": record.state, "error": record.error, "bytes": record.bytes,
            "uploading_id": record.uploading_id, "store": record.store, "host": record.host}


def _register(service: FileService, folder: Path, record: StagedRecord) -> FileObject:
    """Upload a record's data under an id written into the record first."""
    with open(Path(folder) / f"{record.token}.data", "rb") as body:
        file_id = new_file_id()
        write_record(Path(folder), record.token, {**_raw(record), "uploading_id": file_id})
        pending = service.begin(record.filename, record.purpose, file_id=file_id)
        try:
            while chunk := body.read(8 * 1024 * 1024):
                pending.write(chunk)
        except BaseException:
            pending.abort()
            raise
        return pending.commit()


def drop(service: FileService, folder: Path, purpose: str, filename: str) -> list[StagedRecord]:
    """Discard the uploads waiting as ``purpose/filename`` instead of uploading them.

    No file in the store changes: a file the upload would have replaced stays. A file a running
    mount still has is not waiting, so it is not dropped.
    """
    service.reap_abandoned()
    dropped = []
    for record in waiting(folder, service.location, service.host):
        if (record.purpose, record.filename) != (purpose, filename):
            continue
        with _claimed(folder, record.token) as claimed:
            if claimed and not finish_registered(service, folder, record):
                if record.uploading_id:
                    service.abandon(record.uploading_id)  # unless it registered: then it stays
                discard(folder, record.token)
                dropped.append(record)
    return dropped
