"""MetadataStore: the ``openai_files`` table (shared with Llama Stack) and our own ``s3filesfs_*`` state.

This is the only module that speaks SQL. The table is created only when missing, with exactly the
seed provider's columns; a table created by an older seed that lacks the access-control columns gets
them added, and nothing is ever dropped or rewritten. Queries stay plain and portable (no SQLite-only
syntax in the statements) so the same store can move to PostgreSQL.

SQLite runs in WAL mode with a busy timeout, so the mount, the daemon and the CLI can share one file.
Each thread gets its own connection, because sqlite3 connections must not cross threads.
"""

import contextlib
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from .errors import StorageError, StorageUnavailable

TABLE = "openai_files"
FILE_COLUMNS = ("id", "filename", "purpose", "bytes", "created_at", "expires_at")

# Column definitions in the seed's order, with the types its SQLAlchemy store declares.
OPENAI_FILES_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id VARCHAR PRIMARY KEY,
    filename VARCHAR,
    purpose VARCHAR,
    bytes INTEGER,
    created_at INTEGER,
    expires_at INTEGER,
    access_attributes JSON,
    owner_principal VARCHAR
)
"""
ACCESS_COLUMNS = {"access_attributes": "JSON", "owner_principal": "VARCHAR"}
INDEXES = (
    f"CREATE INDEX IF NOT EXISTS s3filesfs_{TABLE}_order ON {TABLE} (created_at, id)",
    f"CREATE INDEX IF NOT EXISTS s3filesfs_{TABLE}_purpose ON {TABLE} (purpose, created_at, id)",
)
JOURNAL = "s3filesfs_journal"
JOURNAL_COLUMNS = ("path", "purpose", "state", "file_id", "size", "mtime_ns", "sha256",
                   "pending_id", "pending_size", "pending_mtime_ns", "pending_sha256",
                   "old_id", "attempts", "error", "updated_at")
JOURNAL_DDL = f"""
CREATE TABLE IF NOT EXISTS {JOURNAL} (
    path VARCHAR PRIMARY KEY,
    purpose VARCHAR,
    state VARCHAR,
    file_id VARCHAR,
    size BIGINT,
    mtime_ns BIGINT,
    sha256 VARCHAR,
    pending_id VARCHAR,
    pending_size BIGINT,
    pending_mtime_ns BIGINT,
    pending_sha256 VARCHAR,
    old_id VARCHAR,
    attempts INTEGER,
    error VARCHAR,
    updated_at INTEGER
)
"""
# Uploads under way: each file id is recorded here (with the process that sends it) before its first
# byte goes to the store, and removed once its row is in or its upload is aborted. What a crash leaves
# here names exactly what it may have left in the bucket.
INTENTS = "s3filesfs_intents"
INTENTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {INTENTS} (
    id VARCHAR PRIMARY KEY,
    owner VARCHAR,
    started_at INTEGER
)
"""
# Rows whose object a read found missing while the row was too young to delete (the seed writes its
# row before its object): hidden from listings at once, in every process, until a read finds the
# object again or the row is old enough to delete.
MISSING = "s3filesfs_missing"
MISSING_DDL = f"""
CREATE TABLE IF NOT EXISTS {MISSING} (
    id VARCHAR PRIMARY KEY,
    seen_at INTEGER
)
"""
# Public rows, as the seed writes them for an unauthenticated caller: owner '' and JSON null.
PUBLIC_ROW = {"owner_principal": "", "access_attributes": "null"}
# Leases: a named job that one process at a time may do on a shared database (the expiry sweep).
# ``expires_at`` is epoch seconds with a fraction; a holder renews its lease before it lapses.
LEASES = "s3filesfs_leases"
LEASES_DDL = f"""
CREATE TABLE IF NOT EXISTS {LEASES} (
    name VARCHAR PRIMARY KEY,
    holder VARCHAR,
    expires_at DOUBLE PRECISION
)
"""


