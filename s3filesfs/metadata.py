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
# Public rows, as the seed writes them for an unauthenticated caller: owner '' and JSON null.
PUBLIC_ROW = {"owner_principal": "", "access_attributes": "null"}


class MetadataStore:
    def __init__(self, db_path: Path | str, busy_timeout: float = 30.0):
        self.path = Path(db_path).expanduser()
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._create_schema()

    # --- connections -------------------------------------------------------------------------

    def _db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # WAL makes NORMAL durable against process crashes; only power loss can lose the tail.
            conn.execute("PRAGMA synchronous = NORMAL")
            db = self._local.db = sqlite_utils.Database(conn)
        return db

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

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

    # --- openai_files ------------------------------------------------------------------------

    def insert(self, row: dict) -> None:
        with self._errors("insert"):
            self._db()[TABLE].insert({**{k: row[k] for k in FILE_COLUMNS}, **PUBLIC_ROW})

    def get(self, file_id: str) -> dict | None:
        with self._errors("get"):
            rows = list(self._db().query(f"SELECT * FROM {TABLE} WHERE id = ?", [file_id]))
        return rows[0] if rows else None

    def delete(self, file_id: str) -> bool:
        with self._errors("delete"):
            cursor = self._db().execute(f"DELETE FROM {TABLE} WHERE id = ?", [file_id])
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
        """Up to ``limit`` live rows ordered by ``(created_at, id)``, strictly past ``after``."""
        where = ["(expires_at IS NULL OR expires_at > :now)"]
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
        with self._errors("update"):
            cursor = self._db().execute(
                f"UPDATE {TABLE} SET {assignments} WHERE id = :id", {**fields, "id": file_id}
            )
        return cursor.rowcount > 0
