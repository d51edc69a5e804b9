"""Watching and uploading: a real watchdog observer, a real socket, a real moto server."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3filesfs.files import open_service
from tests.daemon.conftest import write
from tests.helpers import wait_for


def ids_by_name(daemon) -> dict[str, str]:
    return {f["filename"]: f["id"] for f in daemon.listed()}


def test_dropped_file_shows_up_with_its_id(env):
    world = env()
    daemon = world.start()
    for purpose in daemon.service.purposes:
        assert (world.watch / purpose).is_dir()
    write(world.watch / "batch" / "data.jsonl", b'{"a": 1}\n')

    listed = wait_for(lambda: [f for f in daemon.listed() if f["filename"] == "data.jsonl"], 20, "the file")
    file = listed[0]
    assert file["purpose"] == "batch" and file["bytes"] == 9 and file["object"] == "file"
    assert file["id"].startswith("file-") and len(file["id"]) == 37
    assert daemon.entry("batch/data.jsonl").file_id == file["id"]
    assert daemon.client.get(f"/v1/files/{file['id']}/content").content == b'{"a": 1}\n'
    assert world.objects() == {file["id"]: b'{"a": 1}\n'}
    try:
        assert os.getxattr(world.watch / "batch" / "data.jsonl", "user.openai.file_id") == file["id"].encode()
    except OSError as exc:  # a filesystem without user xattrs: the daemon must simply carry on
        assert exc.errno in (errno.EOPNOTSUPP, errno.EPERM)
    daemon.settle()
    assert daemon.files.check().clean


def test_temporary_names_wait_and_other_folders_are_reported(env):
    world = env()
    daemon = world.start()
    write(world.watch / "vision" / "photo.jpg.crdownload", b"partial")
    write(world.watch / "vision" / ".notes.txt.swp", b"swap")
    write(world.watch / "vision" / "draft.tmp", b"tmp")
    write(world.watch / "vision" / "backup~", b"old")
    write(world.watch / "vision" / ".photo.a1B2c3", b"rsync temp")
    write(world.watch / "holiday" / "x.txt", b"not a purpose")
    write(world.watch / "loose.txt", b"at the top")
    status = wait_for(lambda: (s := daemon.status()) and len(s["not_uploaded"]) == 2 and s, 20, "reports")
    assert {item["path"] for item in status["not_uploaded"]} == {"holiday/x.txt", "loose.txt"}
    # A browser finishing its download renames the partial file to its final name.
    os.rename(world.watch / "vision" / "photo.jpg.crdownload", world.watch / "vision" / "photo.jpg")
    wait_for(lambda: daemon.listed(), 20, "the renamed download")
    daemon.settle()
    assert [(f["filename"], f["bytes"]) for f in daemon.listed()] == [("photo.jpg", 7)]
    assert list(world.objects().values()) == [b"partial"]
    assert daemon.files.check().clean


def test_file_moved_in_from_outside_is_uploaded_after_settling(env, tmp_path):
    # A move from outside the watched tree arrives as a bare "created" event: no close will follow,
    # so the settle rule decides.
    world = env(sync={"settle_seconds": 0.5})
    daemon = world.start()
    outside = write(tmp_path / "elsewhere" / "report.pdf", b"%PDF-1.7 moved in")
    os.rename(outside, world.watch / "assistants" / "report.pdf")
    [file] = wait_for(lambda: daemon.listed(), 20, "the moved file")
    assert file["filename"] == "report.pdf" and file["purpose"] == "assistants"
    daemon.settle()
    assert world.objects() == {file["id"]: b"%PDF-1.7 moved in"}
    assert daemon.files.check().clean


def test_slow_writer_is_uploaded_once_and_complete(env):
    # Pauses between writes are longer than the settle time: only the close may trigger the upload.
    world = env(sync={"settle_seconds": 0.3})
    daemon = world.start()
    chunks = [bytes([65 + i]) * 50_000 for i in range(6)]
    path = world.watch / "fine-tune" / "train.jsonl"
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
            time.sleep(0.5)  # the writer's pace, not a wait for the daemon
            assert daemon.listed() == [], "uploaded while still being written"
    wait_for(lambda: daemon.listed(), 20, "the upload after close")
    daemon.settle()
    objects = world.objects()
    assert list(objects.values()) == [b"".join(chunks)]
    assert len(daemon.listed()) == 1
    assert daemon.service.uploader.stats["uploaded"] == 1
    assert daemon.files.check().clean


def test_copy_of_200_files_uploads_each_exactly_once(env, tmp_path):
    world = env()
    daemon = world.start()
    source = tmp_path / "source"
    expected = {}
    for number in range(200):
        data = f"file {number}\n".encode() * (number + 1)
        write(source / f"f{number:03}.txt", data)
        expected[f"f{number:03}.txt"] = data
    subprocess.run(["cp", "-r", f"{source}/.", str(world.watch / "user_data")], check=True)

    wait_for(lambda: len(daemon.listed()) >= 200, 60, "200 files listed")
    daemon.settle()
    listed = daemon.listed()
    assert sorted(f["filename"] for f in listed) == sorted(expected)
    objects = world.objects()
    assert len(objects) == 200
    by_id = {f["id"]: f["filename"] for f in listed}
    assert {by_id[key]: body for key, body in objects.items()} == expected
    assert daemon.service.uploader.stats["uploaded"] == 200
    assert daemon.files.check().clean


def test_edit_replaces_the_id_and_touch_does_not(env):
    world = env()
    daemon = world.start()
    path = write(world.watch / "assistants" / "notes.md", b"version one")
    first = wait_for(lambda: daemon.listed(), 20, "the first upload")[0]["id"]
    daemon.settle()

    os.utime(path, (time.time() + 5, time.time() + 5))  # touched, same bytes
    wait_for(lambda: daemon.entry("assistants/notes.md").mtime_ns == os.stat(path).st_mtime_ns,
             20, "the touch to be noticed")
    daemon.settle()
    assert [f["id"] for f in daemon.listed()] == [first]

    path.write_bytes(b"version two, longer")
    second = wait_for(lambda: (e := daemon.entry("assistants/notes.md")) and e.file_id != first and e.file_id,
                      20, "the new id")
    daemon.settle()
    assert [f["id"] for f in daemon.listed()] == [second]
    assert daemon.client.get(f"/v1/files/{first}").status_code == 404
    assert world.objects() == {second: b"version two, longer"}
    assert daemon.files.check().clean


@pytest.mark.parametrize("mirror", [False, True], ids=["keep", "delete"])
def test_removing_a_local_file(env, mirror):
    world = env(sync={"delete": mirror})
    daemon = world.start()
    path = write(world.watch / "evals" / "set.csv", b"a,b\n1,2\n")
    file_id = wait_for(lambda: daemon.listed(), 20, "the upload")[0]["id"]
    daemon.settle()
    path.unlink()
    wait_for(lambda: daemon.entry("evals/set.csv") is None, 20, "the journal to forget the file")
    daemon.settle()
    if mirror:
        assert daemon.listed() == []
        assert world.objects() == {}
        assert daemon.client.get(f"/v1/files/{file_id}").status_code == 404
    else:
        assert [f["id"] for f in daemon.listed()] == [file_id]
        assert list(world.objects()) == [file_id]
    assert daemon.files.check().clean


def test_restart_reconciles_what_changed_while_down(env):
    world = env(sync={"delete": True})
    daemon = world.start()
    for name in ("keep.txt", "change.txt", "remove.txt"):
        write(world.watch / "batch" / name, f"first {name}".encode())
    wait_for(lambda: len(daemon.listed()) == 3, 20, "three uploads")
    daemon.settle()
    before = ids_by_name(daemon)
    daemon.stop()

    write(world.watch / "batch" / "change.txt", b"changed while the daemon was down")
    (world.watch / "batch" / "remove.txt").unlink()
    write(world.watch / "batch" / "new.txt", b"added while down")
    write(world.watch / "vision" / "cat.png", b"\x89PNG")
    os.utime(world.watch / "batch" / "keep.txt", (time.time() + 3, time.time() + 3))  # touched only

    daemon = world.start()
    wait_for(lambda: set(ids_by_name(daemon)) == {"keep.txt", "change.txt", "new.txt", "cat.png"}, 30,
             "the reconciled listing")
    daemon.settle()
    after = ids_by_name(daemon)
    assert after["keep.txt"] == before["keep.txt"]
    assert after["change.txt"] != before["change.txt"]
    objects = world.objects()
    assert set(objects) == set(after.values())
    assert objects[after["change.txt"]] == b"changed while the daemon was down"
    assert daemon.service.uploader.stats["uploaded"] == 3  # change, new, cat: keep was never sent again
    assert daemon.files.check().clean


def test_sigterm_stops_cleanly_and_status_falls_back(env, daemon_process, tmp_path):
    world = env()
    drop = tmp_path / "Drop"  # --watch and --delete on the command line win over the config file
    proc = daemon_process(world, tmp_path / "daemon.log", ["--watch", str(drop), "--delete"])
    write(drop / "batch" / "one.txt", b"one")
    write(drop / "batch" / "two.txt", b"two")
    wait_for(lambda: proc.status()["counts"]["journal"].get("done") == 2, 20, "the uploads")
    assert proc.status()["delete"] is True
    (drop / "batch" / "two.txt").unlink()
    wait_for(lambda: proc.status()["counts"]["journal"] == {"done": 1}, 20, "the deletion")
    assert len(world.object_keys()) == 1
    cli = [str(Path(sys.executable).parent / "s3filesfs"), "--config", str(world.config_path)]
    running = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=30)
    assert running.returncode == 0 and "daemon running" in running.stdout
    listed_live = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=30)
    # Pointed at another database, ls must read that one, not ask the daemon about its own.
    elsewhere = subprocess.run([*cli, "--db-path", str(tmp_path / "other.db"), "ls"],
                               capture_output=True, text=True, timeout=30)
    assert elsewhere.returncode == 0 and "one.txt" not in elsewhere.stdout
    assert proc.kill(signal.SIGTERM) == 0
    assert not world.socket.exists()
    stopped = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 1
    assert "no daemon is running" in stopped.stdout and "1 done" in stopped.stdout
    listed_db = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=30)
    assert listed_live.returncode == listed_db.returncode == 0
    assert listed_live.stdout == listed_db.stdout and "one.txt" in listed_db.stdout
    assert open_service(world.settings()).check().clean

