"""``s3filesfs rebuild`` and ``s3filesfs check --repair``, run as subprocesses the way users run them,
on the real moto server and on the embedded local store."""

import json
import os
import pty
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from s3filesfs import config
from s3filesfs.files import open_service
from s3filesfs.model import new_file_id
from tests.unit.test_cli import SCRIPT, closed_port, ok, run


def full_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM openai_files ORDER BY id").fetchall()


def sql(db: Path, statement: str, *args) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement, args)


def delete_database(db: Path) -> None:
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)


@pytest.fixture
def bucket_config(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    db = tmp_path / "s3.db"
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(s3_server.settings_values(bucket, metadata_store={"type": "sqlite",
                                                                                    "db_path": str(db)})))
    return path, bucket, db


def test_rebuild_brings_back_every_row_of_a_deleted_database(bucket_config, s3_server, tmp_path):
    path, bucket, db = bucket_config
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"custom_id": 1}\n')
    (tmp_path / "c.bin").write_bytes(os.urandom(9 * 1024 * 1024 + 5))  # a multipart upload
    ids = [ok("--config", path, "upload", tmp_path / "a.txt", "-p", "assistants").strip(),
           ok("--config", path, "upload", tmp_path / "b.jsonl", "-p", "batch", "--expires-after", "7200").strip(),
           ok("--config", path, "upload", "-", "--filename", "ünïcode 100% name.txt", "-p", "user_data",
              stdin=b"from stdin").strip(),
           ok("--config", path, "upload", tmp_path / "c.bin", "-p", "fine-tune").strip()]
    # As the daemon and the mount write: begin (created when writing began), pieces, commit.
    service = open_service(config.load(path))
    pending = service.begin("through the mount.bin", "vision", created_at=int(time.time()) - 45)
    pending.write(b"part one, ")
    pending.write(b"part two")
    ids.append(pending.commit().id)
    service.metadata.close()
    before = full_rows(db)
    assert len(before) == 5

    delete_database(db)
    dry = run("--config", path, "rebuild")
    assert dry.returncode == 0, dry.stderr.decode()
    lines = dry.stdout.decode().splitlines()
    assert sorted(line.split()[2] for line in lines[:-1]) == sorted(ids)
    assert all(line.startswith("would register file-") for line in lines[:-1])
    assert lines[-1] == ("rebuild: 5 object(s), 5 to register, 0 already in the table; "
                         "run again with --apply to register")
    assert full_rows(db) == []  # a dry run registers nothing (on a database it had to create)

    applied = json.loads(ok("--config", path, "rebuild", "--apply", "--json"))
    assert applied["apply"] is True and applied["complete"] is True
    assert applied["counts"] == {"checked": 5, "objects": 5, "register": 5}
    assert sorted(action["id"] for action in applied["actions"]) == sorted(ids)
    assert full_rows(db) == before  # every column of every row, as it was

    again = ok("--config", path, "rebuild", "--apply")
    assert again == "rebuild: 5 object(s), 0 registered, 5 already in the table\n"
    assert full_rows(db) == before
    assert ok("--config", path, "check") == "bucket and table agree\n"

    # An object the seed wrote: no metadata, so it is only listed ...
    seed_id = new_file_id()
    s3_server.client().put_object(Bucket=bucket, Key=seed_id, Body=b"seed body")
    listed = json.loads(ok("--config", path, "rebuild", "--apply", "--json"))
    assert listed["actions"] == [{"action": "unlabelled", "id": seed_id, "detail": "no metadata (9 bytes)"}]
    assert listed["counts"] == {"checked": 6, "objects": 6, "present": 5, "unlabelled": 1}
    assert full_rows(db) == before
    # ... until the user says how to register it.
    out = ok("--config", path, "rebuild", "--apply", "--unlabelled-purpose", "assistants")
    assert out.splitlines()[0] == f"registered {seed_id}  assistants  9 B  {seed_id}"
    shown = json.loads(ok("--config", path, "info", seed_id, "--json"))
    assert (shown["filename"], shown["purpose"], shown["bytes"]) == (seed_id, "assistants", 9)
    assert abs(shown["created_at"] - time.time()) < 120
    assert ok("--config", path, "cat", seed_id) == "seed body"


