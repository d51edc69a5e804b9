"""Reading committed files through the mount: read ahead on one stream, or on ranged GETs in
parallel where one connection is too slow, within one budget.

A ``Reader`` (one open file) keeps a few *runs*: stretches of the file being read in order. A run
begins with one small GET (``FIRST_PART``: a ``head -c 100`` or a ``file`` probe costs no more)
and, while reading goes on in order, fetches ahead of the reader: the more it has read, the further
ahead (``AHEAD_FACTOR`` times what it read, at most ``MAX_AHEAD``). A read that lands nowhere near
a run (a jump) starts a new small run there, so random reads stay exact: one GET of the bytes asked
for (at least ``FIRST_PART``).

How a run fetches ahead depends on what one connection gives. Every request costs the client and
the server a request's work, so reading ahead begins on one *stream*: a single GET from there to
the end of the file, read in order into parts of ``STREAM_PART`` as the budget has room for them
(the GET waits, unread, while it has none), at most ``STREAM_AHEAD`` ahead. Once the stream has
given ``STREAM_MEASURE``, its rate decides. At ``FAST_STREAM`` or more (a fast network: more
connections would only add requests) the run stays on it. Slower (S3 answers each request after
tens of milliseconds and sends one connection's bytes at a bounded rate; a remote link), the run
*fans out*: the parts still queued on the stream become GETs of their own, and it goes on in parts
of a ``PARTS_AHEAD``th of its distance ahead (at least ``FIRST_PART``, at most ``MAX_PART``), each
one ranged GET, several running at once. While more files are read at once than the pool can run
``PARTS_AHEAD`` GETs for each, every run reads ahead on a stream whatever its rate: more GETs in
flight cannot be had then, only more requests. A run's first part (the probe) is a GET of its own,
so a jump never opens a stream it will not use.

Two things are shared by every open file of the process, so that memory and connections do not
grow with the number of files open:

* ``ReadBudget``: the bytes that parts may hold, fetched or on their way (``mount.read_ahead_mb``).
  Reading ahead only takes what the budget has room for, and no reader more than an equal share of
  it (its parts are sized to that share); a reader whose share is used up reads ahead again as it
  reads what it holds. The part a read is waiting for is never
  refused (so nothing can deadlock on the budget): it may overshoot the budget by at most one small
  part per read in progress.
* ``Fetcher``: one pool of worker threads that runs the GETs and reads the streams, the parts a
  read is waiting for before the ones fetched ahead.

A GET that fails fails the read that needs its bytes, with the store's error (the kernel gets its
errno); the run is given up, so reading again starts afresh. A stream's GET that breaks after it
was opened (a server drops a connection left unread while its reader paused) is first opened again
once, from the part it was reading. Closing a reader cancels its queued
GETs, closes its streams and gives its budget back (a GET already running gives its part back when
it ends).
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future

from ..errors import S3FilesError, internal_error
from ..files import FileService
from ..model import FileObject

log = logging.getLogger(__name__)

KiB, MiB = 1024, 1024 * 1024
FIRST_PART = 256 * KiB  # a run's first GET: what a probe or a random read costs
MAX_PART = 8 * MiB  # parts grow up to this (the part size of boto3's download_file)
AHEAD_FACTOR = 4  # a run reads ahead this many times what it has read so far...
MAX_AHEAD = 128 * MiB  # ...up to this: 16 GETs of MAX_PART in flight
PARTS_AHEAD = 4  # ...in parts of a quarter of that (and of the reader's share): several GETs at once
FORWARD_GAP = 1 * MiB  # a read this far past a run's end still continues it (the kernel's reads overtake)
KEEP_BEHIND = 1 * MiB  # the kernel may ask again just behind the furthest read; keep that much
MAX_RUNS = 4  # runs kept per open file: interleaved sequential readers of one descriptor
STREAM_PART = 1 * MiB  # a stream's parts: the chunks its GET is read in (the stores' chunk size)
STREAM_AHEAD = 32 * MiB  # a stream fast enough to keep reads ahead further than a fan-out needs
STREAM_MEASURE = 4 * MiB  # what a stream gives before its rate decides whether the run fans out
FAST_STREAM = 200 * MiB  # bytes/s: a stream this fast is about all the mount passes to the kernel
DEFAULT_BUDGET = 96 * MiB  # mount.read_ahead_mb
WORKERS = 16  # with the upload workers (2 x upload.concurrency) fits the S3 client's 24 connections


class ReadBudget:
    """Bytes the process's read parts may hold, shared fairly by the readers that hold some."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[object, int] = {}
        self.used = 0
        self.peak = 0

    def try_take(self, owner: object, size: int) -> bool:
        """Take ``size`` bytes for ``owner`` if the budget and the owner's share have room."""
        with self._lock:
            holders = len(self._held) + (owner not in self._held)
            if self.used + size > self.limit or self._held.get(owner, 0) + size > self.limit // holders:
                return False
            self._add(owner, size)
            return True

    def share(self, owner: object) -> tuple[int, int]:
        """What ``owner`` may hold (an equal part of the budget), and among how many readers."""
        with self._lock:
            readers = len(self._held) + (owner not in self._held)
            return self.limit // readers, readers

    def take(self, owner: object, size: int) -> None:
        """Take ``size`` bytes whatever is left: for the part a read is waiting for."""
        with self._lock:
            self._add(owner, size)

    def give(self, owner: object, size: int) -> None:
        with self._lock:
            left = self._held.pop(owner) - size
            if left:
                self._held[owner] = left
            self.used -= size

    def held_by(self, owner: object) -> int:
        with self._lock:
            return self._held.get(owner, 0)

    def _add(self, owner: object, size: int) -> None:
        self._held[owner] = self._held.get(owner, 0) + size
        self.used += size
        self.peak = max(self.peak, self.used)


