"""Helpers shared by the unit tests: a settable clock, the three stores behind one face, the
metadata database on either engine with a plain connection to it, and the check that bucket and
table agree.

Each ``Backend`` holds a FileService and a way to look at (or tamper with) the objects directly,
behind the service's back: files in the local store's directory, or raw boto3 calls on the bucket.
"""

import contextlib
import errno
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from botocore.exceptions import ClientError

from s3filesfs.blobs import BlobStore
from s3filesfs.blobs.s3 import S3BlobStore
from s3filesfs.files import FileService
from s3filesfs.metadata import PostgresLocation

# A fixed start, far from "now", so no test depends on the machine's clock.
EPOCH = 1_750_000_000


class Clock:
    """A clock the test moves by hand; FileService takes it as ``clock=``."""

    def __init__(self, start: float = EPOCH):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def as_s3(store: BlobStore) -> S3BlobStore:
    """``store`` as the S3 store it is in this test (whose boto3 client the test patches)."""
    assert isinstance(store, S3BlobStore), store
    return store


def assert_clean(service: FileService) -> None:
    """Bucket and table agree: every row has its object (of the row's size) and vice versa."""
    report = service.check()
    assert report.clean, report.to_dict()
    assert service.metadata.intents() == [], "uploads left recorded as under way"


def storage_failure(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error."}},
                       operation)


class Backend:
    """One store under test. Subclasses give direct access to the objects."""

    name: str
    service: FileService
    clock: Clock

    def object_body(self, file_id: str) -> bytes | None:
        raise NotImplementedError

    def object_metadata(self, file_id: str) -> dict:
        raise NotImplementedError

    def remove_object(self, file_id: str) -> None:
        """Delete an object out of band."""
        raise NotImplementedError

    def plant_object(self, key: str, body: bytes) -> None:
        """Write an object out of band, with no metadata (as the seed does)."""
        raise NotImplementedError

    def object_keys(self) -> set[str]:
        raise NotImplementedError

    def failing_put(self):
        """A context in which committing an object fails inside the store."""
        raise NotImplementedError

    def leftovers(self) -> list:
        """Half-written uploads the store still keeps (temporary files, multipart uploads)."""
        raise NotImplementedError


class LocalBackend(Backend):
    name = "local"

    def __init__(self, service: FileService, clock: Clock, root: Path):
        self.service, self.clock, self.root = service, clock, root

    def object_body(self, file_id):
        path = self.root / "objects" / file_id
        return path.read_bytes() if path.exists() else None

    def object_metadata(self, file_id):
        return json.loads((self.root / "meta" / f"{file_id}.json").read_text())

    def remove_object(self, file_id):
        (self.root / "objects" / file_id).unlink()

    def plant_object(self, key, body):
        (self.root / "objects" / key).write_bytes(body)

    def object_keys(self):
        return {p.name for p in (self.root / "objects").iterdir()}

    def failing_put(self):
        # The disk fails while the body is made durable, just before it would become visible.
        return mock.patch("s3filesfs.blobs.local.os.fsync", side_effect=OSError(errno.EIO, "Input/output error"))

    def leftovers(self):
        return sorted(p.name for p in (self.root / "tmp").iterdir())


class S3Backend(Backend):
    def __init__(self, name: str, service: FileService, clock: Clock, client, bucket: str, prefix: str = ""):
        self.name, self.service, self.clock = name, service, clock
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def _get(self, file_id):
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + file_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def object_body(self, file_id):
        response = self._get(file_id)
        return None if response is None else response["Body"].read()

    def object_metadata(self, file_id):
        return self.client.head_object(Bucket=self.bucket, Key=self.prefix + file_id)["Metadata"]

    def remove_object(self, file_id):
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + file_id)

    def plant_object(self, key, body):
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def object_keys(self):
        keys: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    @contextlib.contextmanager
    def failing_put(self):
        store_client = as_s3(self.service.blobs).client
        with mock.patch.object(store_client, "put_object", side_effect=storage_failure("PutObject")), \
             mock.patch.object(store_client, "complete_multipart_upload",
                               side_effect=storage_failure("CompleteMultipartUpload")):
            yield

    def leftovers(self):
        return self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])


