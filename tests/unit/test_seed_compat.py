"""Compatibility with the Llama Stack ``remote::s3`` files provider (the seed), seen from outside,
on SQLite and on PostgreSQL: the table as a plain connection sees it (``sqlite3``, ``psycopg``),
tables the seed created, and rows and objects the seed wrote.
"""

import io
import time

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, create_engine, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from s3filesfs import config
from s3filesfs.access import OPERATOR
from s3filesfs.blobs.local import LocalBlobStore
from s3filesfs.errors import FileTooLarge, NotFound
from s3filesfs.files import ORPHAN_GRACE, FileService, open_service
from s3filesfs.metadata import MetadataStore
from tests.unit.stores import EPOCH, Clock, MetadataTarget, assert_clean

# name, declared type, primary key
SEED_COLUMNS = [
    ("id", "VARCHAR", 1),
    ("filename", "VARCHAR", 0),
    ("purpose", "VARCHAR", 0),
    ("bytes", "INTEGER", 0),
    ("created_at", "INTEGER", 0),
    ("expires_at", "INTEGER", 0),
    ("access_attributes", "JSON", 0),
    ("owner_principal", "VARCHAR", 0),
]
WIDE = {"bytes", "created_at", "expires_at"}
# The table we create: the seed's on SQLite; on PostgreSQL, whose INTEGER is 32-bit, BIGINT sizes and times.
COLUMNS = {
    "sqlite": SEED_COLUMNS,
    "postgres": [(name, "BIGINT" if name in WIDE else kind, pk) for name, kind, pk in SEED_COLUMNS],
}

