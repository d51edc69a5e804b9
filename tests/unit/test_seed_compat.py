"""Compatibility with the Llama Stack ``remote::s3`` files provider (the seed), seen from outside:
the table as plain ``sqlite3`` sees it, tables the seed created, and rows and objects the seed wrote.
"""

import io
import sqlite3
import time

import pytest

from s3filesfs import config
from s3filesfs.blobs.local import LocalBlobStore
from s3filesfs.errors import NotFound
from s3filesfs.files import ORPHAN_GRACE, FileService, open_service
from s3filesfs.metadata import MetadataStore
from tests.unit.stores import EPOCH, Clock, assert_clean

COLUMNS = [
    # name, declared type, primary key
    ("id", "VARCHAR", 1),
    ("filename", "VARCHAR", 0),
    ("purpose", "VARCHAR", 0),
    ("bytes", "INTEGER", 0),
    ("created_at", "INTEGER", 0),
    ("expires_at", "INTEGER", 0),
    ("access_attributes", "JSON", 0),
    ("owner_principal", "VARCHAR", 0),
]

# The table as the seed's SQLAlchemy store creates it on SQLite.
SEED_DDL = (
    "CREATE TABLE openai_files (\n"
    "\tid VARCHAR NOT NULL, \n"
    "\tfilename VARCHAR, \n"
    "\tpurpose VARCHAR, \n"
    "\tbytes INTEGER, \n"
    "\tcreated_at INTEGER, \n"
    "\texpires_at INTEGER, \n"
    "\taccess_attributes JSON, \n"
    "\towner_principal VARCHAR, \n"
    "\tPRIMARY KEY (id)\n"
    ")"
)

# An older seed's table, from before access control.
OLD_SEED_DDL = (
    "CREATE TABLE openai_files (\n"
    "\tid VARCHAR NOT NULL, \n"
    "\tfilename VARCHAR, \n"
    "\tpurpose VARCHAR, \n"
    "\tbytes INTEGER, \n"
    "\tcreated_at INTEGER, \n"
    "\texpires_at INTEGER, \n"
    "\tPRIMARY KEY (id)\n"
    ")"
)