def test_rebuild_refuses_bad_arguments_and_reports_storage_failures(tmp_path):
    for args in (["--unlabelled-purpose", "nope"], ["--workers", "0"], ["--workers", "65"]):
        assert run("rebuild", *args).returncode == 2, args
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run("--bucket", "files", "--endpoint-url", endpoint, "--db-path", tmp_path / "x.db", "rebuild",
                 env={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456", "AWS_SECRET_ACCESS_KEY": "hidden-secret"})
    assert result.returncode == 3
    assert f"S3 endpoint {endpoint} is unreachable" in result.stderr.decode()
    assert "hidden-secret" not in result.stderr.decode()


def test_rebuild_shows_its_progress_on_a_terminal_only(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    ok("upload", tmp_path / "a.txt", "-p", "assistants")
    master, slave = pty.openpty()
    process = subprocess.Popen([str(SCRIPT), "rebuild"], stdout=subprocess.PIPE, stderr=slave,
                               stdin=subprocess.DEVNULL, env=dict(os.environ))
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        shown += data
    os.close(master)
    assert process.wait(timeout=60) == 0
    assert process.stdout is not None and process.stdout.read().decode().startswith("rebuild: 1 object(s)")
    process.stdout.close()
    assert b"\rrebuild: 1 listed, 1 looked at, 0 to register, 1 present" in shown
    assert shown.endswith(b"\r\x1b[K")  # and cleared again
    piped = run("rebuild")
    assert piped.returncode == 0 and piped.stderr == b""


# --- check --repair ----------------------------------------------------------------------------


def test_check_repair_on_the_bucket_removes_old_rows_and_leaves_young_objects(bucket_config, s3_server, tmp_path):
    path, bucket, db = bucket_config
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    gone, young, kept = (ok("--config", path, "upload", tmp_path / "a.txt", "-p", "assistants").strip()
                         for _ in range(3))
    s3_server.client().delete_object(Bucket=bucket, Key=gone)
    sql(db, "UPDATE openai_files SET created_at = ? WHERE id = ?", int(time.time()) - 1000, gone)  # long ago
    sql(db, "DELETE FROM openai_files WHERE id = ?", young)  # its object was written a moment ago

    result = run("--config", path, "check", "--repair")
    assert result.returncode == 1, result.stderr.decode()  # something was left
    assert result.stdout.decode().splitlines() == [
        "bucket and table disagree:",
        f"  row without object: {gone}",
        f"  object without row: {young}",
        f"removed row: {gone} (its object is gone)",
        f"left: {young} (object younger than 300 s: its row may still be on its way)",
        "repair: 1 removed row; 1 left as they are",
    ]
    again = run("--config", path, "check", "--repair", "--json")
    assert again.returncode == 1
    report = json.loads(again.stdout)
    assert report == {"clean": False, "rows_without_objects": [], "objects_without_rows": [young],
                      "size_mismatches": [], "warnings": [],
                      "repair": {"actions": [{"action": "left", "id": young, "detail": "object younger than 300 s: "
                                              "its row may still be on its way"}], "counts": {"left": 1}}}
    keys = {item["Key"] for item in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {young, kept}
    assert json.loads(ok("--config", path, "info", kept, "--json"))["id"] == kept


def test_check_repair_on_the_local_store_registers_and_deletes_old_orphans(tmp_path):
    store = tmp_path / "data" / "s3filesfs" / "local"
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    lost_row = ok("upload", tmp_path / "a.txt", "-p", "batch", "--expires-after", "3600").strip()
    row = full_rows(store / "metadata.db")
    sql(store / "metadata.db", "DELETE FROM openai_files WHERE id = ?", lost_row)
    seed_id = new_file_id()
    (store / "objects" / seed_id).write_bytes(b"seed")
    long_ago = time.time() - 1000
    for key in (lost_row, seed_id):
        os.utime(store / "objects" / key, (long_ago, long_ago))

    result = run("check", "--repair")
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert f"registered: {lost_row} (batch/a.txt, from its metadata)" in lines
    assert (f"left: {seed_id} (it carries no metadata (written by the seed?); --delete-orphans deletes it, "
            "`s3filesfs rebuild --unlabelled-purpose` registers it)") in lines
    assert lines[-1] == "repair: 1 registered; 1 left as they are"
    assert full_rows(store / "metadata.db") == row  # the row as it was

    result = run("check", "--repair", "--delete-orphans")
    assert result.returncode == 0, result.stdout.decode()
    assert result.stdout.decode().splitlines()[-2:] == [f"deleted object: {seed_id} (4 bytes without a row)",
                                                        "repair: 1 deleted object"]
    assert not (store / "objects" / seed_id).exists()
    assert ok("check") == "bucket and table agree\n"
    assert ok("check", "--repair") == "bucket and table agree\nrepair: nothing to do\n"


@pytest.mark.parametrize("args", [["--delete-orphans"], ["--grace", "600"], ["--repair", "--grace", "10"],
                                  ["--repair", "--upload-grace", "299"]])
def test_check_repair_usage_errors_exit_2(args):
    result = run("check", *args)
    assert result.returncode == 2, result.stderr.decode()