class MetadataTarget:
    """A test's metadata database on one engine, and a plain connection to it, as another program
    (a Llama Stack server) would open one: ``sqlite3``, or ``psycopg`` for PostgreSQL."""

    def __init__(self, engine: str, location: Path | PostgresLocation):
        self.engine = engine
        self.location = location

    @classmethod
    def sqlite(cls, path: Path) -> "MetadataTarget":
        return cls("sqlite", path)

    @classmethod
    def postgres(cls, location: PostgresLocation) -> "MetadataTarget":
        return cls("postgres", location)

    def settings_values(self) -> dict:
        """The config values (as a config file's keys would give them) that select this database."""
        location = self.location
        if not isinstance(location, PostgresLocation):
            return {"db_path": str(location)}
        return {"metadata_store_type": "postgres", "metadata_store_host": location.host,
                "metadata_store_port": location.port, "metadata_store_db": location.db,
                "metadata_store_user": location.user, "metadata_store_password": location.password}

    @contextlib.contextmanager
    def plain(self) -> Iterator["PlainConnection"]:
        location = self.location
        conn: Any
        if isinstance(location, PostgresLocation):
            import psycopg
            from psycopg.rows import dict_row

            conn = psycopg.connect(host=location.host, port=location.port, dbname=location.db, user=location.user,
                                   password=location.password, autocommit=True, row_factory=dict_row)
        else:
            conn = sqlite3.connect(location, isolation_level=None)
            conn.row_factory = sqlite3.Row
        try:
            yield PlainConnection(self.engine, conn)
        finally:
            conn.close()


class PlainConnection:
    """SQL with ``?`` placeholders on either engine, rows as dicts."""

    def __init__(self, engine: str, conn):
        self.engine, self.conn = engine, conn

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        if self.engine == "postgres":
            sql = sql.replace("?", "%s")
        return self.conn.execute(sql, tuple(params)).rowcount

    def query(self, sql: str, params: tuple | list = ()) -> list[dict]:
        if self.engine == "postgres":
            sql = sql.replace("?", "%s")
        return [dict(row) for row in self.conn.execute(sql, tuple(params)).fetchall()]

    def columns(self, table: str = "openai_files") -> list[tuple[str, str, int]]:
        """``(name, declared type, part of the primary key)`` per column, in order."""
        if self.engine == "sqlite":
            return [(row["name"], row["type"], row["pk"]) for row in self.query(f"PRAGMA table_info({table})")]
        rows = self.query(
            "SELECT c.column_name AS name, upper(c.data_type) AS type, "
            "(EXISTS (SELECT 1 FROM information_schema.key_column_usage k "
            "JOIN information_schema.table_constraints t USING (constraint_schema, constraint_name) "
            "WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_schema = c.table_schema "
            "AND k.table_name = c.table_name AND k.column_name = c.column_name))::int AS pk "
            "FROM information_schema.columns c WHERE c.table_name = ? AND c.table_schema = current_schema() "
            "ORDER BY c.ordinal_position", (table,))
        spelled = {"CHARACTER VARYING": "VARCHAR"}
        return [(row["name"], spelled.get(row["type"], row["type"]), row["pk"]) for row in rows]

    def names(self) -> list[str]:
        """Every table and index in the database (PostgreSQL: in the role's schema)."""
        if self.engine == "sqlite":
            return [row["name"] for row in self.query("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        return [row["name"] for row in self.query(
            "SELECT relname AS name FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND relkind IN ('r', 'i')")]

    def index_columns(self, table: str = "openai_files") -> list[list[str]]:
        """The columns of each index we (or anyone) created on ``table``, not the primary key's."""
        if self.engine == "sqlite":
            return [[c["name"] for c in self.query(f"PRAGMA index_info({row['name']})")]
                    for row in self.query(f"PRAGMA index_list({table})") if row["origin"] == "c"]
        rows = self.query(
            "SELECT i.indexrelid::regclass::text AS name, a.attname AS col FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass(?) AND NOT i.indisprimary ORDER BY name, k.n", (table,))
        grouped: dict[str, list[str]] = {}
        for row in rows:
            grouped.setdefault(row["name"], []).append(row["col"])
        return list(grouped.values())
