"""Reading committed files through the mount: ranged GETs with read-ahead, in bounded memory.

A sequential reader (``cat``, ``cp`` out, pandas scanning a CSV) gets the file in ``CHUNK``-sized
ranges fetched ``AHEAD`` chunks in advance on a shared pool, so the store is read in parallel while
the kernel consumes. At most ``AHEAD + 2`` chunks per open file are held, whatever the file size.
A read that jumps elsewhere is served by one exact ranged GET and starts no read-ahead, so a tool
that seeks around (a parquet footer, ``tail``) does not pull megabytes it never looks at.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ..files import FileService
from ..model import FileObject

CHUNK = 8 * 1024 * 1024
AHEAD = 3
MIN_RANDOM_READ = 128 * 1024


class Reader:
    def __init__(self, service: FileService, file: FileObject, pool: ThreadPoolExecutor):
        self.service = service
        self.file = file
        self._pool = pool
        self._lock = threading.Lock()
        self._chunks: dict[int, Future] = {}
        self._next_offset = 0  # where a sequential reader reads next

    def read(self, size: int, offset: int) -> bytes:
        total = self.file.bytes
        if offset >= total or size <= 0:
            return b""
        end = min(offset + size, total)
        with self._lock:
            sequential = abs(offset - self._next_offset) <= CHUNK  # the kernel may reorder a little
            self._next_offset = end
            if not sequential:
                self._drop_all()
            else:
                first, last = offset // CHUNK, (end - 1) // CHUNK
                self._schedule(first, last + AHEAD)
                wanted = [self._chunks[k] for k in range(first, last + 1)]
                self._drop_before(first - 1)
        if not sequential:
            length = max(end - offset, min(MIN_RANDOM_READ, total - offset))
            return self.service.read(self.file.id, offset, length)[: end - offset]
        pieces = []
        for k, future in zip(range(offset // CHUNK, (end - 1) // CHUNK + 1), wanted):
            data = future.result()
            start = max(offset - k * CHUNK, 0)
            stop = min(end - k * CHUNK, len(data))
            pieces.append(data[start:stop])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _schedule(self, first: int, last: int) -> None:
        last = min(last, (self.file.bytes - 1) // CHUNK)
        for k in range(first, last + 1):
            if k not in self._chunks:
                start = k * CHUNK
                length = min(CHUNK, self.file.bytes - start)
                self._chunks[k] = self._pool.submit(self.service.read, self.file.id, start, length)

    def _drop_before(self, keep_from: int) -> None:
        for k in [k for k in self._chunks if k < keep_from]:
            self._chunks.pop(k).cancel()

    def _drop_all(self) -> None:
        for future in self._chunks.values():
            future.cancel()
        self._chunks.clear()

    def close(self) -> None:
        with self._lock:
            self._drop_all()
