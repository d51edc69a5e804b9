"""The daemon's journal: which local file (``purpose/name``) holds which file id, and in what state.

Entries live in the ``s3filesfs_journal`` table (its SQL is in ``metadata/``), keyed by host id and
path: a journal is one host's (``host_id``), and sees only that host's entries, so the daemons of
several hosts sharing one database may have the same file names in their drop folders without
resolving each other's pending uploads or overwriting each other's entries. This module owns
their meaning and the order of writes that makes uploads exactly-once across crashes:

1. ``begin_upload`` records the pre-generated id as ``pending_id`` *before* anything is committed;
2. ``pending_content`` records the sha256 of what was sent, still before the commit;
3. after the commit, ``promote`` moves pending to current in one statement, keeping the replaced id
   in ``old_id`` until ``replaced_deleted`` says it is gone.

A restart that finds ``pending_id`` asks the store whether that id exists: if it does, the upload
happened and is promoted; if not, it did not and the file is uploaded again.

States: ``uploading`` (an id is pending), ``interrupted`` (an upload stopped before its commit,
or found uncommitted after a crash; it is sent again), ``retrying`` (the last attempt failed, another will
follow), ``failed`` (retries exhausted; kept and shown, retried on the next scan), ``done``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

UPLOADING = "uploading"
INTERRUPTED = "interrupted"
RETRYING = "retrying"
FAILED = "failed"
DONE = "done"
STATES = (UPLOADING, INTERRUPTED, RETRYING, FAILED, DONE)


@dataclass(frozen=True)
class Entry:
    host: str
    path: str
    purpose: str | None
    state: str | None
    file_id: str | None
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    pending_id: str | None
    pending_size: int | None
    pending_mtime_ns: int | None
    pending_sha256: str | None
    old_id: str | None
    attempts: int | None
    error: str | None
    updated_at: int | None

    def matches(self, size: int, mtime_ns: int) -> bool:
        """The registered content has this size and mtime (so the local file is unchanged)."""
        return self.file_id is not None and self.size == size and self.mtime_ns == mtime_ns


class Journal:
    def __init__(self, metadata, host: str):
        # The MetadataStore: only its journal_* methods are used here, each for ``host``'s entries.
        self._db = metadata
        self.host = host

    def _put(self, path: str, **values) -> None:
        self._db.journal_put(self.host, path, updated_at=int(time.time()), **values)

    def get(self, path: str) -> Entry | None:
        row = self._db.journal_get(self.host, path)
        return Entry(**row) if row else None

    def all(self) -> list[Entry]:
        return [Entry(**row) for row in self._db.journal_all(self.host)]

    def counts(self) -> dict[str, int]:
        return self._db.journal_counts(self.host)

    def failures(self, limit: int = 20) -> list[dict]:
        return self._db.journal_failures(self.host, limit)

    def begin_upload(self, path: str, purpose: str, pending_id: str, size: int, mtime_ns: int) -> None:
        self._put(path, purpose=purpose, state=UPLOADING, pending_id=pending_id, pending_size=size,
                  pending_mtime_ns=mtime_ns, pending_sha256=None)

    def pending_content(self, path: str, sha256: str) -> None:
        self._put(path, pending_sha256=sha256)

    def promote(self, entry: Entry) -> None:
        """The pending upload is registered: it becomes the current id; the previous one is to go."""
        old = entry.file_id if entry.file_id and entry.file_id != entry.pending_id else entry.old_id
        self._put(entry.path, state=DONE, file_id=entry.pending_id, size=entry.pending_size,
                  mtime_ns=entry.pending_mtime_ns, sha256=entry.pending_sha256, pending_id=None,
                  pending_size=None, pending_mtime_ns=None, pending_sha256=None, old_id=old,
                  attempts=0, error=None)

    def drop_pending(self, path: str) -> None:
        """The pending upload did not happen (and whatever it left was removed)."""
        self._put(path, state=INTERRUPTED, pending_id=None, pending_size=None, pending_mtime_ns=None,
                  pending_sha256=None)

    def replaced_deleted(self, path: str) -> None:
        self._put(path, old_id=None)

    def touched(self, path: str, mtime_ns: int) -> None:
        """Same bytes, new mtime: nothing to upload, remember the new mtime."""
        self._put(path, state=DONE, mtime_ns=mtime_ns, attempts=0, error=None)

    def settled(self, path: str) -> None:
        self._put(path, state=DONE, attempts=0, error=None)

    def attempt_failed(self, path: str, purpose: str, attempts: int, error: str, final: bool) -> None:
        self._put(path, purpose=purpose, state=FAILED if final else RETRYING, attempts=attempts, error=error)

    def forget(self, path: str) -> None:
        self._db.journal_delete(self.host, path)
