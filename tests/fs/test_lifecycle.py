"""The mount's life: ``s3filesfs mount`` in the background and ``umount``, SIGTERM while a file is
being written, a dead mount mounted again, a second mount on a live one, and mounts that must not
start (a missing bucket, wrong credentials).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fs.mounting import Mount, dead_mount_at, mounted_at
from tests.fs.test_failures import StagedMount, staged
from tests.fs.test_writes import MiB, assert_registered, body, file_id, payload, rows_named, settled_snapshot
from tests.helpers import unique, wait_for
from tests.s3server import SECRET_KEY, MotoServer

PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}


def mount_pids(mountpoint: Path) -> list[int]:
    """Processes whose command line is an ``s3filesfs ... mount <mountpoint>``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "s3filesfs" in " ".join(words) and "mount" in words and str(mountpoint) in words:
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cleanup(m: Mount) -> None:
    """Whatever the test left: unmount and end the processes it started, by pid."""
    pids = mount_pids(m.mountpoint)
    m.stop()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        try:
            wait_for(lambda: not alive(pid), 10, f"pid {pid} gone")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
    if os.path.ismount(m.mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(m.mountpoint)], capture_output=True)
    shutil.rmtree(m.root, ignore_errors=True)


@pytest.fixture
def local_mount_setup(fuse):
    m = Mount("local")
    yield m
    cleanup(m)


def background_mount(m: Mount, *extra, check=True) -> subprocess.CompletedProcess:
    m.staging.mkdir(parents=True, exist_ok=True)
    return m.cli("mount", str(m.mountpoint), "--staging-dir", str(m.staging), *extra, check=check, timeout=60)


