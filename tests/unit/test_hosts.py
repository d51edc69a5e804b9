"""Several hosts on one store, without a kernel: the host id, the journal keyed by host, the old
journal's migration, and what a host may clean up or settle of what another host left.

Two hosts are simulated as the product itself allows: services (or processes) configured with
different host ids on this one machine, which must then treat each other as other hosts.
"""

import io
import os
import subprocess
import sys

import pytest

from s3filesfs import config
from s3filesfs.daemon.journal import FAILED, Journal
from s3filesfs.errors import ConfigError, NotFound
from s3filesfs.files import ORPHAN_GRACE, SETTLE_LEASE, FileService
from s3filesfs.fs import records, staging
from s3filesfs.metadata import MetadataStore
from s3filesfs.model import new_file_id
from s3filesfs.processes import default_host, is_running, this_process
from tests.unit.stores import EPOCH, assert_clean

# What the previous version created for its journal (SQLAlchemy's DDL for its declaration),
# keyed by path alone.
OLD_JOURNAL_DDL = """CREATE TABLE s3filesfs_journal (
    path VARCHAR NOT NULL, purpose VARCHAR, state VARCHAR, file_id VARCHAR, size BIGINT, mtime_ns BIGINT,
    sha256 VARCHAR, pending_id VARCHAR, pending_size BIGINT, pending_mtime_ns BIGINT, pending_sha256 VARCHAR,
    old_id VARCHAR, attempts INTEGER, error VARCHAR, updated_at {wide}, PRIMARY KEY (path))"""
OLD_JOURNAL_INDEX = "CREATE INDEX s3filesfs_journal_state ON s3filesfs_journal (state)"


# --- the host id -------------------------------------------------------------------------------


def test_host_id_defaults_to_the_hostname_and_can_be_set(tmp_path, monkeypatch):
    assert config.load().host_id == default_host()
    path = tmp_path / "config.yaml"
    path.write_text("host_id: build-7\n")
    assert config.load(path).host_id == "build-7"
    assert config.load(path).masked()["host_id"] == "build-7"  # `config show` says who it is
    monkeypatch.setenv("S3FILESFS_HOST_ID", "from-env")
    assert config.load(path).host_id == "from-env"


