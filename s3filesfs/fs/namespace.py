"""Paths <-> files: what the mount shows, and how a path names a file.

The tree is ``/<purpose>/<name>``, ``/by-id/<file-id>`` and ``/index.jsonl``. Names come from the
table, shown under two documented rules:

* **Duplicates**: in one purpose, the oldest file by ``(created_at, id)`` shows under its plain
  name; each other file with that name shows as ``<stem> (<file-id>)<ext>``.
* **Safe form**: ``/`` is shown as ``／`` (U+FF0F) and NUL as ``␀`` (U+2400); a name that is empty,
  ``.``, ``..`` or over 255 bytes is shown as the bare file id.

A ``Listing`` is an immutable-by-convention snapshot of every live file; ``Namespace`` keeps the
current one, reloads it when the database changed (at most every ``refresh_seconds``), and applies
the mount's own changes at once so a writer sees its file without waiting for a reload.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from ..errors import NameTooLong, NotFound
from ..files import FileService
from ..model import NAME_MAX_BYTES, FileObject, is_file_id

log = logging.getLogger(__name__)

BY_ID = "by-id"
INDEX = "index.jsonl"


def _fits(name: str) -> bool:
    return 0 < len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX_BYTES


def safe_name(file: FileObject) -> str:
    """The file's name as a path component (the safe form, before the duplicate rule)."""
    name = file.filename.replace("/", "\uff0f").replace("\0", "\u2400")
    if name in ("", ".", "..") or not _fits(name):
        return file.id
    return name


def decorated_name(name: str, file_id: str) -> str:
    """``report.pdf`` -> ``report (file-…).pdf``: how a younger duplicate is shown."""
    stem, ext = os.path.splitext(name)
    candidate = f"{stem} ({file_id}){ext}"
    return candidate if _fits(candidate) else file_id


@dataclass(frozen=True)
class Path_:
    """A parsed mount path.

    ``kind`` is root, folder, by-id, index, file (in a purpose folder), id (in by-id/), or
    top (any other name at the root: it never exists, and nothing may be created there).
    """

    kind: str
    purpose: str | None = None
    name: str | None = None


def parse(path: str, purposes: tuple[str, ...]) -> Path_:
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
            raise NameTooLong(f"name is longer than {NAME_MAX_BYTES} bytes")
    if not parts:
        return Path_("root")
    top = parts[0]
    if len(parts) == 1:
        if top in purposes:
            return Path_("folder", purpose=top)
        if top == BY_ID:
            return Path_("by-id")
        if top == INDEX:
            return Path_("index")
        return Path_("top", name=top)
    if len(parts) == 2:
        if top in purposes:
            return Path_("file", purpose=top, name=parts[1])
        if top == BY_ID:
            return Path_("id", name=parts[1])
    raise NotFound(path)


class Listing:
    """Every live file, by id and by (purpose, shown name)."""

    def __init__(self, files: list[FileObject], purposes: tuple[str, ...]):
        self.by_id: dict[str, FileObject] = {}
        self.folders: dict[str, dict[str, FileObject]] = {p: {} for p in purposes}
        self.path_of: dict[str, tuple[str, str]] = {}
        self.next_expiry = float("inf")  # when the first file listed here expires
        for file in sorted(files, key=lambda f: (f.created_at, f.id)):
            self.add(file)

    def add(self, file: FileObject) -> None:
        folder = self.folders.get(file.purpose)
        self.by_id[file.id] = file
        if file.expires_at is not None:
            self.next_expiry = min(self.next_expiry, file.expires_at)
        if folder is None:  # a purpose this mount does not show: still reachable by id
            return
        name = safe_name(file)
        if name in folder and folder[name].id != file.id:
            name = decorated_name(name, file.id)
        folder[name] = file
        self.path_of[file.id] = (file.purpose, name)

    def remove(self, file_id: str) -> bool:
        """Drop a file; returns False when a full rebuild is needed (a duplicate may move up)."""
        file = self.by_id.pop(file_id, None)
        where = self.path_of.pop(file_id, None)
        if file is None or where is None:
            return True
        purpose, name = where
        self.folders[purpose].pop(name, None)
        plain = safe_name(file)
        return not any(f.id != file_id and safe_name(f) == plain for f in self.folders[purpose].values())

    def files(self) -> list[FileObject]:
        return sorted(self.by_id.values(), key=lambda f: (f.created_at, f.id))


class Namespace:
    def __init__(self, service: FileService, refresh_seconds: float = 1.0):
        self.service = service
        self.purposes = service.purposes
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._loaded_at = 0.0
        self._version: int | None = None
        self._generation = 0  # counts every change to the snapshot, ours or a reload
        self._index: tuple[int, bytes] | None = None

    # --- the snapshot ------------------------------------------------------------------------

    def listing(self) -> Listing:
        now = time.monotonic()
        with self._lock:
            if self._listing is not None and now - self._loaded_at < self.refresh_seconds:
                return self._listing
            version = self.service.changes()
            expired = self._listing is not None and time.time() >= self._listing.next_expiry
            if self._listing is None or version != self._version or expired:
                self._listing = Listing(list(self.service.iter_all()), self.purposes)
                self._version = version
                self._generation += 1
            self._loaded_at = now
            return self._listing

    def _edit(self, change) -> None:
        """Apply one of our own changes to the current snapshot (or rebuild it if needed)."""
        with self._lock:
            if self._listing is not None and not change(self._listing):
                self._listing = Listing(self._listing.files(), self.purposes)
            self._generation += 1

    def added(self, file: FileObject) -> None:
        self._edit(lambda listing: listing.add(file) or True)

    def removed(self, file_id: str) -> None:
        self._edit(lambda listing: listing.remove(file_id))

    def renamed(self, file: FileObject) -> None:
        def change(listing: Listing) -> bool:
            clean = listing.remove(file.id)
            listing.add(file)
            return clean

        self._edit(change)

    # --- lookups -----------------------------------------------------------------------------

    def lookup(self, purpose: str, name: str) -> FileObject:
        file = self.find(purpose, name)
        if file is None:
            raise NotFound(f"{purpose}/{name}")
        return file

    def find(self, purpose: str, name: str) -> FileObject | None:
        return self.listing().folders[purpose].get(name)

    def by_id(self, file_id: str) -> FileObject:
        """Any live id, even one created a moment ago by someone else."""
        file = self.listing().by_id.get(file_id)
        if file is not None:
            return file
        if not is_file_id(file_id):
            raise NotFound(file_id)
        return self.service.retrieve(file_id)

    def names(self, purpose: str) -> list[tuple[str, FileObject]]:
        return list(self.listing().folders[purpose].items())

    def ids(self) -> list[FileObject]:
        return list(self.listing().by_id.values())

    def index(self) -> bytes:
        """``index.jsonl``: one OpenAI file object per line, with its path in the mount."""
        listing = self.listing()
        cached = self._index
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        generation = self._generation
        lines = []
        for file in listing.files():
            entry = file.to_openai()
            where = listing.path_of.get(file.id)
            entry["path"] = f"{where[0]}/{where[1]}" if where else f"{BY_ID}/{file.id}"
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        content = "".join(lines).encode("utf-8", "surrogateescape")
        self._index = (generation, content)
        return content