class Fetcher:
    """A pool of worker threads, started on first use; urgent work goes before the rest."""

    def __init__(self, workers: int = WORKERS):
        self.workers = workers
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._started = 0

    def submit(self, urgent: bool, work: Callable[[], None]) -> None:
        """Run ``work`` (which hands its own outcome on: see ``_Part.fill``) in the pool."""
        self._queue.put((0 if urgent else 1, next(self._order), work))
        with self._lock:
            if self._started < self.workers:
                self._started += 1
                threading.Thread(target=self._work, daemon=True, name=f"read-{self._started}").start()

    def _work(self) -> None:
        while True:
            _, _, work = self._queue.get()
            try:
                work()
            except Exception:  # work hands its errors to its reads; this is a bug, and the worker stays
                log.exception("a read-ahead task failed")
            # An idle worker must not keep the last part it fetched (and its bytes) alive.
            del work


_shared_lock = threading.Lock()
_shared: tuple[ReadBudget, Fetcher] | None = None


def configure(budget_bytes: int) -> None:
    """Set the process's read-ahead budget (the mount does, from ``mount.read_ahead_mb``)."""
    global _shared
    with _shared_lock:
        _shared = (ReadBudget(budget_bytes), _shared[1] if _shared else Fetcher())


def shared() -> tuple[ReadBudget, Fetcher]:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = (ReadBudget(DEFAULT_BUDGET), Fetcher())
        return _shared


class _Part:
    """The bytes ``offset..end`` of the file, once its future is done: a ranged GET's, or a
    stream's. Cancelling the future gives the part up before it is fetched."""

    __slots__ = ("offset", "end", "future")

    def __init__(self, offset: int, end: int):
        self.offset, self.end = offset, end
        self.future: Future[bytes] = Future()

    def fill(self, fetch: Callable[[int, int], bytes]) -> None:
        """Fetch the part's bytes with ``fetch(offset, length)``, unless it was given up; an error
        is handed to the read that needs these bytes."""
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(fetch(self.offset, self.end - self.offset))
            except BaseException as exc:
                self.future.set_exception(exc)


