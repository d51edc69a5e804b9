"""Failures seen through a real mount: an S3 outage at close (EIO, data kept staged, listed by
``status``, uploaded by ``retry``), and a read-only mount refusing every write with EROFS.

The outage tests run on a server of their own (``own_s3_server``), stopped and started again on the
same port. moto keeps its data in memory, so the restarted server is empty: the mount's settings
auto-create the bucket again.
"""

import errno
import json
import os
import shutil
import time

import pytest

from tests.fs.mounting import Mount
from tests.fs.test_writes import (
    MiB,
    assert_registered,
    body,
    file_id,
    listed,
    payload,
    rows_named,
    run,
    settled_snapshot,
)
from tests.helpers import unique, wait_for


class StagedMount(Mount):
    """A mount whose staging folder the CLI (``status``, ``retry``) knows too, through the environment."""

    @property
    def env(self) -> dict:
        return {**super().env, "S3FILESFS_MOUNT_STAGING_DIR": str(self.staging)}


@pytest.fixture
def outage_mount(own_s3_server, fuse):
    m = StagedMount("s3", own_s3_server)
    try:
        m.start()
        m.baseline = m.snapshot()
        yield m
    finally:
        if own_s3_server.process is None:
            own_s3_server.start()  # let the mount stop cleanly, whatever the test left
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def staged(m: Mount) -> list[dict]:
    """The ``staged`` list of ``s3filesfs status --json`` (works without a daemon)."""
    result = m.cli("status", "--json", check=False)
    try:
        return json.loads(result.stdout)["staged"]
    except (ValueError, KeyError) as exc:
        raise AssertionError(f"status --json gave no 'staged' list ({exc!r}): {result.stdout}{result.stderr}") from exc


def _retry_after_restart(m: Mount, server, *files: tuple[str, str, bytes], remount=False) -> None:
    """Restart the server (empty), run ``s3filesfs retry``; each (name, purpose, data) is registered.

    With ``remount``, the (stopped) mount is started again first: staged uploads outlive the mount.
    """
    server.start()
    if remount:
        m.start()
        assert sorted(e["filename"] for e in staged(m)) == sorted(name for name, _, _ in files)
    result = m.cli("retry", "--json", check=False, timeout=120)
    assert result.returncode == 0, f"retry exited {result.returncode}: {result.stdout}{result.stderr}"
    json.loads(result.stdout)
    assert staged(m) == []
    for name, purpose, data in files:
        matches = rows_named(m, name, purpose)
        assert len(matches) == 1, matches
        fid = matches[0]["id"]
        assert matches[0]["bytes"] == len(data)
        assert body(m, fid) == data
        path = m / purpose / name
        wait_for(lambda: name in os.listdir(m / purpose), 5, "the retried file shown in the mount")
        assert file_id(path) == fid
        assert_registered(m, path, data, purpose)
        assert fid in listed(m)
        assert fid in result.stdout, "retry --json names the files it registered"
    settled_snapshot(m)
    m.assert_consistent(m.baseline)


