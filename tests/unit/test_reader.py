"""The mount's Reader over a FileService on the real moto server: which ranged GETs it makes, how
many at once, what its reads return, and how it keeps to the budget that all readers share.

The store is the real S3 store, seen through ``WatchedStore``, which records every ranged GET (its
range, and how many were running at once) and can add a delay before each answer, as S3's time to
first byte does, or fail the GETs that touch a given byte.
"""

import gc
import hashlib
import io
import random
import threading
import time
import tracemalloc

import pytest

from s3filesfs.blobs import BlobStore
from s3filesfs.errors import StorageError, StorageUnavailable
from s3filesfs.files import FileService
from s3filesfs.fs import reader as reader_module
from s3filesfs.fs.reader import (
    FIRST_PART,
    MAX_PART,
    STREAM_AHEAD,
    STREAM_MEASURE,
    STREAM_PART,
    Fetcher,
    ReadBudget,
    Reader,
)
from tests.helpers import wait_for

KiB, MiB = 1024, 1024 * 1024
READ = 128 * KiB  # what the kernel asks for at a time


class WatchedStore(BlobStore):
    """The real store behind the service, with every ``read`` (one ranged GET) recorded."""

    def __init__(self, inner: BlobStore, delay: float = 0.0, chunk_delay: float = 0.0):
        self.inner, self.delay, self.chunk_delay = inner, delay, chunk_delay
        self.location = inner.location
        self.ranges: list[tuple[int, int]] = []  # (offset, length) in the order they started
        self.streams: list[list[int]] = []  # each GET to the end of the object: [start, bytes given]
        self.closed_streams = 0
        self.running = self.most_running = 0
        self.fail_at: int | None = None  # a GET whose range holds this byte fails
        self.drop_at: int | None = None  # a stream is dropped, once, before giving this byte
        self._lock = threading.Lock()

    def read(self, key, offset, length):
        with self._lock:
            self.ranges.append((offset, length))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay)
            if self.fail_at is not None and offset <= self.fail_at < offset + length:
                raise StorageUnavailable("S3 endpoint is unreachable: connection refused")
            return self.inner.read(key, offset, length)
        finally:
            with self._lock:
                self.running -= 1

    def ensure_ready(self):
        self.inner.ensure_ready()

    def writer(self, key, metadata):
        return self.inner.writer(key, metadata)

    def stream(self, key, start=0, end=None):
        """A GET to the end (or ``end``), recorded with the bytes it gave; ``chunk_delay`` before
        each chunk makes it a slow connection."""
        span = [start, 0]
        with self._lock:
            self.streams.append(span)
        time.sleep(self.delay)
        chunks = self.inner.stream(key, start, end)

        def watched_chunks():
            try:
                for chunk in chunks:
                    time.sleep(self.chunk_delay)
                    if self.fail_at is not None and start + span[1] <= self.fail_at < start + span[1] + len(chunk):
                        raise StorageUnavailable("S3 endpoint is unreachable: connection reset")
                    if self.drop_at is not None and start + span[1] <= self.drop_at < start + span[1] + len(chunk):
                        self.drop_at = None
                        raise StorageError("S3 request failed: Connection broken: IncompleteRead")
                    span[1] += len(chunk)
                    yield chunk
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
                with self._lock:
                    self.closed_streams += 1
        return watched_chunks()

    def head(self, key):
        return self.inner.head(key)

    def delete(self, key):
        self.inner.delete(key)

    def keys(self):
        return self.inner.keys()


@pytest.fixture
def bodies(server_backend):
    """Files on the moto server, created once per test as asked: ``bodies(size, ...)``."""
    service = server_backend.service

    def make(*sizes):
        rng = random.Random(sum(sizes))
        made = []
        for size in sizes:
            data = rng.randbytes(size)
            made.append((service.create(io.BytesIO(data), "r.bin", "assistants"), data))
        return made

    return make


