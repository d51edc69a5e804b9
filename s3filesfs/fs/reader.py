"""Reading committed files through the mount: one streamed GET per sequential run, read ahead.

A sequential reader (``cat``, ``cp`` out, pandas scanning a CSV) is served from a single streamed
GET that a background thread reads up to ``WINDOW`` bytes ahead of it, so the store is read while
the kernel consumes, with one request per file instead of one per range. A read that jumps
elsewhere is one exact ranged GET; if reading then goes on from there, a new stream starts at that
point. Memory per open file is bounded by ``WINDOW`` plus ``KEEP_BEHIND``, whatever the file size.
"""

from __future__ import annotations

import collections
import threading

from ..errors import S3FilesError, internal_error
from ..files import FileService
from ..model import FileObject

WINDOW = 16 * 1024 * 1024  # read ahead of the reader at most this much
KEEP_BEHIND = 1024 * 1024  # the kernel may ask again just behind the front; keep that much
MIN_RANDOM_READ = 128 * 1024


class _Stream:
    """One GET from ``start`` to the end of the file, fetched ahead by its own thread."""

    def __init__(self, service: FileService, file: FileObject, start: int):
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self.start = start  # offset of the first byte still held
        self.end = start  # offset just past the last byte received
        self._front = start  # where the reader is: the window is measured from here
        self._error: BaseException | None = None
        self._done = False
        self._closed = False
        thread = threading.Thread(target=self._fetch, args=(service, file, start), daemon=True,
                                  name=f"read-{file.id[-6:]}")
        thread.start()

    def _fetch(self, service: FileService, file: FileObject, start: int) -> None:
        chunks = None
        try:
            _, chunks = service.content(file.id, start)
            for chunk in chunks:
                with self._cond:
                    while self.end - self._front >= WINDOW and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._chunks.append(chunk)
                    self.end += len(chunk)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            with self._cond:
                self._error = exc
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                chunks.close()  # releases the HTTP connection of a stream given up early
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def read(self, offset: int, size: int) -> bytes | None:
        """Bytes ``offset..offset+size`` (fewer at the end of the file), or None if this stream
        cannot serve them (behind what it holds, or too far ahead)."""
        with self._cond:
            if offset < self.start or offset > self.end + WINDOW:
                return None
            self._front = max(self._front, offset)
            self._forget_before(offset - KEEP_BEHIND)
            while self.end < offset + size and not self._done:
                self._cond.wait()
            if self._error is not None and self.end < offset + size:
                error = self._error
                raise error if isinstance(error, S3FilesError) else internal_error(error)
            return self._slice(offset, min(offset + size, self.end))

    def _forget_before(self, offset: int) -> None:
        while self._chunks and self.start + len(self._chunks[0]) <= offset:
            self.start += len(self._chunks.popleft())
            self._cond.notify_all()  # room in the window

    def _slice(self, begin: int, stop: int) -> bytes:
        pieces, position = [], self.start
        for chunk in self._chunks:
            chunk_end = position + len(chunk)
            if chunk_end > begin and position < stop:
                pieces.append(chunk[max(begin - position, 0):stop - position])
            if chunk_end >= stop:
                break
            position = chunk_end
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._cond.notify_all()


class Reader:
    def __init__(self, service: FileService, file: FileObject):
        self.service = service
        self.file = file
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._next_offset = 0  # where a sequential reader reads next

    def read(self, size: int, offset: int) -> bytes:
        total = self.file.bytes
        if offset >= total or size <= 0:
            return b""
        size = min(size, total - offset)
        with self._lock:
            stream = self._stream
            sequential = offset == self._next_offset
            self._next_offset = offset + size
            if stream is None and sequential:
                stream = self._stream = _Stream(self.service, self.file, offset)
        if stream is not None:
            data = stream.read(offset, size)
            if data is not None:
                return data
            if sequential:  # the stream is behind or far off: start over from here
                with self._lock:
                    stream.close()
                    stream = self._stream = _Stream(self.service, self.file, offset)
                data = stream.read(offset, size)
                if data is not None:
                    return data
        # A jump: one exact GET (at least MIN_RANDOM_READ, which the kernel's next read may want).
        length = max(size, min(MIN_RANDOM_READ, total - offset))
        return self.service.read(self.file.id, offset, length)[:size]

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
