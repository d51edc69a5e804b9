"""Write-back: uploads that run behind ``close()``, many at a time, with retries.

In write-back mode (``mount --write-back``, config ``mount.write_back``) a writer's close makes its
data durable in staging (fsync) and returns; the file is registered here, in the background, once
its last handle is gone. The integrity rules do not change: only what a close covered is ever
uploaded, and a crash or an outage loses no closed file: its record says "closed" (complete), so
the next mount start uploads it again (``resume``). What still fails after the retries is left
*failed* for ``s3filesfs retry`` and the log. The price: an upload's failure reaches ``status`` and
the log, not the ``close()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import S3FilesError, StorageError
from ..files import FileService
from .records import retry
from .staging import StagedFile

log = logging.getLogger(__name__)

WORKERS = 16  # uploads at once: small files are round trips, not bandwidth
ATTEMPTS = 6
FIRST_DELAY = 1.0  # seconds before the second attempt; doubled each time, at most MAX_DELAY
MAX_DELAY = 30.0


class WriteBack:
    def __init__(self, done: Callable[[StagedFile], None]):
        """``done(staged)`` is called after each upload, whatever its outcome (the core settles it)."""
        self._done = done
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="write-back")
        self._lock = threading.Lock()
        self._pending: dict[str, StagedFile] = {}  # token -> file queued or uploading
        self._waiting: set[str] = set()  # tokens between two attempts: a stop does not wait for them
        self._stopping = threading.Event()

    def submit(self, staged: StagedFile) -> None:
        with self._lock:
            if staged.token in self._pending:
                return
            self._pending[staged.token] = staged
        self._pool.submit(self._upload, staged)

    def pending(self) -> list[str]:
        """Files queued or being uploaded (not those waiting to try again: the store is failing,
        and a stop leaves them for the next mount rather than wait on it)."""
        with self._lock:
            return [f"{s.purpose}/{s.filename}" for token, s in self._pending.items() if token not in self._waiting]

    def _upload(self, staged: StagedFile) -> None:
        try:
            delay = FIRST_DELAY
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    staged.upload_when_idle()
                    return
                except StorageError as exc:
                    last = attempt == ATTEMPTS or self._stopping.is_set()
                    log.warning("background upload of %s/%s failed (attempt %d of %d%s): %s", staged.purpose,
                                staged.filename, attempt, ATTEMPTS, ", kept for `s3filesfs retry`" if last else "",
                                exc.message)
                    if last:
                        return
                    with self._lock:
                        self._waiting.add(staged.token)
                    self._stopping.wait(delay)
                    with self._lock:
                        self._waiting.discard(staged.token)
                    if self._stopping.is_set():
                        return  # the mount is stopping: the file waits, closed, for the next one
                    delay = min(MAX_DELAY, delay * 2)
                except S3FilesError as exc:  # not the store's fault: trying again will not help
                    log.warning("background upload of %s/%s refused, kept for `s3filesfs retry`: %s",
                                staged.purpose, staged.filename, exc.message)
                    return
        finally:
            with self._lock:
                self._pending.pop(staged.token, None)
                self._waiting.discard(staged.token)
            self._done(staged)

    def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for what is queued; then stop retrying (what is left waits
        for the next mount or `retry`)."""
        deadline = time.monotonic() + grace
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def resume(service: FileService, folder: Path) -> None:
    """Upload what an earlier mount closed but did not get registered (complete files only)."""
    try:
        registered, failing = retry(service, folder)
    except S3FilesError as exc:
        log.warning("closed files from an earlier mount not uploaded yet (`s3filesfs retry`): %s", exc.message)
        return
    for file in registered:
        log.info("uploaded %s/%s, closed before the mount stopped, as %s", file.purpose, file.filename, file.id)
    for record, error in failing:
        log.warning("%s/%s from an earlier mount still fails, kept for `s3filesfs retry`: %s", record.purpose,
                    record.filename, error.message)