@pytest.fixture
def watched(server_backend):
    """A service on the same table and bucket whose GETs are recorded (and 20 ms late, like S3)."""
    store = WatchedStore(server_backend.service.blobs, delay=0.02)
    return FileService(server_backend.service.metadata, store), store


def read_all(reader: Reader, size: int, step: int = READ, pause: float = 0.0, start: int = 0) -> bytes:
    got, offset = bytearray(), start
    while offset < start + size:
        chunk = reader.read(step, offset)
        assert chunk, f"short read at {offset}"
        got += chunk
        offset += len(chunk)
        if pause:
            time.sleep(pause)
    return bytes(got)


def spans(store: WatchedStore) -> list[tuple[int, int]]:
    """Every byte range the store gave, by GET or stream, in order of offset."""
    return sorted([*store.ranges, *((start, length) for start, length in store.streams)])


def test_a_sequential_read_on_a_slow_connection_fans_out_to_ranged_gets(bodies, server_backend):
    (file, data), = bodies(24 * MiB + 321)
    # 20 ms to the first byte of every answer, and a stream that gives 1 MiB per 30 ms (33 MiB/s).
    store = WatchedStore(server_backend.service.blobs, delay=0.02, chunk_delay=0.03)
    service = FileService(server_backend.service.metadata, store)
    budget = ReadBudget(128 * MiB)
    reader = Reader(service, file, budget, Fetcher(16))
    assert read_all(reader, file.bytes) == data
    reader.close()
    # The GETs and the stream back to back from the first byte to the last, none twice.
    position = 0
    for offset, length in spans(store):
        assert offset == position, spans(store)
        position += length
    assert position == file.bytes
    assert store.ranges[0] == (0, FIRST_PART), "a run starts with one small GET"
    (stream_start, streamed), = store.streams
    assert stream_start == FIRST_PART, "then reads ahead on one stream..."
    assert STREAM_MEASURE <= streamed < 2 * STREAM_MEASURE, "...until its rate says it is slow"
    sizes = [length for offset, length in store.ranges[1:] if offset + length < file.bytes]  # the last is cut
    assert sizes[-1] > 4 * FIRST_PART, "then parts grow as the reader goes on"
    assert max(sizes) <= MAX_PART
    assert store.most_running >= 4, f"at most {store.most_running} GET(s) ran at once"
    wait_for(lambda: budget.used == 0, 5, "the budget given back")
    assert store.closed_streams == 1


def test_a_sequential_read_on_a_fast_connection_stays_on_one_stream(bodies, server_backend, monkeypatch):
    (file, data), = bodies(24 * MiB + 321)
    monkeypatch.setattr(reader_module, "FAST_STREAM", 1)  # any stream is fast (moto is not always)
    store = WatchedStore(server_backend.service.blobs)
    service = FileService(server_backend.service.metadata, store)
    budget = ReadBudget(128 * MiB)
    reader = Reader(service, file, budget, Fetcher(16))
    assert read_all(reader, file.bytes) == data
    reader.close()
    assert store.ranges == [(0, FIRST_PART)], "one small GET..."
    assert store.streams == [[FIRST_PART, file.bytes - FIRST_PART]], "...and one stream for the rest"
    assert budget.peak <= STREAM_AHEAD + 2 * STREAM_PART, "a fast stream reads no further ahead than needed"
    wait_for(lambda: budget.used == 0 and store.closed_streams == 1, 5, "the budget given back, the GET closed")


def test_a_probe_costs_one_small_get(bodies, watched):
    (file, data), = bodies(6 * MiB)
    service, store = watched
    reader = Reader(service, file, ReadBudget(64 * MiB), Fetcher(4))
    assert reader.read(100, 0) == data[:100]
    assert reader.read(4096, 100) == data[100:4196]  # `file` reads a little more: still that GET
    time.sleep(0.2)  # time for any read-ahead to have started
    reader.close()
    assert store.ranges == [(0, FIRST_PART)]


