"""Reading through the mount: byte-exact content at any offset, with tools and plain calls, while
the file is renamed under the reader, and by id."""

import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time

import pytest

from s3filesfs.access import OPERATOR
from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

SHOWN = 3.0
MiB = 1024 * 1024


def listed(mount, folder, name):
    return wait_for(lambda: name in os.listdir(mount / folder), SHOWN, f"{folder}/{name} in the listing")


@pytest.fixture(scope="module")
def files(mount):
    """The files the tests read, planted at once so one listing refresh shows them all.

    ``big`` is 17 MiB: three read-ahead chunks of 8 MiB, and more than one multipart part.
    """
    rng = random.Random(7)
    bodies = {"big": rng.randbytes(17 * MiB + 12345), "small": b"hello, mount\n" * 10, "empty": b"",
              "moving-assistants": rng.randbytes(3 * MiB + 17), "moving-vision": rng.randbytes(3 * MiB + 17),
              "behind": rng.randbytes(2 * MiB), "replaced": b"A" * 100_000}
    folders = {"small": "assistants", "empty": "evals", "behind": "evals", "replaced": "evals"}
    planted = {key: (mount.plant(unique(key, ".bin"), folders.get(key, "assistants"), body,
                                 created_at=1_700_000_000), body)
               for key, body in bodies.items()}

    def all_listed():
        listings = {p: set(os.listdir(mount / p)) for p in ("assistants", "evals")}
        return all(f.filename in listings[f.purpose] for f, _ in planted.values())

    wait_for(all_listed, SHOWN, "the planted files")
    return planted


@pytest.fixture
def big(files):
    return files["big"]


def test_cat_small_file_created_by_the_service(mount, files):
    planted, body = files["small"]
    out = subprocess.run(["cat", str(mount / "assistants" / planted.filename)], capture_output=True, check=True)
    assert out.stdout == body


def test_empty_file_reads_empty(mount, files):
    planted, _ = files["empty"]
    assert (mount / "evals" / planted.filename).read_bytes() == b""
    assert os.stat(mount / "evals" / planted.filename).st_size == 0


def test_cat_multi_mib_file_is_byte_exact(mount, big):
    planted, body = big
    out = subprocess.run(["cat", str(mount / "assistants" / planted.filename)], capture_output=True, check=True)
    assert len(out.stdout) == len(body)
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(body).digest()


def test_cp_out_of_the_mount_is_byte_exact(mount, big, tmp_path):
    planted, body = big
    subprocess.run(["cp", str(mount / "assistants" / planted.filename), str(tmp_path / "out.bin")], check=True)
    subprocess.run(["cp", str(mount / "by-id" / planted.id), str(tmp_path / "by-id.bin")], check=True)
    assert (tmp_path / "out.bin").read_bytes() == body
    assert (tmp_path / "by-id.bin").read_bytes() == body


def test_random_offsets_and_lengths(mount, big):
    planted, body = big
    rng = random.Random(11)
    fd = os.open(mount / "assistants" / planted.filename, os.O_RDONLY)
    try:
        for _ in range(60):
            offset = rng.randrange(0, len(body))
            length = rng.choice([1, 7, 4096, 65536, 131072 + 3, MiB + 5, 3 * MiB])
            assert os.pread(fd, length, offset) == body[offset:offset + length], (offset, length)
        # Around the end: a short read at the tail, nothing past it.
        assert os.pread(fd, 100, len(body) - 10) == body[-10:]
        assert os.pread(fd, 100, len(body)) == b""
        assert os.pread(fd, 100, len(body) + 5 * MiB) == b""
        # Backwards and sequential again (read-ahead must not serve the wrong window).
        for offset in range(len(body) - MiB, 0, -2 * MiB):
            assert os.pread(fd, 1000, offset) == body[offset:offset + 1000]
    finally:
        os.close(fd)


