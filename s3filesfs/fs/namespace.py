"""Paths <-> files: what the mount shows, and how a path names a file.

The tree is ``/<purpose>/<name>``, ``/by-id/<file-id>`` and ``/index.jsonl``. Names come from the
table, shown under two documented rules:

* **Duplicates**: in one purpose, the oldest file by ``(created_at, id)`` shows under its plain
  name; each other file with that name shows as ``<stem> (<file-id>)<ext>``.
* **Safe form**: ``/`` is shown as ``／`` (U+FF0F) and NUL as ``␀`` (U+2400); a name that is empty,
  ``.``, ``..`` or over 255 bytes is shown as the bare file id.

Nothing here holds the table. ``Namespace`` answers each lookup with one or two indexed queries
(the rows a shown name may stand for, oldest first), keeps the files it found in a bounded cache,
and lists a folder (or ``by-id/``, or ``index.jsonl``) by streaming its rows page by page. Only the
rows whose shown name may differ from their filename (duplicates and names a path cannot hold:
``MetadataStore.unusual``) are named up front; every other row shows as its filename.

The cache is kept fresh by the store's change feed (``metadata.feed``): a follower thread takes
each round of changed file ids, forgets what it cached about them, and tells the mount which
paths the kernel must forget too. The mount's own changes are applied at once, so a writer sees
its file without waiting for a round. Rows of writers without the feed (a Llama Stack server) are
found by the feed's query on ``created_at``; cached rows are also looked up again after
``CACHE_SECONDS``, which bounds how long a delete by such a writer can go unseen on PostgreSQL.

A name found missing is kept too, but only on a store that can say cheaply that nothing at all was
committed since (SQLite's ``data_version``, read before the query and again before each answer):
the kernel asks for a new file's name several times while ``cp`` creates it, and a file registered
a moment ago by anyone, the feed's follower not yet woken, must still show at its first lookup. On
PostgreSQL a missing name is asked again each time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import NameTooLong, NotFound, S3FilesError
from ..files import FileService
from ..model import NAME_MAX_BYTES, FileObject, is_file_id

log = logging.getLogger(__name__)

BY_ID = "by-id"
INDEX = "index.jsonl"
# Lookups remembered (files by id, and the rows behind shown names), each kind; the oldest go first.
CACHE_ENTRIES = 50_000
# A remembered lookup is asked again after this long, whatever the feed said.
CACHE_SECONDS = 10.0
# Above this many live files, a stat of index.jsonl gives the size of the last one built instead of
# building a new one (which reads the whole table); opening it always gets a current one.
INDEX_EAGER_FILES = 50_000
# A shown name that decorates a younger duplicate: ``stem (file-…)ext``.
DECORATED = re.compile(r"(.*) \((file-[0-9a-f]{32})\)(.*)", re.DOTALL)


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


def shown_names(files: list[FileObject]) -> dict[str, str]:
    """The name each of ``files`` shows under, by id, given every file of their groups (files of
    one purpose with one safe name), oldest first.

    The oldest of a group shows its safe name; each other one its decorated name, or its bare id
    when that is some group's plain name already (a plain name always wins).
    """
    groups: dict[tuple[str, str], list[FileObject]] = {}
    for file in files:
        groups.setdefault((file.purpose, safe_name(file)), []).append(file)
    names = {}
    for (purpose, plain), members in groups.items():
        names[members[0].id] = plain
        for file in members[1:]:
            decorated = decorated_name(plain, file.id)
            names[file.id] = file.id if (purpose, decorated) in groups else decorated
    return names


def _is_text(name: str) -> bool:
    """Whether a name from the kernel is UTF-8 (undecodable bytes arrive as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _filenames_shown_as(shown: str) -> tuple[list[str], str | None]:
    """The filenames that may show as ``shown`` (the safe form undone), and the form to compare
    with filenames whose every ``/`` is written ``／`` (for a name that mixes the two)."""
    raw = shown.replace("\uff0f", "/").replace("\u2400", "\0")
    filenames = [shown] if raw == shown else [shown, raw]
    return filenames, (shown if "\uff0f" in shown else None)


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


class _Lru(OrderedDict):
    """A bounded map whose entries remember when they were stored."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def fresh(self, key, now: float):
        """``(True, value)`` for an entry younger than ``CACHE_SECONDS``, else ``(False, None)``."""
        entry = self.get(key)
        if entry is None or now - entry[1] >= CACHE_SECONDS:
            return False, None
        self.move_to_end(key)
        return True, entry[0]

    def store(self, key, value, now: float) -> None:
        self[key] = (value, now)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.drop(next(iter(self)))

    def drop(self, key) -> None:
        self.pop(key, None)


class _Groups(_Lru):
    """The cached groups, ``(purpose, safe name) -> files``, and which group holds each file id,
    so that a change to one file finds its group without a scan."""

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.holding: dict[str, tuple[str, str]] = {}

    def store(self, key, value, now: float) -> None:
        self.drop(key)
        for file in value:
            self.holding[file.id] = key
        super().store(key, value, now)

    def drop(self, key) -> None:
        entry = self.pop(key, None)
        for file in entry[0] if entry is not None else ():
            if self.holding.get(file.id) == key:
                del self.holding[file.id]

    def holding_file(self, file_id: str) -> tuple[FileObject, ...]:
        """The members of the cached group that holds ``file_id`` (none if no group does)."""
        key = self.holding.get(file_id)
        entry = self.get(key) if key is not None else None
        return entry[0] if entry is not None else ()

    def clear(self) -> None:
        super().clear()
        self.holding.clear()


class Namespace:
    """The mount's view of the table: lookups by shown name and by id, streamed listings, and the
    change feed's follower that keeps the cache (and the kernel's) fresh. See the module's doc."""

    def __init__(self, service: FileService, refresh_seconds: float = 1.0, scratch_dir: str | None = None,
                 cache_entries: int = CACHE_ENTRIES):
        self.service = service
        self.purposes = service.purposes
        self.refresh_seconds = refresh_seconds
        self.scratch_dir = scratch_dir
        self.on_change: Callable[[list[str]], None] = lambda paths: None  # the mount tells the kernel
        self._lock = threading.Lock()
        self._files = _Lru(cache_entries)  # id -> FileObject
        self._groups = _Groups(cache_entries)  # (purpose, safe name) -> files, oldest first
        self._absent = _Lru(cache_entries)  # (purpose, safe name) -> the change token it was missing at
        self._generation = 0  # counts every change seen, ours or a round of the feed
        self._index: tuple[int, float, float, object, int] | None = None  # generation, built, stale at, file, size
        self._stopping = threading.Event()

    # --- cached queries ------------------------------------------------------------------------

    def _file(self, file_id: str) -> FileObject | None:
        now = time.monotonic()
        with self._lock:
            known, file = self._files.fresh(file_id, now)
            generation = self._generation
        if known:
            return None if file.is_expired(time.time()) else file
        file = self.service.live(file_id)
        with self._lock:
            # Only what exists is kept: an id that is not there is asked again each time (one cheap
            # query; unlike a new file's name, nothing asks for a missing id over and over).
            if file is not None and generation == self._generation:  # nothing changed while we asked
                self._files.store(file_id, file, now)
        return file

    def _group(self, purpose: str, plain: str) -> list[FileObject]:
        """The live files of ``purpose`` whose safe name is ``plain``, oldest first."""
        now = time.monotonic()
        key = (purpose, plain)
        with self._lock:
            known, files = self._groups.fresh(key, now)
            generation = self._generation
            missing, missing_at = self._absent.fresh(key, now)
        if known:
            clock = time.time()
            return [file for file in files if not file.is_expired(clock)]
        token = self.service.change_token()  # before the query: a commit after it moves the token
        if missing and token is not None and token == missing_at:
            return []  # nobody committed anything since it was found missing
        filenames, slash_form = _filenames_shown_as(plain)
        found = self.service.named(purpose, filenames, plain if is_file_id(plain) else None, slash_form)
        files = [file for file in found if safe_name(file) == plain]
        with self._lock:
            if generation == self._generation:  # nothing changed while we asked
                if files:
                    self._groups.store(key, tuple(files), now)
                elif token is not None:
                    self._absent.store(key, token, now)
        return files

    def _shown_name(self, file: FileObject) -> str:
        """The name ``file`` shows under in its folder (see ``shown_names``)."""
        plain = safe_name(file)
        group = self._group(file.purpose, plain)
        if not group or group[0].id == file.id:
            return plain
        decorated = decorated_name(plain, file.id)
        if decorated != file.id and self._group(file.purpose, decorated):
            return file.id
        return decorated

    # --- the mount's own changes, and the feed's ---------------------------------------------

    def _forget(self, files: list[FileObject | None], file_ids: list[str]) -> None:
        """Drop what is cached about ``file_ids`` (the files, and the groups holding them) and about
        the groups of ``files`` (their old and new names)."""
        with self._lock:
            self._generation += 1
            self._absent.clear()
            for file_id in file_ids:
                cached = self._files.pop(file_id, None)
                if cached is not None:
                    files = [*files, cached[0]]  # its group as it was
                held = self._groups.holding.get(file_id)
                if held is not None:
                    self._groups.drop(held)
            for file in files:
                if file is not None:
                    self._groups.drop((file.purpose, safe_name(file)))

    def added(self, file: FileObject) -> None:
        self._forget([file], [file.id])

    def removed(self, file_id: str) -> None:
        self._forget([], [file_id])

    def renamed(self, file: FileObject) -> None:
        self._forget([file], [file.id])

    def apply(self, file_ids: set[str], everything: bool = False) -> list[str]:
        """Take in one round of the change feed; returns the mount paths whose kernel entries are
        stale (the old and new names of each file, and of the duplicates that moved with it)."""
        if everything:
            with self._lock:
                self._generation += 1
                self._files.clear()
                self._groups.clear()
                self._absent.clear()
        paths = [INDEX]
        for file_id in file_ids:
            new = self.service.live(file_id)
            with self._lock:
                cached = self._files.get(file_id)
                held = self._groups.holding_file(file_id)
            # Every file whose shown name may move: this one as it was and is, and the duplicates
            # it shared a name with (one of them may now take the plain name).
            before = {f.id: f for f in held}
            if cached is not None:
                before[file_id] = cached[0]
            self._forget([*before.values(), new], [file_id])
            paths.append(f"{BY_ID}/{file_id}")
            for file in [*before.values(), *([new] if new is not None else [])]:
                if file.purpose in self.purposes:
                    plain = safe_name(file)
                    paths += [f"{file.purpose}/{plain}", f"{file.purpose}/{decorated_name(plain, file.id)}",
                              f"{file.purpose}/{file.id}"]
        return list(dict.fromkeys(paths))

    def follow(self) -> threading.Thread:
        """Start following the change feed in a thread of its own (ended by ``stop``)."""
        feed = self.service.follow_changes(self.refresh_seconds)

        def loop() -> None:
            while not self._stopping.is_set():
                feed.wait()
                if self._stopping.is_set():
                    return
                try:
                    found = feed.next_round()
                    if found:
                        self.on_change(self.apply(found.file_ids, found.everything))
                except S3FilesError as exc:  # the store is away: try again next round
                    log.debug("following changes: %s", exc)
                    self._stopping.wait(self.refresh_seconds)

        thread = threading.Thread(target=loop, name="change-feed", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()

    # --- lookups -----------------------------------------------------------------------------

    def lookup(self, purpose: str, name: str) -> FileObject:
        file = self.find(purpose, name)
        if file is None:
            raise NotFound(f"{purpose}/{name}")
        return file

    def find(self, purpose: str, name: str) -> FileObject | None:
        if not _is_text(name):
            return None  # the table holds text: no file has this name (and the database could not take it)
        group = self._group(purpose, name)
        if group:
            return group[0]
        decorated = DECORATED.fullmatch(name)
        file_id = decorated.group(2) if decorated else (name if is_file_id(name) else None)
        if file_id is None:
            return None
        file = self._file(file_id)
        if file is None or file.purpose != purpose or self._shown_name(file) != name:
            return None
        return file

    def by_id(self, file_id: str) -> FileObject:
        """Any live id, even one created a moment ago by someone else."""
        file = self._file(file_id) if is_file_id(file_id) else None
        if file is None:
            raise NotFound(file_id)
        return file

    # --- listings: streamed, never held whole --------------------------------------------------

    def names(self, purpose: str) -> Iterator[tuple[str, FileObject]]:
        """``(shown name, file)`` of every live file of ``purpose``, oldest first."""
        exceptions = shown_names(self.service.unusual(purpose))
        for file in self.service.iter_all(purpose):
            yield exceptions.get(file.id, file.filename), file

    def ids(self) -> Iterator[FileObject]:
        return self.service.iter_all()

    def index_size(self) -> int:
        """What a stat of ``index.jsonl`` shows: the size of a current one, except on a store too
        large to read whole for a stat (see ``INDEX_EAGER_FILES``)."""
        with self._lock:
            cached = self._index
        if cached is not None and cached[0] == self._generation and time.time() < cached[2]:
            return cached[4]
        if self.service.count() > INDEX_EAGER_FILES:
            return 0 if cached is None else cached[4]
        return self.index()[1]

    def index(self):
        """``index.jsonl``, as ``(file, size)``: a read-only file with one OpenAI file object per
        line and its path in the mount, oldest first. Written to a scratch file (never held in
        memory) when something changed since the last one; an open handle keeps the one it opened."""
        with self._lock:
            cached = self._index
            generation = self._generation
        now = time.monotonic()
        if cached is not None and cached[0] == generation and now - cached[1] < CACHE_SECONDS \
                and time.time() < cached[2]:
            return cached[3], cached[4]
        exceptions = shown_names(self.service.unusual())
        out = tempfile.TemporaryFile(dir=self.scratch_dir, prefix="index-")
        size = 0
        first_expiry = float("inf")  # the index is stale once its first file expires
        for file in self.service.iter_all():
            if file.expires_at is not None:
                first_expiry = min(first_expiry, file.expires_at)
            entry = file.to_openai()
            if file.purpose in self.purposes:
                entry["path"] = f"{file.purpose}/{exceptions.get(file.id, file.filename)}"
            else:
                entry["path"] = f"{BY_ID}/{file.id}"
            size += out.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape"))
        out.flush()
        with self._lock:
            if self._generation == generation:
                self._index = (generation, now, first_expiry, out, size)
        return out, size