class MetadataStore:
    def __init__(self, db_path: Path | str, busy_timeout: float = 30.0):
        self.path = Path(db_path).expanduser()
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._writer_lock = threading.Lock()
        self._writer_db: sqlite_utils.Database | None = None
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._create_schema()

    # --- connections -------------------------------------------------------------------------

    def _db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite_utils.Database(self._connect())
        return db

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def _connect(self, **options) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, **options)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # WAL makes NORMAL durable against process crashes; only power loss can lose the tail.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextlib.contextmanager
    def _writer(self):
        """The one connection this process writes ``openai_files`` through, one writer at a time.

        SQLite allows one writer at a time anyway; sharing the connection also means that its
        ``PRAGMA data_version`` moves only for changes made by *other* processes.
        """
        with self._writer_lock:
            if self._writer_db is None:
                self._writer_db = sqlite_utils.Database(self._connect(check_same_thread=False))
            yield self._writer_db

    def data_version(self) -> int:
        """A number that moves whenever another process has changed the database.

        Cheap enough to ask every second: a long-running reader (the mount) reloads its listing
        only when it moves, and never because of its own writes, which share this connection.
        """
        with self._errors("data_version"), self._writer() as db:
            return db.execute("PRAGMA data_version").fetchone()[0]

    @contextlib.contextmanager
    def _errors(self, action: str):
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StorageUnavailable(f"metadata database {self.path} is busy ({action}): {exc}") from exc
            raise StorageError(f"metadata database {self.path} failed ({action}): {exc}") from exc
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StorageError(f"metadata database {self.path} failed ({action}): {exc}") from exc

    def _create_schema(self) -> None:
        db = self._db()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(OPENAI_FILES_DDL)
        existing = db[TABLE].columns_dict
        for column, sql_type in ACCESS_COLUMNS.items():
            if column not in existing:
                # Another process may add it between our look and our ALTER; that is fine.
                with contextlib.suppress(sqlite3.OperationalError):
                    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {sql_type}")
        for statement in INDEXES:
            db.execute(statement)
        db.execute(LEASES_DDL)
        db.execute(JOURNAL_DDL)
        db.execute(f"CREATE INDEX IF NOT EXISTS {JOURNAL}_state ON {JOURNAL} (state)")
        db.execute(INTENTS_DDL)
        db.execute(MISSING_DDL)

    # --- openai_files ------------------------------------------------------------------------

    def insert(self, row: dict) -> None:
        with self._errors("insert"), self._writer() as db:
            db[TABLE].insert({**{k: row[k] for k in FILE_COLUMNS}, **PUBLIC_ROW})

    def insert_missing(self, row: dict) -> bool:
        """Insert ``row`` unless a row with its id is there already (then it is left as it is);
        True if it was inserted."""
        with self._errors("insert"), self._writer() as db:
            try:
                db[TABLE].insert({**{k: row[k] for k in FILE_COLUMNS}, **PUBLIC_ROW})
            except sqlite3.IntegrityError:
                return False
        return True

    def get(self, file_id: str) -> dict | None:
        with self._errors("get"):
            rows = list(self._db().query(f"SELECT * FROM {TABLE} WHERE id = ?", [file_id]))
        return rows[0] if rows else None

    def delete(self, file_id: str) -> bool:
        with self._errors("delete"), self._writer() as db:
            cursor = db.execute(f"DELETE FROM {TABLE} WHERE id = ?", [file_id])
            db.execute(f"DELETE FROM {MISSING} WHERE id = ?", [file_id])
        return cursor.rowcount > 0

    def page(
        self,
        *,
        now: int,
        limit: int,
        descending: bool = True,
        purpose: str | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[dict]:
        """Up to ``limit`` live rows ordered by ``(created_at, id)``, strictly past ``after``; rows
        noted as missing their object are left out."""
        where = ["(expires_at IS NULL OR expires_at > :now)", f"id NOT IN (SELECT id FROM {MISSING})"]
        params: dict = {"now": now, "limit": limit}
        if purpose is not None:
            where.append("purpose = :purpose")
            params["purpose"] = purpose
        if after is not None:
            # Row-value comparison spelled out, because not every engine has (a, b) < (c, d).
            op = "<" if descending else ">"
            where.append(f"(created_at {op} :c OR (created_at = :c AND id {op} :i))")
            params.update(c=after[0], i=after[1])
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT {', '.join(FILE_COLUMNS)} FROM {TABLE} WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {direction}, id {direction} LIMIT :limit"
        )
        with self._errors("list"):
            return list(self._db().query(sql, params))

    def expired(self, now: int) -> list[str]:
        with self._errors("list expired"):
            rows = self._db().query(f"SELECT id FROM {TABLE} WHERE expires_at <= ?", [now])
            return [row["id"] for row in rows]

    def all_files(self) -> list[dict]:
        """Every row, expired or not: for consistency checks."""
        with self._errors("list all"):
            return list(self._db().query(f"SELECT {', '.join(FILE_COLUMNS)} FROM {TABLE}"))

    def update(self, file_id: str, **fields) -> bool:
        """Change ``filename``/``purpose`` of a row (renames are metadata only)."""
        unknown = set(fields) - {"filename", "purpose"}
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        with self._errors("update"), self._writer() as db:
            cursor = db.execute(f"UPDATE {TABLE} SET {assignments} WHERE id = :id", {**fields, "id": file_id})
        return cursor.rowcount > 0

    # --- s3filesfs_missing: rows hidden because their object was not found ----------------------
    #
    # Written through this thread's own connection, not the writer's: the writer connection's
    # ``data_version`` then moves, so the mount reloads its listing even when its own read hid a row.

    def missing_add(self, file_id: str, seen_at: int) -> None:
        with self._errors("note missing object"), contextlib.suppress(sqlite3.IntegrityError):
            self._db().execute(f"INSERT INTO {MISSING} (id, seen_at) VALUES (?, ?)", [file_id, seen_at])

    def missing_remove(self, file_id: str) -> None:
        with self._errors("forget missing object"):
            self._db().execute(f"DELETE FROM {MISSING} WHERE id = ?", [file_id])

    def is_missing(self, file_id: str) -> bool:
        with self._errors("look up missing object"):
            return bool(list(self._db().query(f"SELECT 1 FROM {MISSING} WHERE id = ?", [file_id])))

    def missing_due(self, created_before: int) -> list[tuple[str, bool]]:
        """``(id, has_row)`` of every hidden row created at or before ``created_before``, and of
        every note whose row is gone: what is old enough to settle."""
        sql = (f"SELECT m.id AS id, f.id AS row_id FROM {MISSING} m LEFT JOIN {TABLE} f ON f.id = m.id "
               "WHERE f.id IS NULL OR f.created_at <= ? ORDER BY m.id")
        with self._errors("list missing objects"):
            return [(row["id"], row["row_id"] is not None) for row in self._db().query(sql, [created_before])]

    # --- s3filesfs_intents: uploads under way ---------------------------------------------------

    def intent_add(self, file_id: str, owner: str, started_at: int) -> None:
        with self._errors("record upload"), self._writer() as db:
            db.execute(f"INSERT INTO {INTENTS} (id, owner, started_at) VALUES (?, ?, ?)",
                       [file_id, owner, started_at])

    def intent_remove(self, file_id: str) -> None:
        with self._errors("forget upload"), self._writer() as db:
            db.execute(f"DELETE FROM {INTENTS} WHERE id = ?", [file_id])

    def intents(self) -> list[dict]:
        """Every upload under way or cut off, oldest first."""
        with self._errors("list uploads"):
            return list(self._db().query(f"SELECT id, owner, started_at FROM {INTENTS} ORDER BY started_at, id"))

    # --- s3filesfs_journal: the sync daemon's record of local files ----------------------------
    #
    # One row per local path ("purpose/name"). ``file_id``/``size``/``mtime_ns``/``sha256`` describe
    # the content that is registered; ``pending_*`` an upload whose id was chosen but that may not
    # have been committed (a crash leaves it for the next start to resolve); ``old_id`` a replaced
    # id still to be deleted. Plain SQL, no upsert syntax, so PostgreSQL runs it as is.

    def journal_get(self, path: str) -> dict | None:
        with self._errors("journal get"):
            rows = list(self._db().query(f"SELECT * FROM {JOURNAL} WHERE path = ?", [path]))
        return rows[0] if rows else None

    def journal_put(self, path: str, **values) -> None:
        """Set columns of ``path``'s entry, creating it if missing."""
        unknown = set(values) - set(JOURNAL_COLUMNS)
        if unknown:
            raise ValueError(f"unknown journal columns {sorted(unknown)}")
        with self._errors("journal put"):
            db = self._db()
            if values:
                assignments = ", ".join(f"{name} = :{name}" for name in values)
                cursor = db.execute(f"UPDATE {JOURNAL} SET {assignments} WHERE path = :path",
                                    {**values, "path": path})
                if cursor.rowcount > 0:
                    return
            row: dict[str, object] = {name: None for name in JOURNAL_COLUMNS}
            row.update(values, path=path)
            names = ", ".join(row)
            db.execute(f"INSERT INTO {JOURNAL} ({names}) VALUES ({', '.join(':' + n for n in row)})", row)

    def journal_delete(self, path: str) -> bool:
        with self._errors("journal delete"):
            cursor = self._db().execute(f"DELETE FROM {JOURNAL} WHERE path = ?", [path])
        return cursor.rowcount > 0

    def journal_all(self) -> list[dict]:
        with self._errors("journal list"):
            return list(self._db().query(f"SELECT * FROM {JOURNAL} ORDER BY path"))

    def journal_counts(self) -> dict[str, int]:
        """Number of entries per state."""
        with self._errors("journal counts"):
            rows = self._db().query(f"SELECT state, COUNT(*) AS n FROM {JOURNAL} GROUP BY state")
            return {row["state"]: row["n"] for row in rows}

    def journal_failures(self, limit: int = 20) -> list[dict]:
        """The most recent entries whose last attempt failed."""
        with self._errors("journal failures"):
            return list(self._db().query(
                f"SELECT path, purpose, error, attempts, updated_at FROM {JOURNAL} "
                f"WHERE state = 'failed' ORDER BY updated_at DESC, path LIMIT ?", [limit]))

    # --- s3filesfs_leases: one process at a time ----------------------------------------------

    def take_lease(self, name: str, holder: str, now: float, seconds: float) -> bool:
        """Hold the lease ``name`` until ``now + seconds``: take it if it is free or has lapsed,
        renew it if ``holder`` has it. False if another holder has it.

        One conditional UPDATE (or, for a lease never taken, one INSERT that the primary key lets
        only one process win), so two processes can never both succeed.
        """
        until = now + seconds
        with self._errors("take lease"), self._writer() as db:
            cursor = db.execute(
                f"UPDATE {LEASES} SET holder = ?, expires_at = ? WHERE name = ? AND (expires_at < ? OR holder = ?)",
                [holder, until, name, now, holder])
            if cursor.rowcount > 0:
                return True
            try:
                db.execute(f"INSERT INTO {LEASES} (name, holder, expires_at) VALUES (?, ?, ?)", [name, holder, until])
            except sqlite3.IntegrityError:
                return False  # held by someone else (or taken by them just now)
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once, if ``holder`` has it, so another process need not wait."""
        with self._errors("release lease"), self._writer() as db:
            db.execute(f"UPDATE {LEASES} SET expires_at = 0 WHERE name = ? AND holder = ?", [name, holder])

    def lease(self, name: str) -> dict | None:
        with self._errors("read lease"):
            rows = list(self._db().query(f"SELECT name, holder, expires_at FROM {LEASES} WHERE name = ?", [name]))
        return rows[0] if rows else None
