"""MetadataStore: every query on ``openai_files`` and on our ``s3filesfs_*`` tables, once for both engines.

The statements are SQLAlchemy Core expressions over the tables of ``schema``; the engine (``engines``)
supplies connections and transactions. Rows are written as the seed writes them (``Identity.row_access``):
for the anonymous writer a public row, ``owner_principal`` '' and ``access_attributes`` JSON null,
which the seed's default access policy shows to everyone; for a principal, the principal and its
attributes as JSON. Every method that reads or changes ``openai_files`` for a caller takes a
``viewer`` and sees only what ``visibility.visible_to`` lets it (``OPERATOR`` sees every row).
"""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import JSON, Boolean, ColumnElement, Integer, and_, bindparam, func, or_, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.functions import GenericFunction

from ..access import ANONYMOUS, Identity
from ..errors import FileTooLarge, StorageError
from . import schema
from .engines import Engine, PostgresEngine, Prepared, SqliteEngine
from .location import PostgresLocation
from .schema import FILE_COLUMNS, JOURNAL_COLUMNS, changes, intents, journal, leases, missing, openai_files
from .visibility import visible_to

_FILE = [openai_files.c[name] for name in FILE_COLUMNS]
# The statements every upload runs, built once (building one cost about as much as running it).
_INSERT_FILE = openai_files.insert()
_APPEND_CHANGE = changes.insert()
_ADD_INTENT = intents.insert()
_REMOVE_INTENT = intents.delete().where(intents.c.id == bindparam("intent_id"))
LOOKUP_QUERIES_KEPT = 64  # statements of MetadataStore._lookup_query kept, by shape and viewer
# The largest value of PostgreSQL's 32-bit INTEGER, which a table created by the seed has for bytes.
INTEGER_MAX = 2**31 - 1
# Entries of the change feed read at once.
FEED_PAGE = 1000
# Filenames looked up in one query (well under SQLite's limit of bound parameters).
NAMES_AT_ONCE = 500
# Up to this many filenames, a lookup statement has a parameter for each (and is prepared once);
# more are bound as one list. A shown name stands for one or two filenames.
FEW_NAMES = 2


class byte_length(GenericFunction):  # noqa: N801 (named like the SQL function it stands for)
    """The length of a string in UTF-8 bytes: ``octet_length`` on PostgreSQL; SQLite before 3.43
    has no such function, so there the string is measured as a blob."""

    type = Integer()
    inherit_cache = True


@compiles(byte_length)
def _byte_length(element, compiler, **kw):
    return f"octet_length({compiler.process(element.clauses, **kw)})"


@compiles(byte_length, "sqlite")
def _byte_length_sqlite(element, compiler, **kw):
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


class holds_nul(GenericFunction):  # noqa: N801
    """Whether a string holds a NUL character: SQLite stores one; PostgreSQL text cannot."""

    type = Boolean()
    inherit_cache = True


@compiles(holds_nul)
def _holds_nul(element, compiler, **kw):
    return "false"


@compiles(holds_nul, "sqlite")
def _holds_nul_sqlite(element, compiler, **kw):
    return f"(instr({compiler.process(element.clauses, **kw)}, char(0)) > 0)"