# The table as the seed's SQLAlchemy store creates it, on each engine.
SEED_DDL = {
    "sqlite": (
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
    ),
    # ColumnDefinition(type=STRING, primary_key=True) leaves nullable=True, so no NOT NULL is
    # spelled out: PostgreSQL makes a primary key NOT NULL by itself.
    "postgres": (
        "CREATE TABLE openai_files (\n"
        "\tid VARCHAR, \n"
        "\tfilename VARCHAR, \n"
        "\tpurpose VARCHAR, \n"
        "\tbytes INTEGER, \n"
        "\tcreated_at INTEGER, \n"
        "\texpires_at INTEGER, \n"
        "\taccess_attributes JSON, \n"
        "\towner_principal VARCHAR, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
}

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

# The seed's default access policy for a caller without attributes: public rows only
# (AuthorizedSqlStore._get_public_access_conditions).
SEED_PUBLIC_ROWS = {"sqlite": "access_attributes = 'null'", "postgres": "access_attributes::text = 'null'"}
ACCESS_AS_TEXT = {"sqlite": "access_attributes", "postgres": "access_attributes::text"}


def seed_declaration() -> Table:
    """``openai_files`` declared the way the seed's ``SqlAlchemySqlStoreImpl.create_table`` declares
    it: one ``Column(name, type, primary_key=..., nullable=...)`` per entry of the provider's schema
    (``id`` a STRING primary key, nullable by ColumnDefinition's default), then the two columns
    ``AuthorizedSqlStore`` adds."""
    schema = {"id": (String, True), "filename": (String, False), "purpose": (String, False),
              "bytes": (Integer, False), "created_at": (Integer, False), "expires_at": (Integer, False),
              "access_attributes": (JSON, False), "owner_principal": (String, False)}
    columns: list[Column] = [Column(name, kind, primary_key=primary, nullable=True)
                             for name, (kind, primary) in schema.items()]
    return Table("openai_files", MetaData(), *columns)


def local_service(metadata_db: MetadataTarget, tmp_path, clock=None) -> FileService:
    return FileService(MetadataStore(metadata_db.location), LocalBlobStore(tmp_path / "store"),
                       clock=clock or Clock())


# --- (a) the table and the rows we write, through a plain connection ---------------------------


def test_table_has_exactly_the_seed_columns(metadata_db, tmp_path):
    local_service(metadata_db, tmp_path)
    with metadata_db.plain() as conn:
        assert conn.columns() == COLUMNS[metadata_db.engine]
        if metadata_db.engine == "sqlite":
            assert conn.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        names = conn.names()
        # Nothing of ours outside the s3filesfs_ namespace (PostgreSQL names the primary keys' indexes).
        assert all(name in ("openai_files", "openai_files_pkey") or name.startswith("s3filesfs_")
                   for name in names), names
        assert {"s3filesfs_journal", "s3filesfs_intents"} <= set(names)
        assert ["created_at", "id"] in conn.index_columns()


def test_rows_follow_the_seed_conventions(metadata_db, tmp_path):
    service = local_service(metadata_db, tmp_path)
    batch = service.create(io.BytesIO(b"{}\n" * 7), "requests.jsonl", "batch")
    forever = service.create(io.BytesIO(b"notes"), "notes.txt", "assistants")
    short = service.create(io.BytesIO(b"x"), "x.txt", "vision", expires_after=3600)
    engine = metadata_db.engine
    with metadata_db.plain() as conn:
        rows = {row["id"]: row for row in conn.query(
            f"SELECT id, filename, purpose, bytes, created_at, expires_at, owner_principal, "
            f"{ACCESS_AS_TEXT[engine]} AS access FROM openai_files")}
        # What the seed's server, serving a caller without attributes, lets it see: all of them.
        public = {row["id"] for row in conn.query(f"SELECT id FROM openai_files WHERE {SEED_PUBLIC_ROWS[engine]}")}
        if engine == "sqlite":
            typed = conn.query("SELECT DISTINCT typeof(created_at) AS c, typeof(bytes) AS b, "
                               "typeof(access_attributes) AS a FROM openai_files")
            assert typed == [{"c": "integer", "b": "integer", "a": "text"}]
    assert set(rows) == public == {batch.id, forever.id, short.id}
    for file in (batch, forever, short):
        row = rows[file.id]
        assert isinstance(row["created_at"], int) and isinstance(row["bytes"], int)
        assert row["created_at"] == EPOCH
        stored = service.blobs.head(file.id)
        assert stored is not None
        assert row["bytes"] == file.bytes == stored.size
        assert row["owner_principal"] == ""
        assert row["access"] == "null"
        assert (row["filename"], row["purpose"]) == (file.filename, file.purpose)
    assert rows[batch.id]["bytes"] == 21
    assert rows[batch.id]["expires_at"] == EPOCH + 2592000
    assert rows[forever.id]["expires_at"] == EPOCH + 108864000
    assert service.retrieve(forever.id).to_openai()["expires_at"] is None
    assert rows[short.id]["expires_at"] == EPOCH + 3600
    assert_clean(service)


def test_a_table_we_created_records_files_of_any_size(metadata_db, tmp_path):
    """Sizes past 32 bits (and times past 2038) fit the table we create, on both engines."""
    store = MetadataStore(metadata_db.location)
    big: dict = {"id": "file-" + "9" * 32, "filename": "huge.bin", "purpose": "fine-tune", "bytes": 5 * 2**40,
           "created_at": 2**31 + 5, "expires_at": 2**31 + 5 + 2592000}
    store.insert(big)
    assert store.get(big["id"], viewer=OPERATOR) == big
    store.close()


# --- (b) tables the seed created --------------------------------------------------------------


def test_old_seed_table_gains_the_access_columns_and_keeps_its_rows(metadata_db, tmp_path):
    file_id = "file-" + "1" * 32
    with metadata_db.plain() as conn:
        conn.execute(OLD_SEED_DDL)
        conn.execute("INSERT INTO openai_files VALUES (?, ?, ?, ?, ?, ?)",
                     (file_id, "old.txt", "assistants", 3, EPOCH - 100, EPOCH - 100 + 108864000))
    store = LocalBlobStore(tmp_path / "store")
    store.ensure_ready()
    (tmp_path / "store" / "objects" / file_id).write_bytes(b"old")

    service = FileService(MetadataStore(metadata_db.location), store, clock=Clock())
    FileService(MetadataStore(metadata_db.location), store)  # a second open changes nothing more
    with metadata_db.plain() as conn:
        assert conn.columns() == SEED_COLUMNS
        rows = conn.query("SELECT * FROM openai_files")
    assert rows == [{"id": file_id, "filename": "old.txt", "purpose": "assistants", "bytes": 3,
                     "created_at": EPOCH - 100, "expires_at": EPOCH - 100 + 108864000,
                     "access_attributes": None, "owner_principal": None}]
    assert [f.id for f in service.list().data] == [file_id]
    _, chunks = service.content(file_id)
    assert b"".join(chunks) == b"old"
    new = service.create(io.BytesIO(b"new"), "new.txt", "assistants")
    assert [f.id for f in service.list(order="asc").data] == [file_id, new.id]
    assert_clean(service)


def test_seed_table_is_used_as_it_is(metadata_db, tmp_path):
    with metadata_db.plain() as conn:
        conn.execute(SEED_DDL[metadata_db.engine])
        before = conn.columns()
    local_service(metadata_db, tmp_path)
    with metadata_db.plain() as conn:
        if metadata_db.engine == "sqlite":
            sql = conn.query("SELECT sql FROM sqlite_master WHERE name = 'openai_files'")[0]["sql"]
            assert sql == SEED_DDL["sqlite"]  # never rewritten
        assert conn.columns() == before == SEED_COLUMNS  # not retyped: INTEGER stays INTEGER


def test_the_seed_ddl_is_what_its_sqlalchemy_store_emits_on_postgresql():
    emitted = str(CreateTable(seed_declaration()).compile(dialect=postgresql.dialect())).strip()
    assert emitted == SEED_DDL["postgres"]


@pytest.fixture
def postgres_db(postgres_server) -> MetadataTarget:
    return MetadataTarget.postgres(postgres_server.new_role())


def test_a_table_the_seed_created_on_postgresql_is_shared_both_ways(postgres_db, tmp_path):
    """The seed's server created ``openai_files`` through SQLAlchemy and wrote a row; we use the table
    as it is, read its row, and the rows we write are what its queries read."""
    location = postgres_db.location
    seed = create_engine(f"postgresql+psycopg://{location.user}:{location.password}@{location.host}:"
                         f"{location.port}/{location.db}")
    table = seed_declaration()
    table.metadata.create_all(seed, checkfirst=True)  # what SqlAlchemySqlStoreImpl.create_table runs
    seed_id = "file-" + "5" * 32
    with seed.begin() as conn:  # AuthorizedSqlStore.insert for a caller without attributes
        conn.execute(table.insert(), {"id": seed_id, "filename": "from-seed.txt", "purpose": "assistants",
                                      "bytes": 9, "created_at": EPOCH - 50, "expires_at": EPOCH - 50 + 108864000,
                                      "owner_principal": None, "access_attributes": None})
    store = LocalBlobStore(tmp_path / "store")
    store.ensure_ready()
    (tmp_path / "store" / "objects" / seed_id).write_bytes(b"seed body")
    with postgres_db.plain() as conn:
        before = conn.columns()

    service = FileService(MetadataStore(location), store, clock=Clock())
    ours = service.create(io.BytesIO(b"our body"), "from-us.txt", "batch")
    with postgres_db.plain() as conn:
        assert conn.columns() == before == SEED_COLUMNS  # used as it is
    # The seed's row, read here.
    assert service.retrieve(seed_id).to_openai() == {
        "object": "file", "id": seed_id, "bytes": 9, "created_at": EPOCH - 50, "expires_at": None,
        "filename": "from-seed.txt", "purpose": "assistants"}
    _, chunks = service.content(seed_id)
    assert b"".join(chunks) == b"seed body"
    assert [f.id for f in service.list(order="asc").data] == [seed_id, ours.id]
    # Ours, read the way the seed reads: its table, its default policy's filter, its ordering.
    with seed.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(
            select(table).where(text(SEED_PUBLIC_ROWS["postgres"])).order_by(table.c.created_at.desc()))]
    assert rows == [
        {"id": ours.id, "filename": "from-us.txt", "purpose": "batch", "bytes": 8, "created_at": EPOCH,
         "expires_at": EPOCH + 2592000, "access_attributes": None, "owner_principal": ""},
        {"id": seed_id, "filename": "from-seed.txt", "purpose": "assistants", "bytes": 9, "created_at": EPOCH - 50,
         "expires_at": EPOCH - 50 + 108864000, "access_attributes": None, "owner_principal": None},
    ]
    # The seed deletes ours; it is gone here too.
    with seed.begin() as conn:
        conn.execute(table.delete().where(table.c.id == ours.id))
    with pytest.raises(NotFound):
        service.retrieve(ours.id)
    seed.dispose()
    # Its 32-bit bytes column cannot hold 2 GiB or more: refused with a message that says so.
    with pytest.raises(FileTooLarge, match="bytes column is a 32-bit INTEGER") as raised:
        service.metadata.insert({"id": "file-" + "6" * 32, "filename": "big.bin", "purpose": "fine-tune",
                                 "bytes": 2**31, "created_at": EPOCH, "expires_at": EPOCH + 2592000})
    assert location.password not in str(raised.value)
    assert service.metadata.get("file-" + "6" * 32, viewer=OPERATOR) is None
    service.metadata.close()