def plain(db_path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    return conn


def local_service(tmp_path, clock=None) -> FileService:
    return FileService(MetadataStore(tmp_path / "files.db"), LocalBlobStore(tmp_path / "store"),
                       clock=clock or Clock())


def table_info(conn):
    return [(row["name"], row["type"], row["pk"]) for row in conn.execute("PRAGMA table_info(openai_files)")]


# --- (a) the table and the rows we write, through plain sqlite3 -------------------------------


def test_table_has_exactly_the_seed_columns(tmp_path):
    local_service(tmp_path)
    with plain(tmp_path / "files.db") as conn:
        assert table_info(conn) == COLUMNS
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        # Nothing of ours outside the s3filesfs_ namespace.
        assert all(name == "openai_files" or name.startswith("s3filesfs_") for name in names), names
        indexed = {row["name"]: [c["name"] for c in conn.execute(f"PRAGMA index_info({row['name']})")]
                   for row in conn.execute("PRAGMA index_list(openai_files)") if row["origin"] == "c"}
        assert ["created_at", "id"] in indexed.values()


def test_rows_follow_the_seed_conventions(tmp_path):
    service = local_service(tmp_path)
    batch = service.create(io.BytesIO(b"{}\n" * 7), "requests.jsonl", "batch")
    forever = service.create(io.BytesIO(b"notes"), "notes.txt", "assistants")
    short = service.create(io.BytesIO(b"x"), "x.txt", "vision", expires_after=3600)
    with plain(tmp_path / "files.db") as conn:
        rows = {row["id"]: row for row in conn.execute(
            "SELECT *, typeof(created_at) AS t_created, typeof(bytes) AS t_bytes, "
            "typeof(access_attributes) AS t_access FROM openai_files")}
    assert set(rows) == {batch.id, forever.id, short.id}
    for file in (batch, forever, short):
        row = rows[file.id]
        assert (row["t_created"], row["t_bytes"]) == ("integer", "integer")
        assert row["created_at"] == EPOCH
        stored = service.blobs.head(file.id)
        assert stored is not None
        assert row["bytes"] == file.bytes == stored.size
        assert row["owner_principal"] == ""
        assert (row["access_attributes"], row["t_access"]) == ("null", "text")
        assert (row["filename"], row["purpose"]) == (file.filename, file.purpose)
    assert rows[batch.id]["bytes"] == 21
    assert rows[batch.id]["expires_at"] == EPOCH + 2592000
    assert rows[forever.id]["expires_at"] == EPOCH + 108864000
    assert service.retrieve(forever.id).to_openai()["expires_at"] is None
    assert rows[short.id]["expires_at"] == EPOCH + 3600
    assert_clean(service)


# --- (b) tables the seed created --------------------------------------------------------------


def test_old_seed_table_gains_the_access_columns_and_keeps_its_rows(tmp_path):
    db_path = tmp_path / "files.db"
    file_id = "file-" + "1" * 32
    with plain(db_path) as conn:
        conn.execute(OLD_SEED_DDL)
        conn.execute("INSERT INTO openai_files VALUES (?, ?, ?, ?, ?, ?)",
                     (file_id, "old.txt", "assistants", 3, EPOCH - 100, EPOCH - 100 + 108864000))
    store = LocalBlobStore(tmp_path / "store")
    store.ensure_ready()
    (tmp_path / "store" / "objects" / file_id).write_bytes(b"old")

    service = FileService(MetadataStore(db_path), store, clock=Clock())
    FileService(MetadataStore(db_path), store)  # a second open changes nothing more
    with plain(db_path) as conn:
        assert table_info(conn) == COLUMNS
        rows = [dict(row) for row in conn.execute("SELECT * FROM openai_files")]
    assert rows == [{"id": file_id, "filename": "old.txt", "purpose": "assistants", "bytes": 3,
                     "created_at": EPOCH - 100, "expires_at": EPOCH - 100 + 108864000,
                     "access_attributes": None, "owner_principal": None}]
    assert [f.id for f in service.list().data] == [file_id]
    _, chunks = service.content(file_id)
    assert b"".join(chunks) == b"old"
    new = service.create(io.BytesIO(b"new"), "new.txt", "assistants")
    assert [f.id for f in service.list(order="asc").data] == [file_id, new.id]
    assert_clean(service)


def test_seed_table_is_used_as_it_is(tmp_path):
    db_path = tmp_path / "files.db"
    with plain(db_path) as conn:
        conn.execute(SEED_DDL)
    local_service(tmp_path)
    with plain(db_path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'openai_files'").fetchone()[0]
        assert sql == SEED_DDL  # never rewritten
        assert table_info(conn) == COLUMNS


# --- (c) rows and objects written the way the seed server writes them -------------------------


@pytest.fixture
def seed_bucket(s3_server, tmp_path):
    """A bucket and database shared with a (simulated) Llama Stack server, and our service on them."""
    bucket = s3_server.new_bucket_name()
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    db_path = tmp_path / "shared.db"
    service = open_service(config.load(flags={**s3_server.settings_values(bucket, db_path=str(db_path)),
                                              "auto_create_bucket": False}))
    return service, client, bucket, db_path


def seed_upload(client, bucket, db_path, file_id, body, *, filename="seed.txt", purpose="assistants",
                created_at=None, expires_at="default", access_attributes="null", with_object=True):
    """What the seed's openai_upload_file does: the row first, then a bare put_object at the root."""
    created_at = int(time.time()) if created_at is None else created_at
    if expires_at == "default":
        expires_at = created_at + (2592000 if purpose == "batch" else 108864000)
    with plain(db_path) as conn:
        conn.execute("INSERT INTO openai_files (id, filename, purpose, bytes, created_at, expires_at, "
                     "access_attributes, owner_principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (file_id, filename, purpose, len(body), created_at, expires_at, access_attributes, ""))
    if with_object:
        client.put_object(Bucket=bucket, Key=file_id, Body=body)


def test_files_written_by_the_seed_list_read_and_delete_here(seed_bucket):
    service, client, bucket, db_path = seed_bucket
    first, second, third = ("file-" + c * 32 for c in "abc")
    now = int(time.time())
    seed_upload(client, bucket, db_path, first, b"first body", filename="first.txt", created_at=now - 20)
    seed_upload(client, bucket, db_path, second, b'{"a": 1}\n', filename="b.jsonl", purpose="batch",
                created_at=now - 10)
    seed_upload(client, bucket, db_path, third, b"third", filename="third.txt", created_at=now - 5,
                expires_at=None, access_attributes=None)
    assert client.head_object(Bucket=bucket, Key=first)["Metadata"] == {}

    assert [f.id for f in service.list().data] == [third, second, first]
    assert [f.id for f in service.list(purpose="batch").data] == [second]
    info = service.retrieve(second).to_openai()
    assert info == {"object": "file", "id": second, "bytes": 9, "created_at": now - 10,
                    "expires_at": now - 10 + 2592000, "filename": "b.jsonl", "purpose": "batch"}
    assert service.retrieve(first).to_openai()["expires_at"] is None
    assert service.retrieve(third).to_openai()["expires_at"] is None
    _, chunks = service.content(first)
    assert b"".join(chunks) == b"first body"
    assert service.read(second, 2, 3) == b'a":'
    assert_clean(service)

    assert service.delete(first)["deleted"] is True
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=first)
    with plain(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM openai_files WHERE id = ?", (first,)).fetchone()[0] == 0
    assert [f.id for f in service.list().data] == [third, second]
    assert_clean(service)


def test_files_written_here_read_as_the_seed_reads_them(seed_bucket):
    service, client, bucket, db_path = seed_bucket
    created = service.create(io.BytesIO(b"for the server"), "handoff.txt", "batch")
    # The seed reads the body with a plain get_object on the id, and the row with a plain SELECT.
    assert client.get_object(Bucket=bucket, Key=created.id)["Body"].read() == b"for the server"
    with plain(db_path) as conn:
        row = dict(conn.execute("SELECT * FROM openai_files WHERE id = ?", (created.id,)).fetchone())
    assert row == {"id": created.id, "filename": "handoff.txt", "purpose": "batch", "bytes": 14,
                   "created_at": created.created_at, "expires_at": created.created_at + 2592000,
                   "access_attributes": "null", "owner_principal": ""}
    assert_clean(service)


def test_seed_row_waiting_for_its_object_is_spared_then_readable(seed_bucket):
    service, client, bucket, db_path = seed_bucket
    file_id = "file-" + "d" * 32
    seed_upload(client, bucket, db_path, file_id, b"in flight", with_object=False)
    with pytest.raises(NotFound):
        service.content(file_id)
    assert service.list().data == []  # hidden, as the seed would have it (it drops the row)
    assert service.retrieve(file_id).id == file_id  # but the row is kept
    client.put_object(Bucket=bucket, Key=file_id, Body=b"in flight")
    _, chunks = service.content(file_id)
    assert b"".join(chunks) == b"in flight"
    assert [f.id for f in service.list().data] == [file_id]  # found: listed again
    assert_clean(service)


def test_old_seed_row_without_object_is_treated_as_gone(seed_bucket):
    service, client, bucket, db_path = seed_bucket
    file_id = "file-" + "e" * 32
    seed_upload(client, bucket, db_path, file_id, b"lost", created_at=int(time.time()) - ORPHAN_GRACE - 60,
                with_object=False)
    with pytest.raises(NotFound):
        service.content(file_id)
    assert service.list().data == []
    assert_clean(service)


# --- (d) the key prefix -----------------------------------------------------------------------


def test_object_keys_honour_the_prefix(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    settings = config.load(flags=s3_server.settings_values(bucket, db_path=str(tmp_path / "files.db"),
                                                           prefix="/team/files/"))
    assert settings.prefix == "team/files/"
    service = open_service(settings)
    created = service.create(io.BytesIO(b"prefixed"), "p.txt", "assistants")
    client = s3_server.client()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"team/files/{created.id}"]
    # Objects outside the prefix (a seed sharing the bucket at its root) are not ours.
    client.put_object(Bucket=bucket, Key="file-" + "f" * 32, Body=b"root object")
    client.put_object(Bucket=bucket, Key=f"team/files/deeper/{'file-' + '0' * 32}", Body=b"deeper")
    assert_clean(service)
    _, chunks = service.content(created.id)
    assert b"".join(chunks) == b"prefixed"
    service.delete(created.id)
    assert sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]) == [
        "file-" + "f" * 32, f"team/files/deeper/{'file-' + '0' * 32}"]
    assert_clean(service)
