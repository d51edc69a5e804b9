"""The tables, declared once with SQLAlchemy Core for SQLite and PostgreSQL, and their creation.

``openai_files`` is declared as the Llama Stack ``remote::s3`` provider declares it through its
SQLAlchemy store (``String`` id as primary key, ``Integer`` sizes and times, the access-control
columns ``access_attributes`` JSON and ``owner_principal`` String), so the same DDL comes out:
``VARCHAR``, ``INTEGER``, ``JSON``. One difference, on PostgreSQL only: ``INTEGER`` is 32-bit there,
which would refuse a file of 2 GiB or more and run out of seconds in 2038, so a table we create on
PostgreSQL has ``BIGINT`` for ``bytes``, ``created_at`` and ``expires_at`` (the seed reads and writes
it all the same). On SQLite, ``INTEGER`` is 64-bit already and the DDL is the seed's, byte for byte.

A table that exists is used as it is: created only when missing, the access-control columns added
to a table of an older seed that lacks them (as the seed itself does), and our indexes added when
the table lets us. Nothing of the seed's is ever dropped, retyped or rewritten. Our own tables and
indexes carry the ``s3filesfs_`` prefix; one of them has changed shape once: the journal of a
version that keyed it by path alone is rebuilt keyed by (host, path), its rows given to the host
that opens it first (``_migrate_journal``).
"""

import logging