def test_a_jump_restarts_small_and_grows_again(bodies, watched):
    (file, data), = bodies(20 * MiB)
    service, store = watched
    reader = Reader(service, file, ReadBudget(64 * MiB), Fetcher(8))
    assert read_all(reader, 2 * MiB) == data[:2 * MiB]
    assert store.streams and store.streams[0][0] == FIRST_PART, "reading ahead began"
    jump = 15 * MiB + 7
    assert reader.read(READ, jump) == data[jump:jump + READ]
    assert [r for r in store.ranges if r[0] >= jump] == [(jump, FIRST_PART)], "one small GET from there"
    assert all(start < jump for start, _ in store.streams), "and no stream there yet"
    offset = jump + READ
    while offset < jump + 3 * MiB:  # reading on from there reads ahead again
        assert reader.read(READ, offset) == data[offset:offset + READ]
        offset += READ
    assert [start for start, _ in store.streams if start >= jump] == [jump + FIRST_PART]
    reader.close()


def test_random_reads_are_exact_and_cost_one_get_each(bodies, watched):
    (file, data), = bodies(16 * MiB + 5)
    service, store = watched
    reader = Reader(service, file, ReadBudget(64 * MiB), Fetcher(8))
    rng = random.Random(3)
    # Far apart, so that no read continues the run of another.
    offsets = rng.sample(range(0, file.bytes - 2 * MiB, 3 * MiB), 5)
    for offset in offsets:
        length = rng.choice([1, 4096, READ + 3, 600 * KiB])
        before = len(store.ranges)
        assert reader.read(length, offset) == data[offset:offset + length]
        new = store.ranges[before:]
        assert len(new) == 1 and new[0][0] == offset, new
        assert new[0][1] >= min(length, file.bytes - offset)
    reader.close()
    tail = Reader(service, file, ReadBudget(64 * MiB), Fetcher(8))
    assert tail.read(100, file.bytes - 10) == data[-10:]
    assert store.ranges[-1] == (file.bytes - 10, 10), "nothing is asked for past the end"
    assert tail.read(100, file.bytes) == b""
    tail.close()