class _Stream:
    """One GET from some offset to the end of the file, read in order into the parts queued on it.

    Only its drain (one task in the pool at a time, see ``Reader._drain``) reads it; ``closed``
    says that no part will be queued any more, so the drain closes the GET when it is done."""

    def __init__(self, service: FileService, file: FileObject):
        self._service, self._file = service, file
        self._chunks: Iterator[bytes] | None = None
        self._at = 0  # the offset of the next byte the open GET gives
        self._left = b""  # what was read of the GET and not yet given to a part
        self.queued: deque[_Part] = deque()
        self.draining = False
        self.closed = False
        self.given = 0  # bytes given to parts...
        self.seconds = 0.0  # ...and the time spent waiting for them (not the time it lay unread)

    def slow(self) -> bool:
        return self.given >= STREAM_MEASURE and self.given < FAST_STREAM * self.seconds

    def read(self, offset: int, length: int) -> bytes:
        """The bytes ``offset..offset+length`` from the open GET (opened, or opened again, there)."""
        was_open = self._chunks is not None and self._at == offset
        if not was_open:
            self._open(offset)
        # Timed from here: the time to the first byte is paid once by a stream and once per part
        # by a fan-out, so what says whether one connection is enough is its rate after that.
        began = time.monotonic()
        try:
            try:
                data = self._take(length)
            except S3FilesError:
                if not was_open:
                    raise
                # A GET left unread for a while (its reader paused) may be dropped by the server: no
                # failure of the store, so it is opened again once from here before a read fails.
                self._open(offset)
                data = self._take(length)
        except BaseException:
            self.close()  # the next part opens it again, if its run still wants one
            raise
        self.given += length
        self.seconds += time.monotonic() - began
        return data

    def _open(self, offset: int) -> None:
        self.close()
        self._chunks, self._at = self._service.stream_body(self._file, offset), offset

    def _take(self, length: int) -> bytes:
        assert self._chunks is not None
        pieces, need = [], length
        while need:
            if not self._left:
                self._left = next(self._chunks, b"")
                if not self._left:
                    raise internal_error(EOFError(f"the object ended at {self._at}, {need} bytes short"))
            piece, self._left = (self._left, b"") if len(self._left) <= need else (self._left[:need], self._left[need:])
            pieces.append(piece)
            need -= len(piece)
            self._at += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        if self._chunks is not None:
            close = getattr(self._chunks, "close", None)
            if close:
                close()  # the GET's connection goes, unless it was read to its end
            self._chunks, self._left = None, b""


class _Run:
    """Consecutive parts from ``start`` to ``end``, read in order from ``origin`` up to ``front``."""

    def __init__(self, origin: int):
        self.origin = origin
        self.start = self.end = origin
        self.front = origin  # just past the furthest byte read
        self.parts: deque[_Part] = deque()
        self.stream: _Stream | None = None  # reading ahead on one GET (see the module's docstring)
        self.fanned_out = False  # its stream was too slow: fan out unless the pool is full

    def continues(self, offset: int) -> bool:
        return self.start <= offset <= self.end + FORWARD_GAP