class MetadataStore:
    """The metadata of one store: a SQLite file (a path) or a PostgreSQL database (a ``PostgresLocation``)."""

    def __init__(self, location: Path | str | PostgresLocation, busy_timeout: float = 30.0,
                 host: str | None = None):
        # ``host``: the host id that a journal of the previous shape is given to (schema.create_missing).
        self.busy_timeout = busy_timeout
        self._lookup_queries: dict[tuple, Prepared] = {}
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

    def data_version(self) -> int | None:
        """A number that moves whenever another connection has committed, on SQLite; None on
        PostgreSQL, which has no cheap way to tell (see ``engines``)."""
        with self._errors("data_version"):
            return self._engine.data_version()

    def change_token(self) -> int | None:
        """A number that moves whenever anyone commits a change, this process included, on SQLite
        (where reading it costs a few microseconds); None on PostgreSQL, or when it cannot be read.
        An answer found while it stood still is still the answer."""
        return self._engine.change_token()

    def wait_for_changes(self, timeout: float) -> None:
        """Return when another process may have changed something, or after ``timeout`` seconds."""
        self._engine.wait_for_changes(timeout)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise self._engine.error(action, exc) from exc

    def _rows(self, action: str, query, parameters: dict | None = None) -> list[dict]:
        with self._errors(action):
            return self._engine.rows(query, parameters)

    # --- openai_files ------------------------------------------------------------------------

    def insert(self, row: dict, writer: Identity = ANONYMOUS, *, uploaded: bool = False) -> None:
        """Insert ``row``, owned by ``writer`` (a public row for the anonymous writer). ``uploaded``:
        the row registers an upload recorded by ``intent_add``, whose record goes in the same
        transaction (a crash leaves the row and no record, or the record and no row)."""
        self._insert(row, writer, uploaded)

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

    def _insert(self, row: dict, writer: Identity, uploaded: bool = False) -> None:
        values = {name: row[name] for name in FILE_COLUMNS}
        owner, attributes = writer.row_access()
        try:
            with self._errors("insert"), self._engine.writing() as conn:
                conn.execute(_INSERT_FILE, {
                    **values, "owner_principal": owner,
                    # JSON.NULL: the JSON 'null' the seed writes, not SQL NULL.
                    "access_attributes": JSON.NULL if attributes is None else attributes})
                self._changed(conn, values["id"])
                if uploaded:
                    conn.execute(_REMOVE_INTENT, {"intent_id": values["id"]})
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
            if deleted or viewer.sees_all:  # (a row the viewer may not see keeps its note)
                conn.execute(missing.delete().where(missing.c.id == file_id))
            if deleted:
                self._changed(conn, file_id)
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
        query = self._live_rows(now, viewer)
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

    def count(self) -> int:
        return int(self._rows("count", select(func.count().label("n")).select_from(openai_files))[0]["n"])

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
            if changed:
                self._changed(conn, file_id)
        return changed > 0

    # --- s3filesfs_missing: rows hidden because their object was not found ----------------------
    #
    # Hiding a row and showing it again are changes of what a listing shows: they go to the feed.

    def missing_add(self, file_id: str, seen_at: int) -> None:
        with self._errors("note missing object"), contextlib.suppress(IntegrityError), \
                self._engine.writing() as conn:
            conn.execute(missing.insert(), {"id": file_id, "seen_at": seen_at})
            self._changed(conn, file_id)

    def missing_remove(self, file_id: str) -> None:
        with self._errors("forget missing object"), self._engine.writing() as conn:
            if conn.execute(missing.delete().where(missing.c.id == file_id)).rowcount:
                self._changed(conn, file_id)

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

    # --- s3filesfs_changes: the change feed ----------------------------------------------------

    def _changed(self, conn, file_id: str) -> None:
        """Append ``file_id`` to the change feed, in the transaction that changed its row."""
        self._engine.order_changes(conn)
        conn.execute(_APPEND_CHANGE, {"file_id": file_id, "at": int(time.time())})
        self._engine.announce_changes(conn)

    def feed_position(self) -> int:
        """The position of the newest entry of the change feed (0 if it has none)."""
        rows = self._rows("read change feed", select(func.max(changes.c.position).label("top")))
        return int(rows[0]["top"] or 0)

    def feed_since(self, position: int, limit: int = FEED_PAGE) -> list[tuple[int, str]]:
        """``(position, file id)`` of the entries after ``position``, oldest first."""
        c = changes.c
        rows = self._rows("read change feed", select(c.position, c.file_id).where(c.position > position)
                          .order_by(c.position).limit(limit))
        return [(int(row["position"]), row["file_id"]) for row in rows]

    def feed_oldest(self) -> int | None:
        """The position of the oldest entry still kept (None if there is none)."""
        rows = self._rows("read change feed", select(func.min(changes.c.position).label("low")))
        low = rows[0]["low"]
        return None if low is None else int(low)

    def feed_trim(self, before: int) -> int:
        """Drop the feed's entries written before ``before`` (epoch seconds), always keeping the
        newest (it holds the position new readers start from); returns how many went."""
        c = changes.c
        with self._errors("trim change feed"), self._engine.writing() as conn:
            newest = conn.execute(select(func.max(c.position))).scalar()
            if newest is None:
                return 0
            return conn.execute(changes.delete().where(c.at < before, c.position < newest)).rowcount

    def created_since(self, since: int) -> list[str]:
        """Ids of the rows created at or after ``since``, live or not: how a reader of the feed
        finds rows that a writer without the feed (a Llama Stack server) added."""
        rows = self._rows("list recent", select(openai_files.c.id).where(openai_files.c.created_at >= since))
        return [row["id"] for row in rows]

    def live(self, file_id: str, now: int, *, viewer: Identity) -> dict | None:
        """The row of ``file_id`` if ``viewer``'s listing shows it: not expired, not noted missing."""
        rows = self._rows("get", self._lookup_query(viewer, by_id=True), {"now": now, "file_id": file_id})
        return rows[0] if rows else None

    def named(self, purpose: str, filenames: list[str], file_id: str | None, now: int,
              slash_form: str | None = None, *, viewer: Identity) -> list[dict]:
        """The live rows of ``purpose`` that a shown name may stand for, oldest first: those whose
        filename is one of ``filenames``, the row ``file_id``, and (a name shown with ``／`` for
        ``/``) those whose filename reads ``slash_form`` once each ``/`` is written ``／``."""
        if not (filenames or file_id is not None or slash_form is not None):
            return []
        query = self._lookup_query(viewer, names=len(filenames), by_id=file_id is not None,
                                   slashed=slash_form is not None, in_purpose=True)
        parameters = {"now": now, "purpose": purpose, "file_id": file_id, "slash_form": slash_form}
        if len(filenames) > FEW_NAMES:
            parameters["names"] = filenames
        else:
            parameters.update((f"name{i}", name) for i, name in enumerate(filenames))
        rows = self._rows("look up name", query, parameters)
        # Sorted here, not by the query: an ORDER BY lets SQLite prefer the (purpose, created_at)
        # index and scan the whole folder instead of finding the few rows by name.
        return sorted(rows, key=lambda row: (row["created_at"], row["id"]))

    def _lookup_query(self, viewer: Identity, *, names: int = 0, by_id: bool = False, slashed: bool = False,
                      in_purpose: bool = False) -> Prepared:
        """The live rows ``viewer`` sees that match any of the tests asked for (bound at each call:
        ``names`` filenames, ``file_id``, ``slash_form``, within ``purpose``), for ``named`` and
        ``live``. Prepared once per shape and viewer: a mount looks names up several times per file
        it writes, and building the statement cost more than running it."""
        few = names <= FEW_NAMES
        key = (viewer, names if few else -1, by_id, slashed, in_purpose)
        query = self._lookup_queries.get(key)
        if query is None:
            c = openai_files.c
            matches: list[ColumnElement[bool]] = []
            if names and few:  # one parameter each: a list would be expanded into placeholders at each call
                matches.append(c.filename.in_([bindparam(f"name{i}") for i in range(names)]))
            elif names:
                matches.append(c.filename.in_(bindparam("names", expanding=True)))
            if by_id:
                matches.append(c.id == bindparam("file_id"))
            if slashed:
                matches.append(func.replace(c.filename, "/", "\uff0f") == bindparam("slash_form"))
            statement = self._live_rows(bindparam("now"), viewer).where(or_(*matches))
            if in_purpose:
                statement = statement.where(c.purpose == bindparam("purpose"))
            if len(self._lookup_queries) >= LOOKUP_QUERIES_KEPT:  # viewers are few: the mount's, the API keys'
                self._lookup_queries.clear()
            query = self._lookup_queries[key] = self._engine.prepare(statement)
        return query

    def unusual(self, now: int, purpose: str | None = None, max_bytes: int = 255, *,
                viewer: Identity) -> list[dict]:
        """The live rows whose shown name may differ from their filename, oldest first: a filename
        shared by another row of its purpose, one a path component cannot hold as it is, or one
        that looks like a shown form itself (a file id, ``stem (file-…)ext``). Every other row
        shows as ``purpose/filename``; so a listing needs to hold only these."""
        c = openai_files.c
        live = self._live_rows(now, viewer)
        shared = (select(openai_files.c.purpose, openai_files.c.filename)
                  .where(or_(c.expires_at.is_(None), c.expires_at > now), visible_to(viewer))
                  .group_by(c.purpose, c.filename).having(func.count() > 1))
        if purpose is not None:
            shared = shared.where(c.purpose == purpose)
        shared_names: dict[str, list[str]] = {}
        for row in self._rows("look up names", shared):
            shared_names.setdefault(row["purpose"], []).append(row["filename"])
        odd = live.where(or_(
            c.filename.is_(None), c.filename.in_(["", ".", ".."]), byte_length(c.filename) > max_bytes,
            c.filename.contains("/", autoescape=True), c.filename.contains("\uff0f", autoescape=True),
            c.filename.contains("\u2400", autoescape=True), holds_nul(c.filename),
            c.filename.startswith("file-", autoescape=True), c.filename.contains(" (file-", autoescape=True),
        ))
        if purpose is not None:
            odd = odd.where(c.purpose == purpose)
        rows = {row["id"]: row for row in self._rows("look up names", odd)}
        for where_purpose, filenames in shared_names.items():
            for start in range(0, len(filenames), NAMES_AT_ONCE):  # a few queries, not one per name
                for row in self.named(where_purpose, filenames[start:start + NAMES_AT_ONCE], None, now, viewer=viewer):
                    rows[row["id"]] = row
        return sorted(rows.values(), key=lambda row: (row["created_at"], row["id"]))

    def _live_rows(self, now: int | BindParameter, viewer: Identity) -> Select:
        c = openai_files.c
        return select(*_FILE).where(or_(c.expires_at.is_(None), c.expires_at > now),
                                    c.id.not_in(select(missing.c.id)), visible_to(viewer))

    # --- s3filesfs_intents: uploads under way ---------------------------------------------------

    def intent_add(self, file_id: str, owner: str, started_at: int) -> None:
        with self._errors("record upload"), self._engine.writing() as conn:
            conn.execute(_ADD_INTENT, {"id": file_id, "owner": owner, "started_at": started_at})

    def intent_remove(self, file_id: str) -> None:
        with self._errors("forget upload"), self._engine.writing() as conn:
            conn.execute(_REMOVE_INTENT, {"intent_id": file_id})

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
