"""The uploader: a bounded pool of workers that brings each local path in line with the store.

Every trigger (a close event, a move, a settle timer, a scan at start) becomes one call to
``submit(path)``; a path is never worked on by two workers at once, and a path submitted while it is
being worked on is looked at again afterwards. The work on one path (``_sync_once``) is idempotent,
so a crash, a restart or a duplicate event can only repeat checks, never uploads:

* a pending id left by an interrupted upload is resolved first (promoted if its row exists, its
  leftover object removed if not), then a replaced id still waiting is deleted; the journal is this
  host's, so a pending id is always one this host's daemon chose, never another host's upload;
* a file whose size and mtime match the journal is unchanged; one with the same size and sha256 was
  only touched; anything else is uploaded under a new id which then replaces the old one;
* a missing file forgets its entry, and deletes its id only in ``delete`` mode;
* an unchanged file's ``user.openai.file_id`` is made to say the registered id: a crash between
  registering an upload and writing the xattr, or a restart that found the upload registered,
  left the previous id there (or none).

Storage errors are retried with exponential backoff, on timers so that a long outage does not hold
the workers (files that land meanwhile still get their first attempt); after ``max_retries`` the failure is kept in
the journal (state ``failed``) and shown by ``/v1/status``; the next scan tries again.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import heapq
import logging
import os
import stat
import threading
import time
from pathlib import Path

from ..errors import BucketNotFound, NotFound, S3FilesError, StorageError
from .journal import DONE, Journal

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
XATTR = "user.openai.file_id"
WRITING_FORGET = 60.0  # a write seen this long ago without a close no longer blocks settle uploads


class _Interrupted(Exception):
    """The upload was stopped on purpose (daemon stopping, or the file changed under it)."""


class Uploader:
    def __init__(self, service, journal: Journal, root: Path, *, settle: float = 2.0, workers: int = 4,
                 max_retries: int = 8, delete: bool = False, retry_base: float = 0.5, retry_cap: float = 30.0):
        self.service = service
        self.journal = journal
        self.root = Path(root)
        self.settle = settle
        self.workers = workers
        self.max_retries = max_retries
        self.delete = delete
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        mutex = threading.Lock()
        self._lock = threading.Condition(mutex)  # workers wait on it for work
        self._timer_wakeup = threading.Condition(mutex)  # the timer thread on this one, so no wakeup is lost
        self._queue: collections.deque[str] = collections.deque()
        self._queued: dict[str, bool] = {}  # path -> confirmed complete (a close or a move was seen)
        self._again: dict[str, bool] = {}  # submitted while in flight
        self._in_flight: dict[str, dict] = {}
        self._later: list[tuple[float, str, bool]] = []  # (monotonic due, path, confirmed): timers
        self._attempts: dict[str, int] = {}  # path -> failed attempts so far (retries are timers too)
        self._writing: dict[str, float] = {}  # path -> when a write was seen without its close
        self._synced: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) just registered
        self._failures: collections.deque[dict] = collections.deque(maxlen=50)
        self.stats: collections.Counter[str] = collections.Counter()
        self.last_sync: float | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"upload-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        timer = threading.Thread(target=self._timers, name="settle-timers", daemon=True)
        timer.start()
        self._threads.append(timer)

    def stop(self, grace: float = 10.0) -> bool:
        """Stop taking work; in-flight uploads finish or abort. True if every worker ended in time."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
            self._timer_wakeup.notify_all()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    # --- triggers ----------------------------------------------------------------------------

    def submit(self, path: str, confirmed: bool = False) -> None:
        """Look at ``path`` (``purpose/name``) soon. ``confirmed``: the writer closed it or moved it in."""
        with self._lock:
            if confirmed:
                self._writing.pop(path, None)
            if path in self._in_flight:
                self._again[path] = self._again.get(path, False) or confirmed
            elif path in self._queued:
                self._queued[path] = self._queued[path] or confirmed
            else:
                self._queued[path] = confirmed
                self._queue.append(path)
                self._lock.notify()

    def note_write(self, path: str) -> None:
        """A write without a close yet (inotify): settle timers must wait for the close."""
        try:
            st = os.stat(self.root / path)
        except OSError:
            return
        with self._lock:
            # Our own xattr and chmod/touch show up as "modified" too; they change no content.
            if self._synced.get(path) == (st.st_size, st.st_mtime_ns):
                return
            self._writing[path] = time.monotonic()

    def _later_submit(self, path: str, delay: float, confirmed: bool = False) -> None:
        with self._lock:
            heapq.heappush(self._later, (time.monotonic() + delay, path, confirmed))
            self._timer_wakeup.notify()

    # --- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "queue_length": len(self._queue),
                "waiting_to_settle": sum(1 for _, path, _ in self._later if path not in self._attempts),
                "retrying": sorted(self._attempts),
                "in_flight": [dict(info) for info in self._in_flight.values()],
                "recent_failures": list(self._failures),
                "this_run": dict(self.stats),
                "last_sync_at": None if self.last_sync is None else int(self.last_sync),
            }

    def depth(self) -> int:
        """Files queued or uploading now: the upload queue gauge."""
        with self._lock:
            return len(self._queue) + len(self._in_flight)

    def idle(self) -> bool:
        with self._lock:
            return not (self._queue or self._in_flight or self._later)

    # --- workers -----------------------------------------------------------------------------

    def _timers(self) -> None:
        while not self._stopping.is_set():
            due = []
            with self._lock:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    due.append(heapq.heappop(self._later)[1:])
                if not due:
                    timeout = self._later[0][0] - now if self._later else None
                    self._timer_wakeup.wait(timeout)
                    continue
            for path, confirmed in due:
                self.submit(path, confirmed)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping.is_set():
                    self._lock.wait()
                if self._stopping.is_set():
                    return
                path = self._queue.popleft()
                confirmed = self._queued.pop(path)
                self._in_flight[path] = {"path": path, "started_at": int(time.time()), "state": "checking"}
            try:
                self._sync(path, confirmed)
            except Exception:  # a bug must not kill the worker; the next scan retries the path
                log.exception("unexpected error while syncing %s", path)
            finally:
                with self._lock:
                    del self._in_flight[path]
                    if path in self._again and not self._stopping.is_set():
                        self._queued[path] = self._again.pop(path)
                        self._queue.append(path)
                        self._lock.notify()

    def _sync(self, path: str, confirmed: bool) -> None:
        """One attempt; a storage failure is retried later by the timer, so the worker is free."""
        purpose = path.split("/", 1)[0]
        try:
            self._sync_once(path, confirmed)
        except StorageError as exc:
            with self._lock:
                attempts = self._attempts[path] = self._attempts.get(path, 0) + 1
            final = attempts > self.max_retries
            if isinstance(exc, BucketNotFound):
                self.service.recheck_storage()  # with auto_create_bucket it comes back
            self._failed(path, purpose, attempts, exc.message, final)
            if final:
                with self._lock:
                    self._attempts.pop(path, None)
            else:
                self._later_submit(path, min(self.retry_cap, self.retry_base * 2 ** (attempts - 1)), confirmed)
        except S3FilesError as exc:  # the user's to fix (a bad name, missing credentials)
            with self._lock:
                attempts = self._attempts.pop(path, 0) + 1
            self._failed(path, purpose, attempts, exc.message, True)
        else:
            with self._lock:
                self._attempts.pop(path, None)

    def _failed(self, path: str, purpose: str, attempts: int, message: str, final: bool) -> None:
        log.warning("upload of %s failed (attempt %d%s): %s", path, attempts, ", giving up" if final else "", message)
        with self._lock:
            self._failures.append({"path": path, "error": message, "attempts": attempts,
                                   "final": final, "at": int(time.time())})
            self.stats["failed_attempts"] += 1
        try:
            self.journal.attempt_failed(path, purpose, attempts, message, final)
        except S3FilesError as exc:  # the database itself may be what fails
            log.warning("cannot record the failure of %s: %s", path, exc.message)

    # --- one path ----------------------------------------------------------------------------

    def _sync_once(self, path: str, confirmed: bool) -> None:
        entry = self.journal.get(path)
        if entry and entry.pending_id:
            self._resolve_pending(entry)
            entry = self.journal.get(path)
        if entry and entry.old_id:
            self._delete_id(entry.old_id)
            self.journal.replaced_deleted(path)
        local = self.root / path
        try:
            st = os.lstat(local)
        except FileNotFoundError:
            self._removed(path, entry)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        if entry and entry.matches(st.st_size, st.st_mtime_ns):
            if entry.state != DONE:
                self.journal.settled(path)
            self._label(path, local, st, entry.file_id)
            return
        if not confirmed and not self._settled(path, st):
            return
        if entry and entry.sha256 and entry.size == st.st_size and _sha256(local) == entry.sha256:
            self.journal.touched(path, st.st_mtime_ns)
            self.stats["touched"] += 1
            self._label(path, local, st, entry.file_id)
            return
        self._upload(path, local, st, entry)

    def _settled(self, path: str, st: os.stat_result) -> bool:
        """No close was seen: upload only once the file has been left alone for ``settle`` seconds."""
        with self._lock:
            seen = self._writing.get(path)
            if seen is not None and time.monotonic() - seen < WRITING_FORGET:
                return False  # inotify saw a write; its close event will come and confirm
        # ctime moves on every write, truncate, rename and utime, and cannot be set back.
        age = time.time() - st.st_ctime_ns / 1e9
        if age < self.settle:
            self._later_submit(path, self.settle - age + 0.05)
            return False
        return True

    def _upload(self, path: str, local: Path, st: os.stat_result, entry) -> None:
        purpose, name = path.split("/", 1)
        pending = self.service.begin(name, purpose)
        self.journal.begin_upload(path, purpose, pending.id, st.st_size, st.st_mtime_ns)
        with self._lock:
            self._in_flight[path].update(state="uploading", id=pending.id, bytes=st.st_size)
        try:
            digest = hashlib.sha256()
            with open(local, "rb") as body:
                while chunk := body.read(CHUNK):
                    if self._stopping.is_set():
                        raise _Interrupted("stopping")
                    digest.update(chunk)
                    pending.write(chunk)
            after = os.stat(local)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise _Interrupted("changed while uploading")
            self.journal.pending_content(path, digest.hexdigest())
            pending.commit()
        except (_Interrupted, OSError) as exc:
            # Nothing was committed: drop the pending id now. A changed file is looked at again.
            pending.abort()
            self.journal.drop_pending(path)
            log.info("upload of %s abandoned: %s", path, exc)
            if not self._stopping.is_set():
                self.submit(path)
            return
        except BaseException:
            # The commit may have reached the server: keep the pending id for the next attempt.
            pending.abort()
            raise
        committed = self.journal.get(path)
        assert committed is not None  # begin_upload wrote it; one worker at a time has a path
        self.journal.promote(committed)
        self._label(path, local, st, pending.id)  # first: a crash from here on leaves it right
        replaced = entry.file_id if entry and entry.file_id else None
        if replaced and replaced != pending.id:
            self._delete_id(replaced)
            self.journal.replaced_deleted(path)
            self.stats["replaced"] += 1
        self.stats["uploaded"] += 1
        self.last_sync = time.time()
        log.info("uploaded %s as %s", path, pending.id)

    def _label(self, path: str, local: Path, st: os.stat_result, file_id: str | None) -> None:
        """Make ``local``'s xattr say ``file_id`` (its content as registered, ``st``).

        Read first and written only when it differs: every rescan passes here for every file, and
        each write (even of the same value) comes back as an attribute event and may move the ctime.
        """
        if file_id is None:  # nothing registered yet (an entry only ever gets one with its content)
            return
        with self._lock:
            # Our own xattr write changes no content: its events must not count as a write.
            self._synced[path] = (st.st_size, st.st_mtime_ns)
        try:
            if os.getxattr(local, XATTR) == file_id.encode():
                return
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # no user xattrs here, or the file just went
                _log_xattr_failure(local, exc)
                return
        _set_xattr(local, file_id)

    def _resolve_pending(self, entry) -> None:
        try:
            self.service.retrieve(entry.pending_id)
        except NotFound:
            self.service.abandon(entry.pending_id)  # a body or the parts of an upload the crash cut off
            self.journal.drop_pending(entry.path)
            return
        self.journal.promote(entry)
        self.stats["recovered"] += 1
        log.info("upload of %s as %s had completed before a restart", entry.path, entry.pending_id)

    def _removed(self, path: str, entry) -> None:
        with self._lock:
            self._writing.pop(path, None)
            self._synced.pop(path, None)
        if entry is None:
            return
        if self.delete and entry.file_id:
            self._delete_id(entry.file_id)
            self.stats["deleted"] += 1
            log.info("deleted %s: %s was removed", entry.file_id, path)
        self.journal.forget(path)
        self.last_sync = time.time()

    def _delete_id(self, file_id: str) -> None:
        try:
            self.service.delete(file_id)
        except NotFound:
            pass


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as body:
            while chunk := body.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _set_xattr(path: Path, file_id: str) -> None:
    try:
        os.setxattr(path, XATTR, file_id.encode())
    except OSError as exc:
        _log_xattr_failure(path, exc)


def _log_xattr_failure(path: Path, exc: OSError) -> None:
    # tmpfs on old kernels, some network filesystems and FAT have no user xattrs.
    level = logging.DEBUG if exc.errno in (errno.EOPNOTSUPP, errno.EPERM, errno.ENOENT) else logging.INFO
    log.log(level, "cannot set %s on %s: %s", XATTR, path, exc)