class Reader:
    def __init__(self, service: FileService, file: FileObject, budget: ReadBudget | None = None,
                 fetcher: Fetcher | None = None):
        self.service = service
        self.file = file
        shared_budget, shared_fetcher = shared() if budget is None or fetcher is None else (budget, fetcher)
        self._budget = budget or shared_budget
        self._fetcher = fetcher or shared_fetcher
        self._lock = threading.Lock()
        self._runs: list[_Run] = []  # the most recently read last
        self._closed = False

    def read(self, size: int, offset: int) -> bytes:
        total = self.file.bytes
        if offset >= total or size <= 0:
            return b""
        stop = min(offset + size, total)
        with self._lock:
            run = None if self._closed else self._run_for(offset, stop)
            parts = [] if run is None else [p for p in run.parts if p.end > offset and p.offset < stop]
        if run is None:  # read after close
            return self._get(offset, stop - offset)
        try:
            pieces = [_slice(part.future.result(), offset - part.offset, stop - part.offset) for part in parts]
        except CancelledError:  # the run was given up under this read (closed, or pushed out by others)
            return self._get(offset, stop - offset)
        except BaseException as exc:
            with self._lock:
                if run in self._runs:  # given up: reading again starts afresh
                    self._runs.remove(run)
                    self._drop(run)
            if isinstance(exc, S3FilesError):
                raise
            raise internal_error(exc) from exc
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for run in self._runs:
                self._drop(run)
            self._runs.clear()

    # --- runs (under self._lock) -----------------------------------------------------------------

    def _run_for(self, offset: int, stop: int) -> _Run:
        """The run this read continues, brought up to date, or a new one."""
        run = next((r for r in reversed(self._runs) if r.continues(offset)), None)
        if run is None:
            return self._start_run(offset, stop)
        self._runs.remove(run)
        self._runs.append(run)
        self._follow(run, offset, stop)
        return run

    def _start_run(self, offset: int, stop: int) -> _Run:
        """A read nowhere near a run: one small GET from here; no reading ahead until it goes on."""
        if len(self._runs) >= MAX_RUNS:
            self._drop(self._runs.pop(0))
        run = _Run(offset)
        run.front = stop
        self._extend(run, stop)
        self._runs.append(run)
        return run

    def _follow(self, run: _Run, offset: int, stop: int) -> None:
        run.front = max(run.front, stop)
        self._forget(run, min(offset, run.front - KEEP_BEHIND))
        if stop > run.end:
            self._extend(run, stop)
        self._read_ahead(run)

    def _extend(self, run: _Run, stop: int) -> None:
        """Request up to ``stop`` now, for a read waiting there: a small part (at least what the
        read needs, at least ``FIRST_PART``), taken from the budget whatever is left in it. On a
        stream, whole ``STREAM_PART``s: its parts then stay in step with the chunks its GET gives."""
        if run.stream is None:
            end = min(self.file.bytes, max(stop, run.end + FIRST_PART))
        else:
            end = min(self.file.bytes, run.end + -(-(stop - run.end) // STREAM_PART) * STREAM_PART)
        self._budget.take(self, end - run.end)
        self._add_part(run, end, urgent=True)

    def _read_ahead(self, run: _Run) -> None:
        """Request parts until the run reaches ``AHEAD_FACTOR`` times what it read ahead of the
        reader, in parts of a ``PARTS_AHEAD``th of that and of this reader's share of the budget (so
        that several GETs run at once), as far as the budget lets it; on a stream while more readers
        share the pool than it can run ``PARTS_AHEAD`` GETs for."""
        total = self.file.bytes
        ahead = min(MAX_AHEAD, AHEAD_FACTOR * (run.front - run.origin))
        goal = min(total, run.front + ahead)
        share, readers = self._budget.share(self)
        pool_full = readers * PARTS_AHEAD > self._fetcher.workers
        if run.stream is None and (pool_full or not run.fanned_out):
            run.stream = _Stream(self.service, self.file)
        elif run.stream is not None and not pool_full and run.stream.slow():
            self._fan_out(run)
        if run.stream is not None:
            part = STREAM_PART
            if not pool_full and not run.stream.slow():
                goal = min(goal, run.front + STREAM_AHEAD)
        else:
            part = max(FIRST_PART, min(MAX_PART, min(ahead, share) // PARTS_AHEAD))
        while run.end < goal:
            size = min(part, total - run.end)
            if not self._budget.try_take(self, size):
                return  # no room now: reading ahead goes on at a later read, as parts are read
            self._add_part(run, run.end + size, urgent=False)

    def _add_part(self, run: _Run, end: int, urgent: bool) -> None:
        part, stream = _Part(run.end, end), run.stream
        run.parts.append(part)
        run.end = end
        if stream is None:
            self._fetcher.submit(urgent, functools.partial(part.fill, self._get))
        else:
            stream.queued.append(part)
            if not stream.draining:
                stream.draining = True
                self._fetcher.submit(urgent, functools.partial(self._drain, stream))

    def _drain(self, stream: _Stream) -> None:
        """Read a stream's queued parts in order, until none is left; close its GET if its run is
        done with it."""
        while True:
            with self._lock:
                if not stream.queued:
                    stream.draining = False
                    if stream.closed:
                        stream.close()
                    return
                part = stream.queued.popleft()
            part.fill(stream.read)  # (a part given up, as a dropped run gives up all it queued, is skipped)

    def _fan_out(self, run: _Run) -> None:
        """Leave the run's slow stream: the parts still queued on it become GETs of their own."""
        stream, run.fanned_out = run.stream, True
        assert stream is not None
        queued = list(stream.queued)
        stream.queued.clear()
        self._close_stream(run)
        for part in queued:
            self._fetcher.submit(False, functools.partial(part.fill, self._get))

    def _close_stream(self, run: _Run) -> None:
        """The run reads ahead on the stream no more: its GET is closed once the parts queued on
        it are read (or given up, as ``_drop`` gives them up), by its drain, or here if none runs."""
        stream, run.stream = run.stream, None
        if stream is not None:
            stream.closed = True
            if not stream.draining:
                stream.close()

    def _forget(self, run: _Run, before: int) -> None:
        """Drop the parts that end at or before ``before``: read, and far enough behind."""
        while len(run.parts) > 1 and run.parts[0].end <= before:
            self._release(run.parts.popleft())
        run.start = run.parts[0].offset if run.parts else run.end

    def _drop(self, run: _Run) -> None:
        self._close_stream(run)
        while run.parts:
            self._release(run.parts.popleft())
        run.start = run.end

    def _release(self, part: _Part) -> None:
        """Cancel the part's GET if it has not begun; its bytes go back to the budget once it ends."""
        part.future.cancel()
        size = part.end - part.offset
        part.future.add_done_callback(lambda _: self._budget.give(self, size))

    def _get(self, offset: int, length: int) -> bytes:
        return self.service.read_body(self.file, offset, length)


def _slice(data: bytes, begin: int, stop: int) -> bytes:
    begin = max(begin, 0)
    return data if begin == 0 and stop >= len(data) else data[begin:stop]