def test_outage_during_write_fails_close_and_retry_uploads(outage_mount, own_s3_server):
    m = outage_mount
    name = unique("outage", ".bin")
    data = payload(12 * MiB + 777, "outage")
    fd = os.open(m / "batch" / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    closed = False
    try:
        half = 9 * MiB  # past one 8 MiB part: a multipart upload is under way
        for start in range(0, half, MiB):
            os.write(fd, data[start:start + MiB])
        own_s3_server.stop()
        for start in range(half, len(data), MiB):
            os.write(fd, data[start:min(start + MiB, len(data))])
        with pytest.raises(OSError) as failure:
            closed = True
            os.close(fd)
        assert failure.value.errno == errno.EIO, failure.value
    finally:
        if not closed:
            os.close(fd)
    assert not m.rows(), "nothing may be registered after a failed upload"
    entries = [e for e in staged(m) if e["filename"] == name]
    assert len(entries) == 1, staged(m)
    assert (entries[0]["purpose"], entries[0]["bytes"]) == ("batch", len(data))
    assert entries[0]["error"]
    time.sleep(1.2)  # past the listing cache: a failed upload is not shown
    assert name not in os.listdir(m / "batch")
    # The mount stops cleanly while the server is down; the staged upload stays for retry.
    assert m.stop() == 0, m.log_tail()
    _retry_after_restart(m, own_s3_server, (name, "batch", data), remount=True)


def test_cp_and_temp_rename_while_server_down_then_retry(outage_mount, own_s3_server, tmp_path):
    m = outage_mount
    data = payload(3 * MiB + 5, "cp-outage")
    src = tmp_path / "report.pdf"
    src.write_bytes(data)
    name = unique("report", ".pdf")
    own_s3_server.stop()
    result = run("cp", src, m / "assistants" / name, check=False)
    assert result.returncode != 0
    assert "Input/output error" in result.stderr, result.stderr
    assert not m.rows()
    entries = [e for e in staged(m) if e["filename"] == name]
    assert [(e["purpose"], e["bytes"]) for e in entries] == [("assistants", len(data))], staged(m)
    # A temporary name renamed to a real one starts its upload, which fails: rename gives EIO.
    fetched = unique("fetched", ".bin")
    fetched_data = payload(500_000, "temp-outage")
    temp = m / "user_data" / f"{fetched}.part"
    temp.write_bytes(fetched_data)
    with pytest.raises(OSError) as failure:
        os.rename(temp, m / "user_data" / fetched)
    assert failure.value.errno == errno.EIO, failure.value
    entries = [e for e in staged(m) if e["filename"] == fetched]
    assert [(e["purpose"], e["bytes"]) for e in entries] == [("user_data", len(fetched_data))], staged(m)
    # A retry while the server is still down: exit 3, the uploads stay staged.
    result = m.cli("retry", check=False, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert sorted(e["filename"] for e in staged(m)) == sorted([name, fetched])
    assert not m.rows()
    _retry_after_restart(m, own_s3_server, (name, "assistants", data), (fetched, "user_data", fetched_data))


def test_failed_overwrite_retried_replaces_old_id(outage_mount, own_s3_server):
    """A failed overwrite keeps the old file; the retry registers the new bytes and removes the old id."""
    m = outage_mount
    name = unique("versioned")
    path = m / "user_data" / name
    path.write_bytes(b"version 1\n")
    old = file_id(path)
    other = m / "assistants" / unique("bystander")
    other.write_bytes(b"moved while down\n")
    moved = file_id(other)
    own_s3_server.stop()
    with pytest.raises(OSError) as failure:
        with open(path, "wb") as f:
            f.write(b"version 2\n")
    assert failure.value.errno == errno.EIO
    entries = [e for e in staged(m) if e["filename"] == name]
    assert len(entries) == 1 and entries[0]["replaces"] == old, staged(m)
    assert set(m.rows()) == {old, moved}
    # The failed new content is not shown; the name still shows the old, registered file.
    wait_for(lambda: file_id(path) == old, 3, "the old id shown again under the name")
    # Opening for writing copies nothing yet, so it works while the server is down; the first
    # write needs the old content (copy-on-write) and fails with EIO, changing nothing.
    fd = os.open(other, os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as cow_failure:
            os.write(fd, b"more\n")
    finally:
        os.close(fd)
    assert cow_failure.value.errno == errno.EIO, cow_failure.value
    assert file_id(other) == moved
    assert len(staged(m)) == 1
    # A rename is metadata only: it works while the server is down.
    os.rename(other, m / "evals" / other.name)
    assert m.rows()[moved]["purpose"] == "evals"
    # An unlink is object first, then row: with the server down it fails and the row stays.
    with pytest.raises(OSError) as unlink_failure:
        os.unlink(m / "evals" / other.name)
    assert unlink_failure.value.errno == errno.EIO, unlink_failure.value
    assert moved in m.rows()
    own_s3_server.start()
    # The restarted server is empty: the old object is gone with it; the retry still replaces the row.
    result = m.cli("retry", check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    matches = rows_named(m, name, "user_data")
    assert len(matches) == 1 and matches[0]["id"] != old, matches
    assert body(m, matches[0]["id"]) == b"version 2\n"
    assert staged(m) == []
    wait_for(lambda: file_id(path) == matches[0]["id"], 5, "the new id shown")
    assert path.read_bytes() == b"version 2\n"
    # The restarted server lost the bystander's object (and the retry made the bucket again):
    # removing the file now succeeds, a missing object being no error.
    wait_for(lambda: other.name in os.listdir(m / "evals"), 5, "the file still shown after the failed unlink")
    os.unlink(m / "evals" / other.name)
    assert moved not in m.rows()
    settled_snapshot(m)
    m.assert_consistent(m.baseline)


# --- read-only mount ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ro_mount(fuse):
    m = Mount("local", extra_args=["--read-only"])
    try:
        m.plant("existing.txt", "assistants", b"read me\n")
        m.start()
        m.baseline = m.snapshot()
        yield m
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def _erofs(call, *args):
    with pytest.raises(OSError) as failure:
        call(*args)
    assert failure.value.errno == errno.EROFS, failure.value


def test_read_only_mount_refuses_writes(ro_mount, tmp_path):
    m = ro_mount
    before = m.snapshot()
    existing = m / "assistants" / "existing.txt"
    assert existing.read_bytes() == b"read me\n"
    fid = file_id(existing)
    _erofs(open, m / "assistants" / "new.txt", "wb")
    _erofs(os.open, m / "assistants" / "new2.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    _erofs(open, existing, "r+b")
    _erofs(open, existing, "ab")
    _erofs(os.open, existing, os.O_WRONLY | os.O_TRUNC)
    _erofs(os.unlink, existing)
    _erofs(os.rename, existing, m / "assistants" / "moved.txt")
    _erofs(os.rename, existing, m / "vision" / "existing.txt")
    _erofs(os.truncate, existing, 0)
    src = tmp_path / "x.txt"
    src.write_bytes(b"x")
    result = run("cp", src, m / "assistants" / "x.txt", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr
    assert existing.read_bytes() == b"read me\n"
    assert file_id(existing) == fid
    # No log line is asked for here: with the `ro` mount option the kernel refuses these writes itself.
    m.assert_unchanged(before)
    settled_snapshot(m)
    m.assert_consistent(m.baseline)