def test_background_mount_and_umount(local_mount_setup):
    m = local_mount_setup
    assert not m.mountpoint.exists()  # mount creates it
    started = time.monotonic()
    result = background_mount(m)
    assert result.returncode == 0
    assert os.path.ismount(m.mountpoint), "mount returned before the mountpoint was mounted"
    assert time.monotonic() - started < 30
    assert PURPOSES <= set(os.listdir(m.mountpoint))
    baseline = m.snapshot()
    pids = mount_pids(m.mountpoint)
    assert len(pids) == 1, pids
    log = m.data_dir / "mount.log"
    assert log.exists() and log.stat().st_size > 0, "the background mount writes <data_dir>/mount.log"
    path = m / "assistants" / unique("bg")
    path.write_bytes(b"through a background mount\n")
    fid = assert_registered(m, path, b"through a background mount\n", "assistants")
    result = m.cli("umount", str(m.mountpoint), check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(m.mountpoint)
    assert not alive(pids[0]), "umount returned while the mount process still ran"
    assert m.rows()[fid]["bytes"] == len(b"through a background mount\n")
    # Mounted again on the same folder and staging: the file is there.
    background_mount(m)
    assert (m / "assistants" / path.name).read_bytes() == b"through a background mount\n"
    m.cli("umount", str(m.mountpoint), timeout=60)
    assert not os.path.ismount(m.mountpoint)
    settled_snapshot(m)
    m.assert_consistent(baseline)


def test_umount_of_a_folder_not_mounted_fails_clearly(local_mount_setup):
    m = local_mount_setup
    m.mountpoint.mkdir(parents=True)
    result = m.cli("umount", str(m.mountpoint), check=False, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_background_mount_log_file_option(local_mount_setup, tmp_path):
    m = local_mount_setup
    log = tmp_path / "logs" / "fs.log"
    log.parent.mkdir()
    background_mount(m, "--log-file", str(log))
    assert os.path.ismount(m.mountpoint)
    wait_for(lambda: log.exists() and log.stat().st_size > 0, 5, "the --log-file written")
    m.cli("umount", str(m.mountpoint), timeout=60)
    assert not os.path.ismount(m.mountpoint)


def test_sigterm_while_closing_finishes_upload(s3_server, fuse):
    """SIGTERM while close() is uploading: the upload completes, close() returns 0, exit 0."""
    m = Mount("s3", s3_server)
    try:
        m.start()
        assert m.process is not None
        baseline = m.snapshot()
        name = unique("closing", ".bin")
        data = payload(32 * MiB + 5, "closing")
        f = open(m / "batch" / name, "wb")
        # The last byte first: not sequential, so the whole upload happens in close(), which takes a while.
        f.seek(len(data) - 1)
        f.write(data[-1:])
        f.seek(0)
        for start in range(0, len(data) - 1, MiB):
            f.write(data[start:min(start + MiB, len(data) - 1)])
        f.flush()
        errors = []

        def closer():
            try:
                f.close()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=closer)
        thread.start()
        # close() is uploading once a multipart upload for it is open in the bucket (or it is still
        # running a moment later).
        deadline = time.monotonic() + 0.3
        while thread.is_alive() and not m.pending_uploads() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert thread.is_alive(), "close() returned before SIGTERM could land; the test needs a slower upload"
        m.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert not errors, f"close() failed after SIGTERM: {errors!r}"
        assert m.process.wait(60) == 0, m.log_tail()
        assert not os.path.ismount(m.mountpoint)
        matches = rows_named(m, name, "batch")
        assert len(matches) == 1, matches
        assert body(m, matches[0]["id"]) == data
        m.process = None
        settled_snapshot(m)
        m.assert_consistent(baseline)
    finally:
        cleanup(m)


def test_sigterm_while_writing_finishes_upload(s3_server, fuse):
    m = Mount("s3", s3_server)
    try:
        m.start()
        assert m.process is not None
        baseline = m.snapshot()
        name = unique("inflight", ".bin")
        data = payload(24 * MiB + 3, "sigterm")
        halfway, errors = threading.Event(), []

        def writer():
            try:
                with open(m / "batch" / name, "wb") as f:
                    for start in range(0, len(data), MiB):
                        f.write(data[start:start + MiB])
                        if start >= 10 * MiB:
                            halfway.set()
                            time.sleep(0.02)
            except BaseException as exc:
                errors.append(exc)
            finally:
                halfway.set()

        thread = threading.Thread(target=writer)
        thread.start()
        assert halfway.wait(60)
        m.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, f"the write failed after SIGTERM: {errors!r}"
        code = m.process.wait(60)
        assert code == 0, m.log_tail()
        assert not os.path.ismount(m.mountpoint)
        matches = rows_named(m, name, "batch")
        assert len(matches) == 1, matches
        assert matches[0]["bytes"] == len(data)
        assert body(m, matches[0]["id"]) == data
        m.process = None
        settled_snapshot(m)
        m.assert_consistent(baseline)
    finally:
        cleanup(m)


def test_sigint_unmounts_and_exits_0(local_mount_setup):
    m = local_mount_setup
    m.start()
    path = m / "assistants" / unique("before-sigint")
    path.write_bytes(b"kept\n")
    fid = file_id(path)
    m.process.send_signal(signal.SIGINT)
    assert m.process.wait(30) == 0, m.log_tail()
    m.process = None
    assert not os.path.ismount(m.mountpoint)
    assert m.rows()[fid]["bytes"] == 5


def test_dead_mount_is_mounted_again(local_mount_setup):
    m = local_mount_setup
    planted = m.plant("survivor.txt", "assistants", b"still here\n")
    m.start()
    m.process.kill()
    m.process.wait(10)
    m.process = None
    try:
        os.stat(m.mountpoint)  # auto_unmount may already have cleaned it
    except OSError as exc:
        assert exc.errno == errno.ENOTCONN, exc
    result = background_mount(m, check=False)
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(m.mountpoint)
    assert (m / "assistants" / "survivor.txt").read_bytes() == b"still here\n"
    assert file_id(m / "assistants" / "survivor.txt") == planted.id
    m.cli("umount", str(m.mountpoint), timeout=60)
    assert not os.path.ismount(m.mountpoint)


def fusermount_helpers(mountpoint: Path) -> list[int]:
    """The ``fusermount3`` helpers libfuse keeps beside a mount for ``auto_unmount``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith("fusermount") and str(mountpoint) in argv:
            pids.append(int(entry))
    return pids


@pytest.fixture
def staged_local_mount(fuse):
    m = StagedMount("local")
    yield m
    cleanup(m)


def test_killed_while_writing_keeps_the_bytes_staged(staged_local_mount):
    m = staged_local_mount
    m.start()
    name = unique("killed")
    f = open(m / "assistants" / name, "wb")
    f.write(b"x" * 100_000)
    f.flush()
    m.process.kill()
    m.process.wait(10)
    m.process = None
    with pytest.raises(OSError):
        f.close()
    assert not rows_named(m, name)
    assert [(e["filename"], e["bytes"]) for e in staged(m)] == [(name, 100_000)]
    m.start()
    assert [(e["filename"], e["bytes"]) for e in staged(m)] == [(name, 100_000)]
    assert not rows_named(m, name)
    assert [e["state"] for e in staged(m)] == ["interrupted"]
    # It may be incomplete: a plain `retry` leaves it, and says so.
    result = m.cli("retry", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to retry" in result.stdout and "1 interrupted file(s)" in result.stderr
    assert not rows_named(m, name)
    # Named, it is registered with what was written before the kill, and then shown.
    result = m.cli("retry", f"assistants/{name}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert staged(m) == []
    wait_for(lambda: name in os.listdir(m / "assistants"), 5, "the retried file shown")
    assert_registered(m, m / "assistants" / name, b"x" * 100_000, "assistants")


def test_killed_overwrite_dropped_keeps_the_old_file(staged_local_mount):
    """`retry --drop` discards what a killed mount left; the file it would have replaced stays."""
    m = staged_local_mount
    m.start()
    name = unique("dropped")
    path = m / "assistants" / name
    path.write_bytes(b"version 1\n")
    old = file_id(path)
    f = open(path, "wb")
    f.write(b"y" * 100_000)
    f.flush()
    # Still being written by a running mount: not waiting, so not dropped.
    busy = m.cli("retry", "--drop", f"assistants/{name}", check=False)
    assert busy.returncode == 1 and "nothing waits in staging" in busy.stderr, busy.stdout + busy.stderr
    m.process.kill()
    m.process.wait(10)
    m.process = None
    with pytest.raises(OSError):
        f.close()
    assert [(e["filename"], e["replaces"]) for e in staged(m)] == [(name, old)]
    result = m.cli("retry", "--drop", f"assistants/{name}", "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(e["purpose"], e["filename"], e["bytes"]) for e in json.loads(result.stdout)["dropped"]] == [
        ("assistants", name, 100_000)]
    assert staged(m) == []
    assert not [p for p in m.staged_files() if p.endswith((".data", ".json"))], m.staged_files()
    again = m.cli("retry", "--drop", f"assistants/{name}", check=False)
    assert again.returncode == 1 and f"assistants/{name}" in again.stderr, again.stderr
    assert m.cli("retry").stdout.strip() == "nothing to retry"
    m.start()
    assert file_id(path) == old
    assert_registered(m, path, b"version 1\n", "assistants")


@pytest.fixture
def staged_s3_mount(fuse, own_s3_server):
    m = StagedMount("s3", own_s3_server)
    yield m
    cleanup(m)


def test_killed_mid_multipart_upload_leaves_no_parts_after_retry_or_drop(staged_s3_mount, own_s3_server):
    """A mount killed while two big files stream up leaves two multipart uploads in the bucket,
    each recorded before it began: the next `retry --drop` (or `retry`) removes both, and the
    interrupted files wait until named."""
    m = staged_s3_mount
    m.start()
    client = own_s3_server.client()

    def unfinished():
        return client.list_multipart_uploads(Bucket=m.bucket).get("Uploads", [])

    kept, dropped = unique("kept", ".bin"), unique("dropped", ".bin")
    data = payload(10 * MiB, "kept")
    writers = [open(m / "user_data" / name, "wb") for name in (kept, dropped)]
    for writer in writers:
        writer.write(data)  # more than one 8 MiB part: each has a multipart upload under way
        writer.flush()
    wait_for(lambda: len(unfinished()) == 2, 10, "two multipart uploads under way")
    m.process.kill()
    m.process.wait(10)
    m.process = None
    for writer in writers:
        with pytest.raises(OSError):
            writer.close()
    assert sorted(e["filename"] for e in staged(m)) == sorted([kept, dropped])
    assert all(e["state"] == "interrupted" for e in staged(m)), staged(m)
    result = m.cli("retry", "--drop", f"user_data/{dropped}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert unfinished() == []
    assert [e["filename"] for e in staged(m)] == [kept]
    result = m.cli("retry", f"user_data/{kept}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert staged(m) == []
    m.start()
    assert_registered(m, m / "user_data" / kept, data, "user_data")
    assert not (m / "user_data" / dropped).exists()


def test_stale_dead_mount_is_mounted_again(local_mount_setup):
    """A dead mount that answers ENOTCONN (what a crash leaves when nothing cleans up after it)."""
    m = local_mount_setup
    m.start()
    helpers = fusermount_helpers(m.mountpoint)
    for pid in helpers:  # the auto_unmount helper would clean up; without it the mount stays stale
        os.kill(pid, signal.SIGKILL)
    m.process.kill()
    m.process.wait(10)
    m.process = None
    if helpers:
        def dead():  # the root's attributes stay cached for a second; after that, ENOTCONN
            try:
                os.stat(m.mountpoint)
            except OSError as exc:
                return exc.errno == errno.ENOTCONN
            return False
        wait_for(dead, 5, "the dead mount to answer ENOTCONN")
    result = background_mount(m, check=False)
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(m.mountpoint)
    assert PURPOSES <= set(os.listdir(m.mountpoint))
    m.cli("umount", str(m.mountpoint), timeout=60)
    assert not os.path.ismount(m.mountpoint)


def stat_errno(path: Path) -> int | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.parametrize("when", ["at once", "once stat fails"])
@pytest.mark.parametrize("recover_with", ["stop", "start"])
def test_harness_recovers_from_a_killed_mount(local_mount_setup, recover_with, when):
    """The test harness's own lifecycle: after ``kill -9`` of the mount (and of the auto_unmount
    helper that would otherwise clean up), ``Mount.stop`` leaves no mount behind, and
    ``Mount.start``, with or without a ``stop`` first, mounts a working filesystem again.

    Both while the dead root's attributes are still cached (``os.path.ismount`` says True) and
    after (``os.stat`` fails with ENOTCONN, ``os.path.ismount`` says False).
    """
    m = local_mount_setup
    m.start()
    assert m.process is not None
    before = m / "assistants" / unique("before-kill")
    before.write_bytes(b"written before the kill\n")
    helpers = fusermount_helpers(m.mountpoint)
    assert helpers, "no auto_unmount helper found: the kill below would not leave a dead mount"
    for pid in helpers:
        os.kill(pid, signal.SIGKILL)
    os.kill(m.process.pid, signal.SIGKILL)
    assert m.process.wait(10) == -signal.SIGKILL
    wait_for(lambda: dead_mount_at(m.mountpoint), 5, "the killed mount to answer ENOTCONN")
    with pytest.raises(OSError) as refused:
        os.listdir(m.mountpoint)
    assert refused.value.errno == errno.ENOTCONN
    if when == "once stat fails":
        wait_for(lambda: stat_errno(m.mountpoint) == errno.ENOTCONN, 5, "the cached attributes to expire")
        assert mounted_at(m.mountpoint) and not os.path.ismount(m.mountpoint)

    if recover_with == "stop":
        assert m.stop() == -signal.SIGKILL
        assert not mounted_at(m.mountpoint), "stop() left the dead mount behind"
        assert os.listdir(m.mountpoint) == []  # the plain, empty folder under it again
    m.start()
    assert mounted_at(m.mountpoint) and os.path.ismount(m.mountpoint)
    assert before.read_bytes() == b"written before the kill\n"
    after = m / "batch" / unique("after-restart")
    after.write_bytes(b"written after the restart\n")
    assert after.read_bytes() == b"written after the restart\n"
    assert m.rows()[file_id(after)]["filename"] == after.name
    assert m.stop() == 0
    assert not mounted_at(m.mountpoint)


def test_mount_on_live_mount_is_refused(local_mount_setup):
    m = local_mount_setup
    m.start()
    result = background_mount(m, check=False)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "already mounted" in (result.stderr + result.stdout)
    assert m.process.poll() is None, "the live mount must survive"
    assert PURPOSES <= set(os.listdir(m.mountpoint))
    assert len(mount_pids(m.mountpoint)) == 1
    foreground = m.cli("mount", str(m.mountpoint), "--foreground", "--staging-dir", str(m.staging),
                       check=False, timeout=60)
    assert foreground.returncode == 1 and "already mounted" in foreground.stderr + foreground.stdout


def _assert_refused(m: Mount, result: subprocess.CompletedProcess, *secrets, logs_on_stderr=False) -> str:
    """A refused mount: non-zero, one ``error:`` line (the only line, unless the mount logs to stderr)."""
    assert result.returncode not in (0, None), result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if logs_on_stderr:  # --foreground: the log goes to stderr too; the error is one line of its own
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1, f"expected a one-line error, got: {result.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not os.path.ismount(m.mountpoint)
    wait_for(lambda: not mount_pids(m.mountpoint), 10, "no mount process left")
    return lines[0]


def test_missing_bucket_without_auto_create(s3_server, fuse):
    m = Mount("s3", s3_server)
    try:
        env = {**m.env, "S3FILESFS_AUTO_CREATE_BUCKET": "false"}
        m.staging.mkdir(parents=True, exist_ok=True)
        for extra in ([], ["--foreground"]):
            result = subprocess.run(m.command("mount", str(m.mountpoint), "--staging-dir", str(m.staging), *extra),
                                    env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            line = _assert_refused(m, result, logs_on_stderr=bool(extra))
            assert result.returncode in (1, 3), (result.returncode, line)
            assert m.bucket and m.bucket in line and "does not exist" in line, line
    finally:
        cleanup(m)


def test_wrong_credentials(fuse):
    server = MotoServer(require_auth=True).start()
    m = Mount("s3", server)
    try:
        m.staging.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(m.command("mount", str(m.mountpoint), "--staging-dir", str(m.staging)),
                                env=m.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        line = _assert_refused(m, result, SECRET_KEY)
        assert result.returncode in (1, 3), (result.returncode, line)
        assert "access" in line.lower() or "credential" in line.lower(), line
    finally:
        cleanup(m)
        server.stop()


def test_unreachable_server(own_s3_server, fuse):
    m = Mount("s3", own_s3_server)
    own_s3_server.stop()
    try:
        m.staging.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(m.command("mount", str(m.mountpoint), "--staging-dir", str(m.staging)),
                                env=m.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        line = _assert_refused(m, result, SECRET_KEY)
        assert result.returncode == 3, (result.returncode, line)
    finally:
        cleanup(m)
