"""Many writers at once against a real S3 server: every upload lands once, and bucket and table agree."""

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from s3filesfs import config
from s3filesfs.files import open_service
from tests.unit.stores import assert_clean

THREADS = 16
MIB = 1024 * 1024


def run_together(count, work):
    """Start ``count`` calls of ``work(n)`` at the same moment; return their results in order."""
    barrier = threading.Barrier(count)

    def start(n):
        barrier.wait()
        return work(n)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def settings_for(s3_server, tmp_path):
    return config.load(flags=s3_server.settings_values(s3_server.new_bucket_name(),
                                                       db_path=str(tmp_path / "files.db")))


def test_sixteen_threads_upload_through_one_service(s3_server, tmp_path):
    service = open_service(settings_for(s3_server, tmp_path))
    bodies = {}

    def work(n):
        created = []
        for k in range(3):
            # Thread 0 also sends a multipart body, so parts share the pool with small PUTs.
            body = os.urandom(9 * MIB) if (n, k) == (0, 0) else f"thread {n} file {k}\n".encode() * (n + 1)
            file = service.create(io.BytesIO(body), f"t{n}-{k}.txt", "batch" if k % 2 else "assistants")
            bodies[file.id] = hashlib.sha256(body).hexdigest()
            created.append(file)
        return created

    created = [file for files in run_together(THREADS, work) for file in files]
    ids = [file.id for file in created]
    assert len(ids) == len(set(ids)) == THREADS * 3
    listed = service.list().data
    assert {file.id for file in listed} == set(ids)
    assert {file.id: file for file in listed} == {file.id: file for file in created}
    for file in listed:
        _, chunks = service.content(file.id)
        assert hashlib.sha256(b"".join(chunks)).hexdigest() == bodies[file.id]
    assert_clean(service)


def test_sixteen_services_share_one_database_and_bucket(s3_server, tmp_path):
    """As the mount, the daemon and CLI processes do: each its own connection and S3 client."""
    settings = settings_for(s3_server, tmp_path)
    services = [open_service(settings) for _ in range(THREADS)]

    def work(n):
        service = services[n]
        mine = [service.create(io.BytesIO(os.urandom(1000 + n)), f"s{n}-{k}.bin", "user_data").id
                for k in range(4)]
        # Readers and deleters run alongside the other writers.
        service.list(limit=5)
        service.delete(mine.pop())
        return mine

    kept = [file_id for ids in run_together(THREADS, work) for file_id in ids]
    assert len(kept) == len(set(kept)) == THREADS * 3
    for service in (services[0], services[-1]):
        assert {file.id for file in service.list().data} == set(kept)
        assert_clean(service)
    sizes = {file.id: file.bytes for file in services[0].list().data}
    assert sorted(set(sizes.values())) == [1000 + n for n in range(THREADS)]


def test_concurrent_deletes_of_one_file_leave_it_gone(s3_server, tmp_path):
    service = open_service(settings_for(s3_server, tmp_path))
    file_id = service.create(io.BytesIO(b"contested"), "one.txt", "assistants").id
    keep = service.create(io.BytesIO(b"kept"), "two.txt", "assistants").id

    def work(n):
        try:
            service.delete(file_id)
            return "deleted"
        except Exception as exc:  # the losers see not-found, never anything else
            return type(exc).__name__

    outcomes = run_together(8, work)
    assert outcomes.count("deleted") >= 1
    assert set(outcomes) <= {"deleted", "NotFound"}
    assert [file.id for file in service.list().data] == [keep]
    assert_clean(service)
