"""MetadataStore: every query on ``openai_files`` and on our ``s3filesfs_*`` tables, once for both engines.

The statements are SQLAlchemy Core expressions over the tables of ``schema``; the engine (``engines``)
supplies connections and transactions. Rows are written as the seed writes them (``Identity.row_access``):
for the anonymous writer a public row, ``owner_principal`` '' and ``access_attributes`` JSON null,
which the seed's default access policy shows to everyone; for a principal, the principal and its
attributes as JSON. Every method that reads or changes ``openai_files`` for a caller takes a
``viewer`` and sees only what ``visibility.visible_to`` lets it (``OPERATOR`` sees every row).
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import JSON, and_, func, or_, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ..access import ANONYMOUS, Identity
from ..errors import FileTooLarge, StorageError
from . import schema
from .engines import Engine, PostgresEngine, SqliteEngine
from .location import PostgresLocation
from .schema import FILE_COLUMNS, JOURNAL_COLUMNS, intents, journal, leases, missing, openai_files
from .visibility import visible_to

_FILE = [openai_files.c[name] for name in FILE_COLUMNS]
# The largest value of PostgreSQL's 32-bit INTEGER, which a table created by the seed has for bytes.
INTEGER_MAX = 2**31 - 1


class MetadataStore:
    """The metadata of one store: a SQLite file (a path) or a PostgreSQL database (a ``PostgresLocation``)."""

    def __init__(self, location: Path | str | PostgresLocation, busy_timeout: float = 30.0,
                 host: str | None = None):
        # ``host``: the host id that a journal of the previous shape is given to (schema.create_missing).
        self.busy_timeout = busy_timeout
        self._engine: Engine
        if isinstance(location, PostgresLocation):
            self.location: Path | PostgresLocation = location
            self._engine = PostgresEngine(location, busy_timeout)
        else:
            path = Path(location).expanduser()
            self.location = path
            self._engine = SqliteEngine(path, busy_timeout)
        with self._errors("open"):
            if isinstance(self.location, Path):
                self.location.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._engine.schema_transaction() as conn:
                schema.create_missing(conn, host)

    @property
    def path(self) -> Path:
        """The SQLite file (a PostgreSQL store has none: see ``location``)."""
        if not isinstance(self.location, Path):
            raise TypeError(f"the metadata store {self.description} is not a file")
        return self.location

    @property
    def description(self) -> str:
        """The database, for messages: the file, or ``postgresql://user@host:port/db``."""
        return self._engine.description

    def close(self) -> None:
        """Close every connection of this store (it opens new ones if used again)."""
        self._engine.close()

    def data_version(self) -> int:
        """A number that moves whenever another process has changed the table.

        Cheap enough to ask every second: a long-running reader (the mount) reloads its listing
        only when it moves, and not because of its own writes. How each engine knows is in
        ``engines``; on PostgreSQL changes made by other programs may take a second or so to show.
        """
        with self._errors("data_version"):
            return self._engine.data_version()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise self._engine.error(action, exc) from exc

    def _rows(self, action: str, query) -> list[dict]:
        with self._errors(action), self._engine.reading() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- openai_files ------------------------------------------------------------------------

    def insert(self, row: dict, writer: Identity = ANONYMOUS) -> None:
        """Insert ``row``, owned by ``writer`` (a public row for the anonymous writer)."""
        self._insert(row, writer)

    def insert_missing(self, row: dict, writer: Identity = ANONYMOUS) -> bool:
        """Insert ``row`` unless a row with its id is there already (then it is left as it is);
        True if it was inserted."""
        try:
            self._insert(row, writer)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    def _insert(self, row: dict, writer: Identity) -> None:
        values = {name: row[name] for name in FILE_COLUMNS}
        owner, attributes = writer.row_access()
        try:
            with self._errors("insert"), self._engine.writing() as conn:
                conn.execute(openai_files.insert(), {
                    **values, "owner_principal": owner,
                    # JSON.NULL: the JSON 'null' the seed writes, not SQL NULL.
                    "access_attributes": JSON.NULL if attributes is None else attributes})
                # (An insert refused on its key is counted by the PostgreSQL server but not here:
                # the token then moves once more, a needless reload of a listing, nothing worse.)
                self._engine.files_changed(conn, 1)
        except StorageError as exc:
            if isinstance(exc.__cause__, DataError) and (values["bytes"] or 0) > INTEGER_MAX:
                raise FileTooLarge(values["id"], values["bytes"], self.description) from exc
            raise

    def get(self, file_id: str, *, viewer: Identity) -> dict | None:
        rows = self._rows("get", select(*_FILE).where(openai_files.c.id == file_id, visible_to(viewer)))
        return rows[0] if rows else None

    def delete(self, file_id: str, *, viewer: Identity) -> bool:
        with self._errors("delete"), self._engine.writing() as conn:
            deleted = conn.execute(openai_files.delete().where(openai_files.c.id == file_id,
                                                               visible_to(viewer))).rowcount
            self._engine.files_changed(conn, deleted)
            if deleted or viewer.sees_all:  # (a row the viewer may not see keeps its note)
                conn.execute(missing.delete().where(missing.c.id == file_id))
        return deleted > 0

    def page(
        self,
        *,
        viewer: Identity,
        now: int,
        limit: int,
        descending: bool = True,
        purpose: str | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[dict]:
        """Up to ``limit`` live rows ordered by ``(created_at, id)``, strictly past ``after``; rows
        noted as missing their object, and rows ``viewer`` may not see, are left out."""
        c = openai_files.c
        query = select(*_FILE).where(or_(c.expires_at.is_(None), c.expires_at > now),
                                     c.id.not_in(select(missing.c.id)), visible_to(viewer))
        if purpose is not None:
            query = query.where(c.purpose == purpose)
        if after is not None:
            # Row-value comparison spelled out, because not every engine has (a, b) < (c, d).
            created_at, file_id = after
            if descending:
                query = query.where(or_(c.created_at < created_at, and_(c.created_at == created_at, c.id < file_id)))
            else:
                query = query.where(or_(c.created_at > created_at, and_(c.created_at == created_at, c.id > file_id)))
        order = (c.created_at.desc(), c.id.desc()) if descending else (c.created_at.asc(), c.id.asc())
        return self._rows("list", query.order_by(*order).limit(limit))

    def expired(self, now: int) -> list[str]:
        rows = self._rows("list expired", select(openai_files.c.id).where(openai_files.c.expires_at <= now))
        return [row["id"] for row in rows]

    def all_files(self) -> list[dict]:
        """Every row, expired or not: for consistency checks."""
        return self._rows("list all", select(*_FILE))

    def update(self, file_id: str, *, viewer: Identity, **fields) -> bool:
        """Change ``filename``/``purpose`` of a row (renames are metadata only); the owner and
        attributes stay, as the seed keeps them."""
        unknown = set(fields) - {"filename", "purpose"}
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        with self._errors("update"), self._engine.writing() as conn:
            changed = conn.execute(openai_files.update().where(openai_files.c.id == file_id, visible_to(viewer))
                                   .values(**fields)).rowcount
            self._engine.files_changed(conn, changed)
        return changed > 0

    # --- s3filesfs_missing: rows hidden because their object was not found ----------------------
    #
    # Written so that this process's own data_version moves too (``writing_visibly``): the mount
    # reloads its listing even when its own read hid a row.

    def missing_add(self, file_id: str, seen_at: int) -> None:
        with self._errors("note missing object"), contextlib.suppress(IntegrityError), \
                self._engine.writing_visibly() as conn:
            conn.execute(missing.insert(), {"id": file_id, "seen_at": seen_at})

    def missing_remove(self, file_id: str) -> None:
        with self._errors("forget missing object"), self._engine.writing_visibly() as conn:
            conn.execute(missing.delete().where(missing.c.id == file_id))

    def is_missing(self, file_id: str) -> bool:
        return bool(self._rows("look up missing object", select(missing.c.id).where(missing.c.id == file_id)))

    def missing_due(self, created_before: int) -> list[tuple[str, bool]]:
        """``(id, has_row)`` of every hidden row created at or before ``created_before``, and of
        every note whose row is gone: what is old enough to settle."""
        f = openai_files.c
        query = (select(missing.c.id, f.id.label("row_id"))
                 .select_from(missing.outerjoin(openai_files, f.id == missing.c.id))
                 .where(or_(f.id.is_(None), f.created_at <= created_before))
                 .order_by(missing.c.id))
        return [(row["id"], row["row_id"] is not None) for row in self._rows("list missing objects", query)]

    # --- s3filesfs_intents: uploads under way ---------------------------------------------------

    def intent_add(self, file_id: str, owner: str, started_at: int) -> None:
        with self._errors("record upload"), self._engine.writing() as conn:
            conn.execute(intents.insert(), {"id": file_id, "owner": owner, "started_at": started_at})

    def intent_remove(self, file_id: str) -> None:
        with self._errors("forget upload"), self._engine.writing() as conn:
            conn.execute(intents.delete().where(intents.c.id == file_id))

    def intents(self) -> list[dict]:
        """Every upload under way or cut off, oldest first."""
        return self._rows("list uploads", select(intents).order_by(intents.c.started_at, intents.c.id))

    # --- s3filesfs_journal: the sync daemons' record of local files, one host's at a time ------
    #
    # Every statement is about one ``host``'s entries: daemons of other hosts have their own, under
    # the same paths perhaps, and never see these.

    def journal_get(self, host: str, path: str) -> dict | None:
        rows = self._rows("journal get", select(journal).where(journal.c.host == host, journal.c.path == path))
        return rows[0] if rows else None

    def journal_put(self, host: str, path: str, **values) -> None:
        """Set columns of ``host``'s entry for ``path``, creating it if missing."""
        unknown = set(values) - (set(JOURNAL_COLUMNS) - {"host", "path"})
        if unknown:
            raise ValueError(f"unknown journal columns {sorted(unknown)}")
        key = (journal.c.host == host, journal.c.path == path)
        with self._errors("journal put"), self._engine.writing() as conn:
            # Update, else insert: plain statements both engines run, in one transaction.
            if values and conn.execute(journal.update().where(*key).values(**values)).rowcount:
                return
            row: dict[str, object] = {name: None for name in JOURNAL_COLUMNS}
            row.update(values, host=host, path=path)
            conn.execute(journal.insert(), row)

    def journal_delete(self, host: str, path: str) -> bool:
        with self._errors("journal delete"), self._engine.writing() as conn:
            return conn.execute(journal.delete().where(journal.c.host == host, journal.c.path == path)).rowcount > 0

    def journal_all(self, host: str) -> list[dict]:
        return self._rows("journal list", select(journal).where(journal.c.host == host).order_by(journal.c.path))

    def journal_counts(self, host: str) -> dict[str, int]:
        """Number of ``host``'s entries per state."""
        rows = self._rows("journal counts", select(journal.c.state, func.count().label("n"))
                          .where(journal.c.host == host).group_by(journal.c.state))
        return {row["state"]: row["n"] for row in rows}

    def journal_failures(self, host: str, limit: int = 20) -> list[dict]:
        """``host``'s most recent entries whose last attempt failed."""
        c = journal.c
        return self._rows("journal failures",
                          select(c.path, c.purpose, c.error, c.attempts, c.updated_at)
                          .where(c.host == host, c.state == "failed")
                          .order_by(c.updated_at.desc(), c.path).limit(limit))

    # --- s3filesfs_leases: one process at a time ----------------------------------------------

    def take_lease(self, name: str, holder: str, now: float, seconds: float) -> bool:
        """Hold the lease ``name`` until ``now + seconds``: take it if it is free or has lapsed,
        renew it if ``holder`` has it. False if another holder has it.

        One conditional UPDATE (or, for a lease never taken, one INSERT that the primary key lets
        only one process win), so two processes can never both succeed. Each is a transaction of its
        own: a failed INSERT ends its transaction on PostgreSQL.
        """
        until = now + seconds
        c = leases.c
        with self._errors("take lease"):
            with self._engine.writing() as conn:
                taken = conn.execute(
                    leases.update().where(c.name == name, or_(c.expires_at < now, c.holder == holder))
                    .values(holder=holder, expires_at=until)).rowcount
            if taken:
                return True
            try:
                with self._engine.writing() as conn:
                    conn.execute(leases.insert(), {"name": name, "holder": holder, "expires_at": until})
            except IntegrityError:
                return False  # held by someone else (or taken by them just now)
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once, if ``holder`` has it, so another process need not wait."""
        with self._errors("release lease"), self._engine.writing() as conn:
            conn.execute(leases.update().where(leases.c.name == name, leases.c.holder == holder)
                         .values(expires_at=0))

    def lease(self, name: str) -> dict | None:
        rows = self._rows("read lease", select(leases.c.name, leases.c.holder, leases.c.expires_at)
                          .where(leases.c.name == name))
        return rows[0] if rows else None