def test_threads_sharing_one_descriptor(mount, big):
    """Sequential scans of different regions interleaved on one open file, and random reads."""
    planted, body = big
    fd = os.open(mount / "assistants" / planted.filename, os.O_RDONLY)
    failures = []

    def scan(start, step, count):
        offset = start
        for _ in range(count):
            got = os.pread(fd, step, offset)
            if got != body[offset:offset + step]:
                failures.append((start, offset, step))
                return
            offset += step

    def jump(seed):
        rng = random.Random(seed)
        for _ in range(30):
            offset, length = rng.randrange(len(body)), rng.randrange(1, 300_000)
            if os.pread(fd, length, offset) != body[offset:offset + length]:
                failures.append(("random", offset, length))
                return

    threads = [threading.Thread(target=scan, args=(start, 128 * 1024, 40)) for start in (0, 5 * MiB, 11 * MiB + 3)]
    threads += [threading.Thread(target=jump, args=(seed,)) for seed in (1, 2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        os.close(fd)
    assert not failures, failures


def test_dd_with_skip_reads_the_right_blocks(mount, big):
    planted, body = big
    out = subprocess.run(["dd", f"if={mount / 'assistants' / planted.filename}", "bs=4096", "skip=1000",
                          "count=300", "status=none"], capture_output=True, check=True).stdout
    assert out == body[4096 * 1000:4096 * 1300]


def test_by_id_read_is_the_same_content(mount, big):
    planted, body = big
    data = (mount / "by-id" / planted.id).read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()


def test_two_readers_at_once(mount, big):
    planted, body = big
    results = {}

    def read(key, path):
        results[key] = hashlib.sha256(path.read_bytes()).digest()

    threads = [threading.Thread(target=read, args=(i, p)) for i, p in
               enumerate([mount / "assistants" / planted.filename, mount / "by-id" / planted.id] * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results.values()) == {hashlib.sha256(body).digest()} and len(results) == 4


@pytest.mark.parametrize("target_purpose", ["assistants", "vision"])
def test_reading_while_another_thread_renames_it(mount, files, target_purpose):
    planted, body = files[f"moving-{target_purpose}"]
    source = mount / "assistants" / planted.filename
    target = mount / target_purpose / unique("moved", ".bin")
    got = bytearray()
    with open(source, "rb", buffering=0) as reader:
        got += reader.read(MiB)
        renamer = threading.Thread(target=os.rename, args=(source, target))
        renamer.start()
        while chunk := reader.read(64 * 1024):
            got += chunk
        renamer.join(30)
    assert bytes(got) == body
    assert not source.exists()
    assert target.read_bytes() == body
    assert os.getxattr(target, "user.openai.file_id") == planted.id.encode()
    row = mount.rows()[planted.id]
    assert (row["filename"], row["purpose"]) == (target.name, target_purpose)


def test_reading_while_renamed_behind_the_mounts_back(mount, files):
    planted, body = files["behind"]
    new_name = unique("elsewhere", ".bin")
    with open(mount / "evals" / planted.filename, "rb", buffering=0) as reader:
        first = reader.read(MiB // 2)
        mount.service().metadata.update(planted.id, viewer=OPERATOR, filename=new_name)
        rest = reader.read()
    assert first + rest == body
    listed(mount, "evals", new_name)
    assert (mount / "evals" / new_name).read_bytes() == body


def test_overwrite_through_the_mount_reads_the_new_content(mount):
    path = mount / "vision" / unique("cached", ".bin")
    path.write_bytes(b"old content " * 1000)
    assert path.read_bytes() == b"old content " * 1000  # now in the kernel's page cache
    old_id = os.getxattr(path, "user.openai.file_id")
    path.write_bytes(b"new")
    assert os.getxattr(path, "user.openai.file_id") != old_id
    assert path.read_bytes() == b"new"
    with open(path, "rb") as f:
        assert f.read() == b"new"


def test_replaced_elsewhere_reads_the_new_content(mount, files):
    """The page cache belongs to a file id: a name that now means another id reads that id's bytes."""
    old, _ = files["replaced"]
    name = old.filename
    path = mount / "evals" / name
    assert path.read_bytes() == b"A" * 100_000
    new = mount.plant(name, "evals", b"B" * 50_000, created_at=old.created_at + 1)
    mount.service().delete(old.id)
    wait_for(lambda: os.getxattr(path, "user.openai.file_id") == new.id.encode(), 2.5, "the new id under the name")
    assert path.read_bytes() == b"B" * 50_000
    assert os.stat(path).st_size == 50_000


# --- many readers, one budget; a store failing mid-read ------------------------------------------

class BudgetMount(Mount):
    """A mount whose read-ahead budget is set through the environment (``mount.read_ahead_mb``)."""

    def __init__(self, *args, read_ahead_mb: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_ahead_mb = read_ahead_mb

    @property
    def env(self) -> dict:
        return {**super().env, "S3FILESFS_MOUNT_READ_AHEAD_MB": str(self.read_ahead_mb)}


def _started(m: Mount):
    try:
        return m.start()
    except BaseException:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)
        raise


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


@pytest.fixture
def small_budget_mount(s3_server, fuse):
    m = _started(BudgetMount("s3", s3_server, read_ahead_mb=16))
    yield m
    m.stop()
    shutil.rmtree(m.root, ignore_errors=True)


def test_eight_readers_at_once_share_one_read_ahead_budget(small_budget_mount):
    """Eight files read at once, each by a reader slower than the store: what is fetched ahead for
    all of them together stays within the 16 MiB budget, where a window per file would hold most of
    the 96 MiB."""
    m = small_budget_mount
    rng = random.Random(5)
    files = [(m.plant(unique(f"many{n}", ".bin"), "vision", body), body)
             for n, body in enumerate(rng.randbytes(12 * MiB) for _ in range(8))]
    wait_for(lambda: {f.filename for f, _ in files} <= set(os.listdir(m / "vision")), SHOWN, "the files listed")
    warm = m / "vision" / files[0][0].filename
    assert warm.read_bytes()[:MiB] == files[0][1][:MiB]  # the mount's first GETs: threads, client
    pid = m.process.pid
    start = _rss_mib(pid)
    peak, stop, failures = [start], threading.Event(), []

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib(pid))
            stop.wait(0.01)

    def read(file, body):
        got = bytearray()
        with open(m / "vision" / file.filename, "rb", buffering=0) as reader:
            while chunk := reader.read(256 * 1024):
                got += chunk
                time.sleep(0.04)
        if bytes(got) != body:
            failures.append(file.filename)

    sampler = threading.Thread(target=sample)
    sampler.start()
    readers = [threading.Thread(target=read, args=pair) for pair in files[1:]]
    readers.append(threading.Thread(target=read, args=files[0]))
    try:
        for t in readers:
            t.start()
        for t in readers:
            t.join(120)
    finally:
        stop.set()
        sampler.join()
    assert not failures
    # About 10 MiB here; with a budget large enough for every file, about 65.
    assert peak[0] - start < 16 + 20, f"the mount grew from {start} MiB to {peak[0]} MiB"
    for f, _ in files:
        m.service().delete(f.id)  # give the session's in-memory S3 server its memory back


@pytest.fixture
def outage_mount(own_s3_server, fuse):
    m = _started(Mount("s3", own_s3_server))
    yield m
    if own_s3_server.process is None:
        own_s3_server.start()  # the mount stops cleanly whatever the test left
    m.stop()
    shutil.rmtree(m.root, ignore_errors=True)


def test_a_get_failing_mid_read_is_eio_at_the_read_that_needs_it(outage_mount, own_s3_server):
    m = outage_mount
    body = random.Random(9).randbytes(24 * MiB)
    planted = m.plant(unique("outage", ".bin"), "vision", body)
    listed(m, "vision", planted.filename)
    got = bytearray()
    with open(m / "vision" / planted.filename, "rb", buffering=0) as reader:
        while len(got) < 2 * MiB:
            got += reader.read(256 * 1024)
        own_s3_server.stop()
        with pytest.raises(OSError) as failure:
            while chunk := reader.read(256 * 1024):
                got += chunk
    assert failure.value.errno == errno.EIO, failure.value
    # What was fetched before the store went away was read, byte for byte; the rest was not.
    assert 2 * MiB <= len(got) < len(body)
    assert bytes(got) == body[:len(got)]
