"""The watcher: turns filesystem events under the watch folder into uploader triggers.

``DIR/<purpose>/<name>`` is the only shape that is uploaded. The watcher creates the purpose
folders, observes ``DIR`` recursively with watchdog, and

* on a close after writing (inotify's ``IN_CLOSE_WRITE``) or a move into place (a browser's
  ``.crdownload`` renamed to its final name, rsync's ``.name.XXXXXX``) submits the file as complete;
* on a create or a write submits it unconfirmed: the uploader waits until it has been left alone for
  the settle time, and with inotify until its close;
* on a delete or a move away submits the old path, so the uploader forgets (or deletes) its id;
* skips temporary names, and reports files elsewhere (the root, folders that are not purposes,
  sub-folders): they are logged once and listed by ``/v1/status``, never uploaded.

``scan()`` does the same for what is on disk now: at start (reconcile) and periodically, as a net
for events a watcher can miss (an overflowing inotify queue, a network filesystem).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ..model import is_temporary_name

log = logging.getLogger(__name__)

try:  # close events exist only with inotify (Linux)
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # pragma: no cover - other platforms
    InotifyObserver = None  # type: ignore[assignment,misc]


class Watcher(FileSystemEventHandler):
    def __init__(self, root: Path, purposes: tuple[str, ...], uploader):
        self.root = Path(root)
        self.purposes = tuple(purposes)
        self.uploader = uploader
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()
        self.unsupported: dict[str, str] = {}  # relative path -> why it is not uploaded
        self._logged: set[str] = set()  # reported once in the log, not at every rescan

    @property
    def folders(self) -> list[str]:
        return [str(self.root / purpose) for purpose in self.purposes]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for purpose in self.purposes:
            (self.root / purpose).mkdir(exist_ok=True)
        observer = Observer()
        self.close_events = InotifyObserver is not None and isinstance(observer, InotifyObserver)
        observer.schedule(self, str(self.root), recursive=True)
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None

    # --- classifying paths -------------------------------------------------------------------

    def relative(self, path: str | bytes) -> str | None:
        """``purpose/name`` for an uploadable path; None (and maybe a report) for anything else."""
        path = os.fsdecode(path)
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return None
        parts = rel.parts
        if not parts or is_temporary_name(parts[-1]):
            return None
        if len(parts) == 2 and parts[0] in self.purposes:
            return f"{parts[0]}/{parts[1]}"
        return None

    def _report(self, path: str | bytes) -> None:
        path = os.fsdecode(path)
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return
        parts = rel.parts
        if not parts or is_temporary_name(parts[-1]) or not os.path.isfile(path):
            return
        if len(parts) == 1:
            why = "files at the top of the watch folder are not uploaded; put them in a purpose folder"
        elif parts[0] not in self.purposes:
            why = f"'{parts[0]}' is not a purpose folder ({', '.join(self.purposes)})"
        else:
            why = "files in sub-folders of a purpose folder are not uploaded"
        with self._lock:
            self.unsupported[str(rel)] = why
            if str(rel) in self._logged:
                return
            self._logged.add(str(rel))
        log.warning("not uploading %s: %s", rel, why)

    def reports(self) -> list[dict]:
        with self._lock:
            return [{"path": path, "reason": why} for path, why in sorted(self.unsupported.items())]

    def _forget_report(self, path: str | bytes) -> None:
        try:
            rel = str(Path(os.fsdecode(path)).relative_to(self.root))
        except ValueError:
            return
        with self._lock:
            self.unsupported.pop(rel, None)

    # --- events ------------------------------------------------------------------------------

    def on_closed(self, event: FileSystemEvent) -> None:  # IN_CLOSE_WRITE
        if not event.is_directory:
            self._changed(event.src_path, confirmed=True)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._changed(event.src_path, confirmed=False)
        else:
            self.scan_folder(Path(os.fsdecode(event.src_path)))  # a folder moved in, with files

    def on_modified(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        rel = self.relative(event.src_path)
        if rel is None:
            return
        if self.close_events:
            self.uploader.note_write(rel)  # the close will follow
        else:
            self.uploader.submit(rel)

    def on_attrib(self, event: FileSystemEvent) -> None:
        # touch, chmod, our own xattr: no content written, so no close follows; the settle rule
        # and the sha256 comparison decide whether anything needs sending.
        if not event.is_directory:
            rel = self.relative(event.src_path)
            if rel is not None:
                self.uploader.submit(rel)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.scan()  # a renamed folder: let the journal and the disk meet again
            return
        self._gone(event.src_path)
        self._changed(event.dest_path, confirmed=True)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._gone(event.src_path)

    def _changed(self, path, confirmed: bool) -> None:
        rel = self.relative(path)
        if rel is None:
            self._report(path)
        else:
            self.uploader.submit(rel, confirmed=confirmed)

    def _gone(self, path) -> None:
        self._forget_report(path)
        rel = self.relative(path)
        if rel is not None:
            self.uploader.submit(rel)

    # --- scanning ----------------------------------------------------------------------------

    def scan(self, tracked: Iterable[str] = ()) -> int:
        """Submit every file on disk and every ``tracked`` path; returns how many were submitted."""
        submitted = set(tracked)
        for known in submitted:
            self.uploader.submit(known)
        with self._lock:
            self.unsupported.clear()
        for path in self._walk(self.root):
            rel = self.relative(path)
            if rel is None:
                self._report(path)
            elif rel not in submitted:
                submitted.add(rel)
                self.uploader.submit(rel)
        return len(submitted)

    def scan_folder(self, folder: Path) -> None:
        for path in self._walk(folder):
            self._changed(path, confirmed=False)

    @staticmethod
    def _walk(folder: Path):
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                yield os.path.join(dirpath, name)