@pytest.mark.parametrize("value, problem", [
    ("''", "host_id must not be empty"),
    ("a:b", "host_id must not contain ':' or '/'"),
    ("racks/7", "host_id must not contain ':' or '/'"),
    ("'  padded'", "host_id must be printable, without leading or trailing spaces"),
])
def test_a_bad_host_id_is_refused_naming_the_key(tmp_path, value, problem):
    path = tmp_path / "config.yaml"
    path.write_text(f"host_id: {value}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert f"config error in {path}: {problem}" in str(caught.value)


def test_an_owner_is_judged_only_by_its_own_host():
    mine = this_process("host-a")
    assert mine.startswith("host-a:")
    assert is_running(mine, "host-a") is True
    assert is_running(mine, "host-b") is None  # the same process, but another host to host-b
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead = f"host-a:{ended.stdout.strip()}:1"
    assert is_running(dead, "host-a") is False
    assert is_running(dead, "host-b") is None


# --- the journal, one host's at a time ----------------------------------------------------------


def test_two_hosts_journals_with_the_same_paths_do_not_clash(metadata_db):
    store = MetadataStore(metadata_db.location)
    a, b = Journal(store, "host-a"), Journal(store, "host-b")
    a.begin_upload("assistants/notes.txt", "assistants", "file-a", 3, 1)
    b.begin_upload("assistants/notes.txt", "assistants", "file-b", 5, 2)
    entry_a, entry_b = a.get("assistants/notes.txt"), b.get("assistants/notes.txt")
    assert entry_a is not None and entry_b is not None
    assert (entry_a.host, entry_a.pending_id, entry_a.pending_size) == ("host-a", "file-a", 3)
    assert (entry_b.host, entry_b.pending_id, entry_b.pending_size) == ("host-b", "file-b", 5)
    a.promote(entry_a)
    b.attempt_failed("assistants/notes.txt", "assistants", 9, "S3 is down", final=True)
    assert a.counts() == {"done": 1} and b.counts() == {FAILED: 1}
    assert a.failures() == [] and [f["error"] for f in b.failures()] == ["S3 is down"]
    assert [e.file_id for e in a.all()] == ["file-a"] and [e.pending_id for e in b.all()] == ["file-b"]
    b.forget("assistants/notes.txt")
    assert b.get("assistants/notes.txt") is None and b.all() == []
    assert a.get("assistants/notes.txt") is not None  # host-a's entry is not host-b's to forget


def test_an_old_journal_is_rebuilt_keyed_by_host_with_its_rows(metadata_db):
    wide = "BIGINT" if metadata_db.engine == "postgres" else "INTEGER"
    with metadata_db.plain() as conn:
        conn.execute(OLD_JOURNAL_DDL.format(wide=wide))
        conn.execute(OLD_JOURNAL_INDEX)
        conn.execute("INSERT INTO s3filesfs_journal (path, purpose, state, file_id, size, mtime_ns, sha256, "
                     "attempts, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     ("batch/a.jsonl", "batch", "done", "file-1", 10, 111, "ab" * 32, 0, EPOCH))
        conn.execute("INSERT INTO s3filesfs_journal (path, purpose, state, pending_id, pending_size, "
                     "pending_mtime_ns, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     ("assistants/b.txt", "assistants", "uploading", "file-2", 20, 222, EPOCH))

    store = MetadataStore(metadata_db.location, host="upgraded")
    old = Journal(store, "upgraded")
    assert [(e.host, e.path, e.state, e.file_id, e.size, e.sha256, e.pending_id, e.pending_mtime_ns)
            for e in old.all()] == [
        ("upgraded", "assistants/b.txt", "uploading", None, None, None, "file-2", 222),
        ("upgraded", "batch/a.jsonl", "done", "file-1", 10, "ab" * 32, None, None)]
    other = Journal(store, "other")
    assert other.all() == [] and other.get("batch/a.jsonl") is None
    other.begin_upload("batch/a.jsonl", "batch", "file-3", 1, 1)  # the same path, another host: allowed
    kept = old.get("batch/a.jsonl")
    assert kept is not None and kept.file_id == "file-1"

    MetadataStore(metadata_db.location, host="later")  # opened again: nothing moves any more
    assert [e.path for e in old.all()] == ["assistants/b.txt", "batch/a.jsonl"]
    assert Journal(store, "later").all() == []
    with metadata_db.plain() as conn:
        columns = [name for name, _, _ in conn.columns("s3filesfs_journal")]
        if metadata_db.engine == "sqlite":
            indexes = {row["name"] for row in conn.query(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 's3filesfs_journal'")}
        else:
            indexes = {row["indexname"] for row in conn.query(
                "SELECT indexname FROM pg_indexes WHERE tablename = 's3filesfs_journal'")}
        tables = {row["name"] for row in conn.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'" if metadata_db.engine == "sqlite" else
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()")}
    assert columns[:2] == ["host", "path"]
    assert "s3filesfs_journal_host_state" in indexes and "s3filesfs_journal_state" not in indexes
    assert not {name for name in tables if name.startswith("s3filesfs_journal_")}  # no half-done copy left


# --- what one host may clean up of another's ----------------------------------------------------


def two_hosts(backend) -> tuple[FileService, FileService]:
    service = backend.service
    a = FileService(service.metadata, service.blobs, clock=service.clock, host="host-a")
    b = FileService(MetadataStore(service.metadata.location), service.blobs, clock=service.clock, host="host-b")
    return a, b


def test_abandoned_uploads_are_reaped_only_by_their_own_host(local_backend):
    a, b = two_hosts(local_backend)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = ended.stdout.strip()
    left = {}
    for host in ("host-a", "host-b"):
        file_id = new_file_id()
        writer = a.blobs.writer(file_id, {})
        writer.write(b"cut off")
        writer.commit()  # the object went up, the row never did: what a crash leaves
        a.metadata.intent_add(file_id, f"{host}:{dead_pid}:1", a.now())
        left[host] = file_id
    running_elsewhere = b.begin("live.txt", "assistants")  # b's, under way in this very process
    running_elsewhere.write(b"still coming")

    assert a.reap_abandoned() == [left["host-a"]]
    assert {i["id"] for i in a.metadata.intents()} == {left["host-b"], running_elsewhere.id}
    assert a.blobs.head(left["host-b"]) is not None  # host-b's leftover: host-a cannot tell, so keeps it
    assert b.reap_abandoned() == [left["host-b"]]
    running_elsewhere.commit()
    assert_clean(a)


def test_only_the_lease_holder_settles_rows_missing_their_object(local_backend):
    a, b = two_hosts(local_backend)
    file = a.create(io.BytesIO(b"gone soon"), "lost.txt", "assistants")
    local_backend.remove_object(file.id)
    with pytest.raises(NotFound):  # the row is young: hidden, not deleted
        a.read(file.id, 0, 1)
    assert a.metadata.is_missing(file.id)
    local_backend.clock.advance(ORPHAN_GRACE + 1)

    assert b.hold_lease(SETTLE_LEASE, "someone else", 60)  # another process is settling right now
    assert a.list().data == []
    assert a.has_row(file.id) and a.metadata.is_missing(file.id)  # left to the holder, still hidden
    b.release_lease(SETTLE_LEASE, "someone else")
    assert a.list().data == []
    assert not a.has_row(file.id) and not a.metadata.is_missing(file.id)  # settled once, by a
    lease = a.metadata.lease(SETTLE_LEASE)
    assert lease is not None and lease["expires_at"] == 0  # and handed back at once


def test_retry_and_recovery_take_only_their_own_hosts_staging_records(tmp_path, local_backend):
    a, b = two_hosts(local_backend)
    folder = tmp_path / "staging"
    folder.mkdir()
    for token, host in (("mine", "host-a"), ("theirs", "host-b"), ("older", None)):
        (folder / f"{token}.data").write_bytes(f"{token}\n".encode())
        record = {"purpose": "assistants", "filename": f"{token}.txt", "replaces": None, "state": "failed",
                  "error": "S3 was down", "bytes": 0, "uploading_id": None, "store": a.location}
        if host is not None:
            record["host"] = host
        records.write_record(folder, token, record)
    # host-b's upload that registered before its mount stopped: host-b's mount finishes it, not host-a's.
    registered = b.create(io.BytesIO(b"done\n"), "done.txt", "assistants")
    (folder / "finished.data").write_bytes(b"done\n")
    records.write_record(folder, "finished", {"purpose": "assistants", "filename": "done.txt", "replaces": None,
                                              "state": "uploading", "error": None, "bytes": 5,
                                              "uploading_id": registered.id, "store": a.location,
                                              "host": "host-b"})

    assert sorted(r.token for r in records.waiting(folder, a.location, "host-a")) == ["mine", "older"]
    area = staging.Staging(folder, max_bytes=1 << 20)
    area.claim(a)
    assert (folder / "finished.json").exists() and area.used == sum(
        p.stat().st_size for p in folder.glob("*.data"))
    done, failing = records.retry(a, folder)
    assert failing == [] and sorted(f.filename for f in done) == ["mine.txt", "older.txt"]
    assert sorted(p.name for p in folder.glob("*.json")) == ["finished.json", "theirs.json"]
    done, failing = records.retry(b, folder)
    assert failing == [] and [f.filename for f in done] == ["theirs.txt"]
    assert list(folder.glob("*.json")) == [] and list(folder.glob("*.data")) == []
    assert sorted(f.filename for f in a.iter_all()) == ["done.txt", "mine.txt", "older.txt", "theirs.txt"]
    assert_clean(a)


def test_a_process_configured_as_another_host_is_another_host(tmp_path):
    """Two processes on this machine with different host ids: the second does not reap an upload
    the first was killed in, though its pid is plainly dead here."""
    flags = {"data_dir": str(tmp_path / "data")}
    code = (
        "import sys, os, signal\n"
        "from s3filesfs import config\n"
        "from s3filesfs.files import open_service\n"
        f"service = open_service(config.load(flags={flags!r}))\n"
        "pending = service.begin('cut.txt', 'assistants')\n"
        "pending.write(b'part')\n"
        "print(pending.id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env_a = {**os.environ, "S3FILESFS_HOST_ID": "host-a"}
    result = subprocess.run([sys.executable, "-c", code], env=env_a, capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    cut = result.stdout.strip()
    reap = ("from s3filesfs import config\nfrom s3filesfs.files import open_service\n"
            f"print(open_service(config.load(flags={flags!r})).reap_abandoned())\n")
    as_b = subprocess.run([sys.executable, "-c", reap], env={**env_a, "S3FILESFS_HOST_ID": "host-b"},
                          capture_output=True, text=True, timeout=60, check=True)
    assert as_b.stdout.strip() == "[]"
    as_a = subprocess.run([sys.executable, "-c", reap], env=env_a, capture_output=True, text=True, timeout=60,
                          check=True)
    assert as_a.stdout.strip() == repr([cut])
