"""Write-back mode: close() returns once the data is durable in staging; uploads follow.

The integrity rules hold as in the default mode: a closed file is never lost (an outage or a crash
leaves it "closed" in staging, and the mount uploads it when the store answers or at its next start),
and nothing a close did not cover is registered.
"""

import os
import shutil
import signal
import subprocess

import pytest

from tests.fs.mounting import Mount
from tests.fs.test_failures import staged
from tests.fs.test_writes import assert_registered, payload, rows_named
from tests.helpers import unique, wait_for


class WriteBackMount(Mount):
    @property
    def env(self) -> dict:
        return {**super().env, "S3FILESFS_MOUNT_STAGING_DIR": str(self.staging)}


@pytest.fixture
def write_back(fuse, own_s3_server):
    m = WriteBackMount("s3", own_s3_server, extra_args=["--write-back"])
    try:
        m.start()
        yield m
    finally:
        if own_s3_server.process is None:
            own_s3_server.start()
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def test_small_files_are_uploaded_behind_the_close(write_back, tmp_path):
    m = write_back
    source = tmp_path / "many"
    source.mkdir()
    files = {f"small-{i:03d}.txt": payload(16 * 1024, i) for i in range(40)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    subprocess.run(["cp", "-r", f"{source}/.", str(m / "user_data")], check=True)
    wait_for(lambda: len([r for r in m.rows().values() if r["filename"].startswith("small-")]) == len(files),
             30, "every file registered in the background")
    for name, data in list(files.items())[:3]:
        assert_registered(m, m / "user_data" / name, data, "user_data")
    m.assert_consistent()


def test_an_outage_delays_closed_files_and_loses_none(write_back, own_s3_server):
    m = write_back
    own_s3_server.stop()
    name = unique("during-outage", ".bin")
    data = payload(300_000, "outage")
    (m / "batch" / name).write_bytes(data)  # close() succeeds: the data is safe in staging
    status = m.cli("status", "--json", check=False)
    assert name in status.stdout  # shown as being uploaded
    # The mount stops before the store is back: the closed file waits for the next mount.
    assert m.stop(timeout=120) == 0, m.log_tail()
    assert not rows_named(m, name, "batch")
    own_s3_server.start()
    m.start()  # resumes what was closed but not uploaded
    wait_for(lambda: rows_named(m, name, "batch"), 30, "the closed file uploaded after the restart")
    assert_registered(m, m / "batch" / name, data, "batch")
    assert staged(m) == []


def test_a_mount_killed_with_files_queued_uploads_them_at_its_next_start(write_back, own_s3_server):
    m = write_back
    own_s3_server.stop()  # keep them queued
    names = [unique("queued", ".txt") for _ in range(3)]
    for name in names:
        (m / "assistants" / name).write_bytes(name.encode())
    assert m.process is not None
    m.process.send_signal(signal.SIGKILL)
    m.process.wait(10)
    m.stop()
    own_s3_server.start()
    m.start()
    wait_for(lambda: all(rows_named(m, n, "assistants") for n in names), 30, "the queued files uploaded")
    for name in names:
        assert len(rows_named(m, name, "assistants")) == 1
        assert_registered(m, m / "assistants" / name, name.encode(), "assistants")
    assert staged(m) == []
    assert not os.listdir(m.staging) or set(os.listdir(m.staging)) <= {".mount.lock"}
