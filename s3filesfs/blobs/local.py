"""The embedded default store: object bodies as files in a local directory.

Layout under the root: ``objects/<key>`` holds the body, ``meta/<key>.json`` the metadata that S3
would keep as ``x-amz-meta-*``, and ``tmp/`` the bodies being written. A body is written to
``tmp/``, flushed to disk and renamed into ``objects/`` on commit, so a reader never sees half an
object and a crash leaves only litter in ``tmp/``, swept on start once it is a day old (younger
files may belong to another process writing right now).
"""

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .. import metrics
from ..errors import BlobMissing, StorageError
from . import BlobInfo, BlobStore, BlobWriter

READ_CHUNK = 1024 * 1024
STALE_TMP_SECONDS = 24 * 3600


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = f"local:{self.root}"
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"

    def ensure_ready(self) -> None:
        try:
            for folder in (self._objects, self._meta, self._tmp):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create the local store at {self.root}: {exc}") from exc
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in os.scandir(self._tmp):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def _path(self, key: str) -> Path:
        # Keys are file ids (optionally under a prefix); refuse anything that could climb out.
        if not key or "/" in key or key.startswith("."):
            raise StorageError(f"invalid object key {key!r}")
        return self._objects / key

    def writer(self, key: str, metadata: dict[str, str]) -> BlobWriter:
        return _LocalWriter(self, key, dict(metadata))

    def read(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as body:
                body.seek(offset)
                data = body.read(length)
        except FileNotFoundError:
            raise BlobMissing(f"object {key} is missing") from None
        metrics.read(len(data))
        return data

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            body = open(self._path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(f"object {key} is missing") from None
        # Opened eagerly so a missing object fails at the call, not at the first chunk.
        metrics.READS.inc()
        return self._chunks(body, start, end)

    @staticmethod
    def _chunks(body, start: int, end: int | None) -> Iterator[bytes]:
        with body:
            body.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = body.read(size)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                metrics.BYTES_READ.inc(len(chunk))
                yield chunk

    def head(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        try:
            metadata = json.loads((self._meta / f"{key}.json").read_text())
        except (FileNotFoundError, ValueError):
            metadata = {}
        return BlobInfo(key, st.st_size, metadata, st.st_mtime)

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._meta / f"{key}.json"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def abort_unfinished(self, key: str) -> int:
        """The body files of writers of ``key`` that died (``tmp/<key>.*``), before the sweep."""
        self._path(key)  # the same check on the key as everywhere else
        removed = 0
        for path in self._tmp.glob(f"{key}.*"):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def keys(self) -> Iterator[BlobInfo]:
        try:
            entries = os.scandir(self._objects)
        except FileNotFoundError:
            return
        with entries:  # read as it goes, never the whole folder at once
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while we listed
                yield BlobInfo(entry.name, st.st_size, modified=st.st_mtime)


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore, key: str, metadata: dict[str, str]):
        self._store = store
        self._target = store._path(key)
        self._key = key
        self._metadata = metadata
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix=f"{key}.")
        self._tmp_path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._size = 0

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise StorageError(f"writing to the local store failed: {exc}") from exc
        self._size += len(data)

    def commit(self) -> int:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            meta_path = self._store._meta / f"{self._key}.json"
            meta_path.write_text(json.dumps(self._metadata))
            os.replace(self._tmp_path, self._target)
        except OSError as exc:
            self.abort()
            raise StorageError(f"writing to the local store failed: {exc}") from exc
        return self._size

    def abort(self) -> bool:
        if not self._file.closed:
            self._file.close()
        try:
            self._tmp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
