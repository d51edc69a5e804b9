"""Crashes and outages: SIGKILL mid-upload, the interrupted-commit windows, an S3 server that goes away."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from s3filesfs.access import OPERATOR
from s3filesfs.metadata import MetadataStore
from tests.daemon.conftest import write
from tests.helpers import wait_for

XATTR = "user.openai.file_id"


def xattr_id(path) -> str | None:
    """The id the file's xattr shows, None if it has none (a filesystem without xattrs fails)."""
    try:
        return os.getxattr(path, XATTR).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def make_files(folder, count, size):
    files = {}
    for number in range(count):
        data = (f"{number:05}".encode() * (size // 5 + 1))[:size]
        write(folder / f"part-{number:03}.bin", data)
        files[f"part-{number:03}.bin"] = data
    return files


def assert_store_matches(world, daemon, expected: dict[str, bytes]):
    listed = daemon.listed()
    assert sorted(f["filename"] for f in listed) == sorted(expected)  # each name exactly once
    objects = world.objects()
    assert len(objects) == len(expected)  # no object uploaded twice, none left behind
    names = {f["id"]: f["filename"] for f in listed}
    assert {names[key]: body for key, body in objects.items()} == expected
    assert daemon.files.check().clean


def test_sigkill_during_uploads_then_restart(env, daemon_process, tmp_path):
    world = env(sync={"workers": 4})
    proc = daemon_process(world, tmp_path / "daemon-1.log")
    source = tmp_path / "source"
    expected = make_files(source, 200, 128 * 1024)
    for name, data in expected.items():  # dropped one after another, like a big copy
        write(world.watch / "batch" / name, data)
    status = wait_for(lambda: (s := proc.status())["counts"]["this_run"].get("uploaded", 0) >= 10 and s,
                      60, "uploads to be under way", interval=0.01)
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    done_before = status["counts"]["this_run"].get("uploaded", 0)
    assert done_before < 200 and status["in_flight"], "the kill came too late to interrupt anything"

    restarted = world.start()  # the same config, in-process this time
    wait_for(lambda: len(restarted.listed()) >= 200, 60, "all 200 files after the restart")
    restarted.settle()
    assert_store_matches(world, restarted, expected)
    assert restarted.service.journal.counts() == {"done": 200}
    for entry in restarted.service.journal.all():  # the kill left no file showing a stale id
        assert xattr_id(world.watch / entry.path) == entry.file_id, entry.path


def test_commit_that_landed_before_a_crash_is_not_uploaded_again(env):
    world = env()
    daemon = world.start()
    daemon.stop()
    path = write(world.watch / "vision" / "a.png", b"\x89PNG one")
    st = path.stat()
    # The daemon died right after commit, before recording it as done.
    files, journal = daemon.files, daemon.service.journal
    pending = files.begin("a.png", "vision")
    journal.begin_upload("vision/a.png", "vision", pending.id, st.st_size, st.st_mtime_ns)
    pending.write(b"\x89PNG one")
    journal.pending_content("vision/a.png", "sha-recorded-before-commit")
    pending.commit()

    daemon = world.start()
    wait_for(lambda: daemon.entry("vision/a.png").state == "done", 20, "the pending id to be resolved")
    daemon.settle()
    assert daemon.entry("vision/a.png").file_id == pending.id
    assert daemon.service.uploader.stats["uploaded"] == 0
    assert daemon.service.uploader.stats["recovered"] == 1
    assert list(world.objects()) == [pending.id]
    assert daemon.files.check().clean


def test_body_without_row_left_by_a_crash_is_removed_and_uploaded_again(env):
    world = env()
    daemon = world.start()
    daemon.stop()
    path = write(world.watch / "vision" / "b.png", b"\x89PNG two")
    st = path.stat()
    files, journal = daemon.files, daemon.service.journal
    pending = files.begin("b.png", "vision")
    journal.begin_upload("vision/b.png", "vision", pending.id, st.st_size, st.st_mtime_ns)
    pending.abort()
    # The object had reached the bucket, but the row never did.
    world.server.client().put_object(Bucket=world.bucket, Key=pending.id, Body=b"\x89PNG two")

    daemon = world.start()
    wait_for(lambda: daemon.listed(), 20, "the upload after the restart")
    daemon.settle()
    [file] = daemon.listed()
    assert file["id"] != pending.id
    assert world.objects() == {file["id"]: b"\x89PNG two"}
    assert daemon.files.check().clean


def test_s3_server_outage_loses_nothing(env, own_s3_server):
    world = env(server=own_s3_server, sync={"max_retries": 100})
    daemon = world.start()
    assert daemon.files.check().clean  # the bucket exists and the store has checked it once
    own_s3_server.stop()
    expected = make_files(world.watch / "user_data", 5, 1000)
    wait_for(lambda: {f["path"] for f in daemon.status()["recent_failures"]} == {f"user_data/{n}" for n in expected},
             30, "every upload to fail while the server is down")
    wait_for(lambda: all(e.state == "retrying" for e in daemon.service.journal.all())
             and len(daemon.service.journal.all()) == 5, 20, "the journal to show the retries")
    # moto keeps its data in memory: the restarted server is empty; the daemon's first attempts get
    # NoSuchBucket and it re-creates the bucket (auto_create_bucket) instead of failing forever.
    own_s3_server.start()
    wait_for(lambda: len(daemon.listed()) == 5, 60, "the uploads after the server came back")
    daemon.settle()
    assert_store_matches(world, daemon, expected)
    assert daemon.service.journal.counts() == {"done": 5}
    assert daemon.status()["counts"]["this_run"]["failed_attempts"] >= 5


def test_sigterm_during_a_large_upload_then_restart(env, daemon_process, tmp_path):
    world = env()
    proc = daemon_process(world, tmp_path / "daemon-1.log")
    body = bytes(range(256)) * (48 * 1024 * 4)  # 48 MiB: several multipart parts
    write(tmp_path / "big.bin", body)
    (tmp_path / "big.bin").rename(world.watch / "fine-tune" / "big.bin")
    wait_for(lambda: any(item.get("state") == "uploading" for item in proc.status()["in_flight"]), 30,
             "the upload to be under way", interval=0.01)
    assert proc.kill(signal.SIGTERM) == 0  # finished or cleanly abandoned, and exit 0
    s3 = world.server.client()
    assert s3.list_multipart_uploads(Bucket=world.bucket).get("Uploads", []) == []
    from s3filesfs.metadata import MetadataStore

    entry = MetadataStore(world.db).journal_get(world.settings().host_id, "fine-tune/big.bin")
    assert entry is not None
    # Either it finished (done, one object) or it was abandoned (no pending id, no object).
    assert (entry["state"], entry["pending_id"], len(world.object_keys())) in (
        ("done", None, 1), ("interrupted", None, 0)), entry

    daemon = world.start()
    wait_for(lambda: daemon.listed(), 60, "the upload to be completed after the restart")
    daemon.settle()
    [file] = daemon.listed()
    assert file["bytes"] == len(body)
    assert world.objects() == {file["id"]: body}
    assert daemon.entry("fine-tune/big.bin").pending_id is None
    assert daemon.files.check().clean


# A daemon that SIGKILLs itself at one chosen point of an upload: the state it leaves is made by
# the real code, up to the exact step a kill can interrupt.
KILLED_AT = """
import os, signal, sys

from s3filesfs.cli import main
from s3filesfs.daemon import uploader
from s3filesfs.daemon.journal import Journal


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


point = sys.argv.pop(1)
if point == "registered":  # the row is in and the journal promoted; the xattr is next
    uploader._set_xattr = die
elif point == "committed":  # the row is in; the journal still holds the id as pending
    Journal.promote = die
else:
    raise SystemExit(f"unknown kill point {point}")
main(args=sys.argv[1:], prog_name="s3filesfs")
"""


def run_until_killed(world, point, tmp_path) -> int:
    launcher = tmp_path / "killed_at.py"
    launcher.write_text(KILLED_AT)
    with open(tmp_path / f"daemon-killed-{point}.log", "ab") as log:
        process = subprocess.run([sys.executable, str(launcher), point, "--config", str(world.config_path), "daemon"],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60)
    return process.returncode


class AttribEvents(FileSystemEventHandler):
    """Attribute changes (an xattr write among them) seen on one file by a watcher of our own."""

    def __init__(self, path):
        self.path = str(path)
        self.seen = []
        self._observer = Observer()
        self._observer.schedule(self, str(os.path.dirname(path)))

    def on_attrib(self, event):
        if os.fsdecode(event.src_path) == self.path:
            self.seen.append(time.monotonic())

    def __enter__(self):
        self._observer.start()
        return self

    def __exit__(self, *exc):
        self._observer.stop()
        self._observer.join(10)


@pytest.mark.parametrize("replacing", [False, True], ids=["new-file", "replacing"])
@pytest.mark.parametrize("point", ["registered", "committed"])
def test_sigkill_before_the_xattr_is_written_is_repaired_at_restart(env, tmp_path, point, replacing):
    world = env()
    path = world.watch / "batch" / "data.jsonl"
    old_id = None
    if replacing:
        daemon = world.start()
        write(path, b'{"v": 1}\n')
        old_id = wait_for(lambda: xattr_id(path), 20, "the first version's id in the xattr")
        daemon.settle()
        daemon.stop()
    write(path, b'{"v": 2}\n')  # changed while no daemon ran: the next one uploads it at start

    assert run_until_killed(world, point, tmp_path) == -signal.SIGKILL
    metadata = MetadataStore(world.db)
    entry = metadata.journal_get(world.settings().host_id, "batch/data.jsonl")
    assert entry is not None
    if point == "registered":
        new_id = entry["file_id"]
        assert entry["pending_id"] is None
    else:
        new_id = entry["pending_id"]
        assert entry["file_id"] == old_id
    assert new_id and new_id != old_id and metadata.get(new_id, viewer=OPERATOR) is not None  # the upload is registered
    assert xattr_id(path) == old_id  # what the kill left: the previous id, or none

    daemon = world.start()
    wait_for(lambda: xattr_id(path) == new_id, 20, "the xattr to show the registered id")
    daemon.settle()
    assert daemon.entry("batch/data.jsonl").file_id == new_id
    assert daemon.entry("batch/data.jsonl").pending_id is None
    assert daemon.service.uploader.stats["uploaded"] == 0  # repaired, not sent again
    assert world.objects() == {new_id: b'{"v": 2}\n'}  # and the replaced id is gone
    assert daemon.files.check().clean

    # Our own xattr write is no write of content: nothing waits for a close that never comes ...
    assert "batch/data.jsonl" not in daemon.service.uploader._writing
    # ... and a rescan finds the xattr right and leaves the file alone (no event, no ctime change).
    ctime = path.stat().st_ctime_ns
    with AttribEvents(path) as events:
        assert daemon.service.reconcile() == 1
        daemon.settle()
        time.sleep(0.3)  # let any event the rescan caused arrive
        quiet_until = time.monotonic()
        os.setxattr(path, XATTR, new_id.encode())  # a write of the same value is seen, though
        wait_for(lambda: events.seen, 5, "the watcher to see an xattr write")
    assert all(seen > quiet_until for seen in events.seen), "the rescan wrote the xattr again"
    assert path.stat().st_ctime_ns == ctime
    assert xattr_id(path) == new_id