from sqlalchemy import (
    DOUBLE_PRECISION,
    JSON,
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    literal,
    select,
    sql,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, CreateTable

from ..processes import default_host

log = logging.getLogger(__name__)

metadata = MetaData()

# Seconds and byte counts: 64-bit on both engines, spelled INTEGER on SQLite as the seed spells it.
WIDE_INTEGER = Integer().with_variant(BigInteger(), "postgresql")

TABLE = "openai_files"
openai_files = Table(
    TABLE,
    metadata,
    Column("id", String, primary_key=True),
    Column("filename", String),
    Column("purpose", String),
    Column("bytes", WIDE_INTEGER),
    Column("created_at", WIDE_INTEGER),
    Column("expires_at", WIDE_INTEGER),
    Column("access_attributes", JSON),
    Column("owner_principal", String),
)
FILE_COLUMNS = ("id", "filename", "purpose", "bytes", "created_at", "expires_at")
# Added by the seed to tables that predate access control, and so by us.
ACCESS_COLUMNS = ("access_attributes", "owner_principal")
# A public row, as a plain SQL writer (a benchmark, a test) spells it: owner '' and JSON null. Through
# the store, the JSON null is ``JSON.NULL``, which each engine stores as its own JSON 'null'.
PUBLIC_ROW = {"owner_principal": "", "access_attributes": "null"}

Index("s3filesfs_openai_files_order", openai_files.c.created_at, openai_files.c.id)
Index("s3filesfs_openai_files_purpose", openai_files.c.purpose, openai_files.c.created_at, openai_files.c.id)
Index("s3filesfs_openai_files_name", openai_files.c.purpose, openai_files.c.filename)

# The sync daemons' record of local files: one row per host and local path ("purpose/name"), so
# that daemons on several hosts with the same file names in their drop folders never see each
# other's entries. ``file_id``, ``size``, ``mtime_ns`` and ``sha256`` describe the content that is
# registered; ``pending_*`` an upload whose id was chosen but that may not have been committed (a
# crash leaves it for the next start to resolve); ``old_id`` a replaced id still to be deleted.
JOURNAL = "s3filesfs_journal"
journal = Table(
    JOURNAL,
    metadata,
    Column("host", String, nullable=False),
    Column("path", String, nullable=False),
    Column("purpose", String),
    Column("state", String),
    Column("file_id", String),
    Column("size", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("sha256", String),
    Column("pending_id", String),
    Column("pending_size", BigInteger),
    Column("pending_mtime_ns", BigInteger),
    Column("pending_sha256", String),
    Column("old_id", String),
    Column("attempts", Integer),
    Column("error", String),
    Column("updated_at", WIDE_INTEGER),
    # Named, so that it keeps its name when a journal rebuilt under another name is renamed.
    PrimaryKeyConstraint("host", "path", name="s3filesfs_journal_host_path"),
)
JOURNAL_COLUMNS = tuple(column.name for column in journal.columns)
Index("s3filesfs_journal_host_state", journal.c.host, journal.c.state)

# Uploads under way: each file id is recorded here (with the process that sends it) before its first
# byte goes to the store, and removed once its row is in or its upload is aborted. What a crash leaves
# here names exactly what it may have left in the bucket.
intents = Table(
    "s3filesfs_intents",
    metadata,
    Column("id", String, primary_key=True),
    Column("owner", String),
    Column("started_at", WIDE_INTEGER),
)


# Rows whose object a read found missing while the row was too young to delete (the seed writes its
# row before its object): hidden from listings at once, in every process, until a read finds the
# object again or the row is old enough to delete.
MISSING = "s3filesfs_missing"
missing = Table(
    MISSING,
    metadata,
    Column("id", String, primary_key=True),
    Column("seen_at", WIDE_INTEGER),
)

# The change feed: every insert, delete and rename of a row of ``openai_files`` (and every row hidden
# or shown again through ``s3filesfs_missing``) appends the file's id here, in the same transaction.
# ``position`` only grows, and rows become visible in position order (writers take a lock for it on
# PostgreSQL; SQLite has one writer at a time), so a reader that has applied everything up to a
# position only ever needs what comes after it. ``at`` (epoch seconds) lets old entries be trimmed.
CHANGES = "s3filesfs_changes"
changes = Table(
    CHANGES,
    metadata,
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("file_id", String),
    Column("at", WIDE_INTEGER),
    sqlite_autoincrement=True,  # positions are never reused, even after the newest entries are trimmed
)
Index("s3filesfs_changes_at", changes.c.at)

# Leases: a named job that one process at a time may do on a shared database (the expiry sweep).
# ``expires_at`` is epoch seconds with a fraction; a holder renews its lease before it lapses.
leases = Table(
    "s3filesfs_leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("holder", String),
    Column("expires_at", DOUBLE_PRECISION),
)


def create_missing(conn: Connection, host: str | None = None) -> None:
    """Create what is missing, inside the caller's transaction (which holds the engine's schema lock,
    so two processes starting at once do not both create). What exists is only looked at, but for
    a journal of the previous shape, which is rebuilt with its rows given to ``host`` (this
    process's host id; default the machine's hostname): a user who may use a table but not alter
    it can still work with it."""
    tables = metadata.sorted_tables
    present = set(inspect(conn).get_table_names())
    for table in tables:
        if table.name not in present:
            conn.execute(CreateTable(table, if_not_exists=True))
    _migrate_journal(conn, host or default_host())
    look = inspect(conn)  # fresh: an inspector keeps what it saw
    existing = {column["name"] for column in look.get_columns(TABLE)}
    for name in ACCESS_COLUMNS:
        if name not in existing:
            sql_type = openai_files.c[name].type.compile(conn.dialect)
            conn.execute(text(f"ALTER TABLE {TABLE} ADD COLUMN {name} {sql_type}"))
    indexed = {name: {index["name"] for index in found}
               for (_, name), found in look.get_multi_indexes(filter_names=[t.name for t in tables]).items()}
    for table in tables:
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            if index.name not in indexed.get(table.name, set()):
                _add_index(conn, index)


def _migrate_journal(conn: Connection, host: str) -> None:
    """Rebuild a journal keyed by ``path`` alone (the previous version's) keyed by (host, path).

    Its entries were written by the daemon of whichever host used it, which can only be the one
    upgrading: they become ``host``'s. The new table is made under another name, filled, and put in
    the old one's place, all in the schema transaction, so another process sees the old journal or
    the new one, never a half-copied one; the old table's index goes with it, and the new indexes
    are added by the caller. Our own table: nothing of the seed's is touched."""
    old_columns = [found["name"] for found in inspect(conn).get_columns(JOURNAL)]
    if "host" in old_columns:
        return
    carried = [name for name in JOURNAL_COLUMNS if name in old_columns and name != "host"]
    rebuilt = journal.to_metadata(MetaData(), name=f"{JOURNAL}_rebuilt")
    conn.execute(CreateTable(rebuilt))
    old = sql.table(JOURNAL, *(sql.column(name) for name in carried))
    moved = conn.execute(rebuilt.insert().from_select(
        ["host", *carried], select(literal(host, String).label("host"), *old.c))).rowcount
    conn.execute(text(f"DROP TABLE {JOURNAL}"))
    conn.execute(text(f"ALTER TABLE {rebuilt.name} RENAME TO {JOURNAL}"))
    log.info("journal %s rebuilt keyed by host and path: its %d entr%s now belong to host %r",
             JOURNAL, moved, "y" if moved == 1 else "ies", host)


def _add_index(conn: Connection, index: Index) -> None:
    """Our indexes only make listings fast. On a table another user owns (one a Llama Stack server
    created under its own role) we may not add them: the store works without, and says so."""
    try:
        with conn.begin_nested():
            conn.execute(CreateIndex(index, if_not_exists=True))
    except DBAPIError as exc:
        log.warning("could not add index %s to table %s (%s); listings work, only slower",
                    index.name, index.table, " ".join(str(exc.orig).split()))