# --- (c) rows and objects written the way the seed server writes them -------------------------


@pytest.fixture
def seed_bucket(s3_server, metadata_db):
    """A bucket and database shared with a (simulated) Llama Stack server, and our service on them."""
    bucket = s3_server.new_bucket_name()
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    service = open_service(config.load(flags={**s3_server.settings_values(bucket, **metadata_db.settings_values()),
                                              "auto_create_bucket": False}))
    yield service, client, bucket, metadata_db
    service.metadata.close()


def seed_upload(client, bucket, db: MetadataTarget, file_id, body, *, filename="seed.txt", purpose="assistants",
                created_at=None, expires_at="default", access_attributes="null", with_object=True):
    """What the seed's openai_upload_file does: the row first, then a bare put_object at the root."""
    created_at = int(time.time()) if created_at is None else created_at
    if expires_at == "default":
        expires_at = created_at + (2592000 if purpose == "batch" else 108864000)
    with db.plain() as conn:
        conn.execute("INSERT INTO openai_files (id, filename, purpose, bytes, created_at, expires_at, "
                     "access_attributes, owner_principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (file_id, filename, purpose, len(body), created_at, expires_at, access_attributes, ""))
    if with_object:
        client.put_object(Bucket=bucket, Key=file_id, Body=body)


def test_files_written_by_the_seed_list_read_and_delete_here(seed_bucket):
    service, client, bucket, db = seed_bucket
    first, second, third = ("file-" + c * 32 for c in "abc")
    now = int(time.time())
    seed_upload(client, bucket, db, first, b"first body", filename="first.txt", created_at=now - 20)
    seed_upload(client, bucket, db, second, b'{"a": 1}\n', filename="b.jsonl", purpose="batch",
                created_at=now - 10)
    seed_upload(client, bucket, db, third, b"third", filename="third.txt", created_at=now - 5,
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
    with db.plain() as conn:
        assert conn.query("SELECT count(*) AS n FROM openai_files WHERE id = ?", (first,)) == [{"n": 0}]
    assert [f.id for f in service.list().data] == [third, second]
    assert_clean(service)


def test_files_written_here_read_as_the_seed_reads_them(seed_bucket):
    service, client, bucket, db = seed_bucket
    created = service.create(io.BytesIO(b"for the server"), "handoff.txt", "batch")
    # The seed reads the body with a plain get_object on the id, and the row with a plain SELECT.
    assert client.get_object(Bucket=bucket, Key=created.id)["Body"].read() == b"for the server"
    with db.plain() as conn:
        rows = conn.query(f"SELECT id, filename, purpose, bytes, created_at, expires_at, owner_principal, "
                          f"{ACCESS_AS_TEXT[db.engine]} AS access_attributes FROM openai_files "
                          f"WHERE id = ? AND {SEED_PUBLIC_ROWS[db.engine]}", (created.id,))
    assert rows == [{"id": created.id, "filename": "handoff.txt", "purpose": "batch", "bytes": 14,
                     "created_at": created.created_at, "expires_at": created.created_at + 2592000,
                     "access_attributes": "null", "owner_principal": ""}]
    assert_clean(service)


def test_seed_row_waiting_for_its_object_is_spared_then_readable(seed_bucket):
    service, client, bucket, db = seed_bucket
    file_id = "file-" + "d" * 32
    seed_upload(client, bucket, db, file_id, b"in flight", with_object=False)
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
    service, client, bucket, db = seed_bucket
    file_id = "file-" + "e" * 32
    seed_upload(client, bucket, db, file_id, b"lost", created_at=int(time.time()) - ORPHAN_GRACE - 60,
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


def test_a_role_that_may_use_the_seeds_table_but_not_alter_it(postgres_server, tmp_path, caplog):
    """Llama Stack's role owns ``openai_files``; ours may read and write it and create tables beside it,
    but not index it: the store works all the same, and says that listings lack their index."""
    seed = postgres_server.new_role()
    with MetadataTarget.postgres(seed).plain() as conn:
        conn.execute(SEED_DDL["postgres"])
    ours = postgres_server.new_role()
    with postgres_server.connect() as admin:
        admin.execute(f"GRANT USAGE, CREATE ON SCHEMA {seed.user} TO {ours.user}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {seed.user}.openai_files TO {ours.user}")
        admin.execute(f"ALTER ROLE {ours.user} SET search_path = {seed.user}")
    with caplog.at_level("WARNING", logger="s3filesfs.metadata"):
        service = FileService(MetadataStore(ours), LocalBlobStore(tmp_path / "store"), clock=Clock())
    assert "could not add index s3filesfs_openai_files_order to table openai_files" in caplog.text
    created = service.create(io.BytesIO(b"shared"), "shared.txt", "assistants")
    with MetadataTarget.postgres(seed).plain() as conn:
        public = conn.query(f"SELECT id FROM openai_files WHERE {SEED_PUBLIC_ROWS['postgres']}")
        assert [row["id"] for row in public] == [created.id]
        assert conn.index_columns() == []  # the seed's table, untouched
    assert [f.id for f in service.list().data] == [created.id]
    assert_clean(service)
    service.metadata.close()