def test_eight_readers_keep_to_one_budget_each_on_one_stream(bodies, watched):
    """More readers than the pool can run several GETs for: each reads ahead on one GET of its own."""
    files = bodies(*[8 * MiB + n for n in range(8)])
    service, store = watched
    budget = ReadBudget(16 * MiB)
    fetcher = Fetcher(16)
    failures = []

    def read(file, data):
        reader = Reader(service, file, budget, fetcher)
        try:
            # A consumer slower than the store: what was fetched ahead waits in the budget.
            if read_all(reader, file.bytes, pause=0.003) != data:
                failures.append(file.id)
        finally:
            reader.close()

    threads = [threading.Thread(target=read, args=pair) for pair in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    # Reading ahead never passes the budget; a read waiting for its own bytes may take one small
    # part beyond it (never refused, so that no reader can wait forever on the others).
    assert 8 * MiB < budget.peak <= budget.limit + 8 * FIRST_PART, budget.peak / MiB
    # Each file cost its first small GET and, as the others came, one stream: a few requests
    # each, not one per part. (A reader that started alone may have fanned out a little first.)
    assert len(store.streams) >= 4, store.streams
    assert len(store.streams) + len(store.ranges) <= 8 * 4, (store.streams, store.ranges)
    wait_for(lambda: store.closed_streams == len(store.streams), 5, "every stream's GET closed")
    wait_for(lambda: budget.used == 0, 5, "every reader's budget given back")


def test_a_stream_that_fails_fails_the_read_that_needs_its_bytes(bodies, server_backend):
    (file, data), = bodies(12 * MiB)
    store = WatchedStore(server_backend.service.blobs)
    store.fail_at = 6 * MiB
    service = FileService(server_backend.service.metadata, store)
    reader = Reader(service, file, ReadBudget(64 * MiB), Fetcher(2))  # one reader, two workers: a stream
    offset = 0
    with pytest.raises(StorageUnavailable) as failure:
        while offset < file.bytes:
            assert reader.read(READ, offset) == data[offset:offset + READ]
            offset += READ
    assert store.streams, "reading ahead went on a stream"
    # The reads got their bytes up to the part (one chunk of the GET) that holds the failed byte.
    assert store.fail_at - STREAM_PART < offset <= store.fail_at, offset
    assert failure.value.errno == 5  # EIO at the kernel
    store.fail_at = None  # the store is back: reading again starts afresh
    assert read_all(reader, file.bytes - offset, start=offset) == data[offset:]
    reader.close()
    wait_for(lambda: store.closed_streams == len(store.streams), 5, "every stream's GET closed")


def test_a_stream_dropped_while_its_reader_paused_is_opened_again(bodies, server_backend):
    (file, data), = bodies(12 * MiB)
    store = WatchedStore(server_backend.service.blobs)
    store.drop_at = dropped = 6 * MiB  # the server drops the connection once, mid-file
    service = FileService(server_backend.service.metadata, store)
    reader = Reader(service, file, ReadBudget(4 * MiB), Fetcher(2))  # a stream, kept short by the budget
    assert read_all(reader, file.bytes) == data, "no read failed"
    assert dropped - STREAM_PART < store.streams[-1][0] <= dropped, "opened again where it broke"
    assert len(store.streams) == 2
    reader.close()
    wait_for(lambda: store.closed_streams == len(store.streams), 5, "every stream's GET closed")


def test_closing_a_reader_mid_stream_gives_its_budget_back(bodies, server_backend):
    (file, data), = bodies(16 * MiB)
    store = WatchedStore(server_backend.service.blobs, delay=0.3)
    service = FileService(server_backend.service.metadata, store)
    budget = ReadBudget(64 * MiB)
    reader = Reader(service, file, budget, Fetcher(1))  # one worker: the parts read ahead wait their turn
    assert read_all(reader, 2 * MiB) == data[:2 * MiB]
    assert budget.held_by(reader) >= 6 * MiB, "several MiB were asked for ahead of the reader"
    started = len(store.ranges)
    reader.close()
    wait_for(lambda: budget.used == 0, 2, "the closed reader's budget given back")
    time.sleep(0.7)  # had the waiting GETs not been cancelled, two more would have run by now
    assert len(store.ranges) <= started + 1, "only a GET already taken by the worker may still run"
    # One worker for one reader reads ahead on a stream (see the eight readers): it is closed too.
    wait_for(lambda: store.closed_streams == len(store.streams), 2, "the stream's GET closed")
    assert reader.read(100, 5) == data[5:105]  # a read after close is still answered, directly


def test_readers_share_the_process_budget_and_pool_by_default(server_backend, bodies):
    (file, data), = bodies(300 * KiB)
    first, second = (Reader(server_backend.service, file) for _ in range(2))
    assert first._budget is second._budget and first._fetcher is second._fetcher
    assert first.read(MiB, 0) == data
    first.close()
    second.close()


def test_nothing_fetched_is_kept_once_its_reader_is_closed(bodies, watched):
    """The pool's idle workers hold no part they fetched: the bytes go with their reader."""
    (file, data), = bodies(16 * MiB)
    service, store = watched
    budget = ReadBudget(64 * MiB)
    fetcher = Fetcher(16)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        reader = Reader(service, file, budget, fetcher)
        assert hashlib.sha256(read_all(reader, file.bytes)).digest() == hashlib.sha256(data).digest()
        reader.close()
        wait_for(lambda: budget.used == 0, 5, "the budget given back")
        del reader
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2 * MiB, f"{(after - before) / MiB:.1f} MiB still held after the close"
