"""What a close promises: a file is registered only with what its writer's successful close()
covered. A writer killed before closing, or a write that the staging disk could not take, leaves
nothing registered under the name (see docs/semantics.md, "Integrity")."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.fs.mounting import Mount
from tests.fs.test_failures import StagedMount, staged
from tests.fs.test_writes import MiB, assert_registered, payload, rows_named
from tests.helpers import unique, wait_for

WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, b"x" * int(sys.argv[2]))
print("written", flush=True)
time.sleep(60)  # killed here, before any close
"""


@pytest.fixture
def staged_mount(request, fuse):
    server = request.getfixturevalue("s3_server")
    m = StagedMount("s3", server)
    try:
        m.start()
        yield m
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


@pytest.mark.parametrize("size", [100_000, 9 * MiB])  # one PUT; a multipart upload under way
def test_a_writer_killed_before_closing_registers_nothing(staged_mount, size):
    m = staged_mount
    name = unique("killed-writer", ".bin")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m / "batch" / name), str(size)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
    writer.send_signal(signal.SIGKILL)  # the kernel closes its descriptor: no close() of its own
    writer.wait(10)
    wait_for(lambda: [e for e in staged(m) if e["filename"] == name], 10, "the interrupted file waiting")
    entry, = [e for e in staged(m) if e["filename"] == name]
    assert (entry["state"], entry["bytes"]) == ("interrupted", size)
    assert "killed" in entry["error"]
    assert not rows_named(m, name, "batch")
    assert name not in os.listdir(m / "batch")
    wait_for(lambda: not m.pending_uploads(), 10, "the streamed upload aborted")
    # Plain retry leaves it; named, it is registered with what was written.
    assert "nothing to retry" in m.cli("retry").stdout
    assert not rows_named(m, name, "batch")
    m.cli("retry", f"batch/{name}")
    assert_registered(m, m / "batch" / name, b"x" * size, "batch")


def test_a_writer_that_exits_without_closing_is_registered(staged_mount):
    """A program that ends normally lets the kernel close its descriptors (`cat > file` from a
    shell): that is its close, and it counts."""
    m = staged_mount
    name = unique("exited", ".txt")
    code = f"import os; fd = os.open({str(m / 'batch' / name)!r}, os.O_WRONLY | os.O_CREAT); " \
           "os.write(fd, b'complete\\n'); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    wait_for(lambda: rows_named(m, name, "batch"), 10, "the file registered")
    assert_registered(m, m / "batch" / name, b"complete\n", "batch")


@pytest.fixture
def tmpfs_staging(fuse, tmp_path):
    """A mount whose staging folder is a 4 MiB tmpfs: a real full disk, not the mount's own cap."""
    m = Mount("local")
    m.staging.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(m.staging)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for staging (needs root): {result.stderr}")
    try:
        m.start()
        yield m
    finally:
        m.stop()
        subprocess.run(["umount", str(m.staging)], capture_output=True)
        shutil.rmtree(m.root, ignore_errors=True)


def test_a_full_staging_disk_fails_the_write_and_the_close_and_registers_nothing(tmpfs_staging):
    m = tmpfs_staging
    dest = m / "assistants" / unique("too-big", ".bin")
    data = payload(10 * MiB, "full")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    failure = None
    try:
        for start in range(0, len(data), MiB):
            os.write(fd, data[start:start + MiB])
    except OSError as exc:
        failure = exc
    with pytest.raises(OSError) as closing:
        os.close(fd)
    assert failure is not None and failure.errno == errno.ENOSPC, failure
    assert closing.value.errno == errno.ENOSPC
    assert not m.rows() and not m.object_keys()
    wait_for(lambda: m.staged_files() <= {".mount.lock"}, 5, "staging emptied")
    assert dest.name not in os.listdir(m / "assistants")
    # The disk has room again: the next file goes through.
    small = m / "assistants" / unique("fits", ".txt")
    small.write_bytes(b"fits\n")
    time.sleep(0.1)
    assert_registered(m, small, b"fits\n", "assistants")


def test_status_and_retry_find_a_staging_folder_given_on_the_command_line(fuse):
    """The mount was started with --staging-dir and nothing else knows that folder: status and
    retry still find what it keeps (each mount notes its folder in the data folder)."""
    m = Mount("local")  # --staging-dir only: no config or environment names the folder
    try:
        m.start()
        name = unique("flagged", ".bin")
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m / "batch" / name), "5000"],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        writer.kill()
        writer.wait(10)
        assert m.stop() == 0
        assert m.staging != m.data_dir / "staging"
        entries = [e for e in staged(m) if e["filename"] == name]
        assert [(e["state"], e["bytes"]) for e in entries] == [("interrupted", 5000)]
        m.cli("retry", f"batch/{name}")
        assert staged(m) == []
        assert [r["bytes"] for r in rows_named(m, name, "batch")] == [5000]
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)
