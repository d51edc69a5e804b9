"""What differs between SQLite and PostgreSQL: connections, write transactions, how a reader of the
change feed is woken, and what an error means. The statements themselves are in ``store``.

SQLite: one file shared by the mount, the daemon and the CLI, in WAL mode with a busy timeout.
Reads take a connection from a pool; every write of a process goes through one connection, one
transaction at a time (``BEGIN IMMEDIATE``, so a writer waits for the lock up front instead of
failing half-way), which also keeps the change feed's positions in commit order. A reader of the
feed is woken by SQLite's ``PRAGMA data_version`` on the writer connection: it moves for every
commit of another connection (another process, a Llama Stack server) and never for ours. The same
pragma on a connection of its own moves for every commit, ours included: that is ``change_token``,
which tells the mount whether a name it found missing may still be missing.

PostgreSQL: a pool of connections per process (the pool keys of the seed's ``sql_postgres``
backend), each write in a transaction of its own. A write that appends to the change feed first
takes a transaction-level advisory lock, so positions (from a sequence, handed out in call order)
also become visible in commit order, and announces itself with ``NOTIFY``; a reader of the feed
``LISTEN``s on one connection of its own. PostgreSQL has no cheap token for "another program
changed the table", so ``data_version`` is None there: readers find rows of writers that do not
write the feed by their ``created_at`` (see ``feed``).

A statement the store runs over and over (a name lookup: the kernel asks for names all the time)
can be ``prepare``d: on SQLite, when SQLAlchemy has nothing to convert in it, it is compiled once and
then run on a pooled connection through the driver itself, which costs a fifth of going through
SQLAlchemy each time. It is still the one statement of ``store``, not a second spelling of it.
"""

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy import URL, Connection, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql import Select
from sqlalchemy.sql.base import Executable

from ..errors import StorageError, StorageUnavailable
from .location import PostgresLocation

log = logging.getLogger(__name__)

# Seconds to wait for a PostgreSQL server to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 10
# Taken by every process while it creates missing tables, so two starting at once do not collide.
SCHEMA_LOCK_KEY = 0x7333_6673_7363_6865  # "s3fssche"
# Taken by every write that appends to the change feed, until it commits: positions commit in order.
FEED_LOCK_KEY = 0x7333_6673_6665_6564  # "s3fsfeed"
# The channel a feed writer notifies and a feed reader listens on.
FEED_CHANNEL = "s3filesfs_changes"
# How often a SQLite reader of the feed looks at data_version while it waits.
SQLITE_POLL_SECONDS = 0.05
# SQLSTATEs that mean "try again later": lock timeout, serialization failure, deadlock, too many
# connections, and the server shutting down or starting up.
BUSY_STATES = {"55P03", "40001", "40P01", "53300", "57P01", "57P02", "57P03"}
# A connection the server refuses carries no SQLSTATE on the client side, only the server's words.
REFUSALS = ("authentication failed", "pg_hba.conf", "does not exist", "permission denied")


@dataclass(frozen=True)
class Prepared:
    """A read statement the store runs over and over (a name lookup), with what the engine made of
    it once: on SQLite the driver's SQL and the order of its parameters, run without SQLAlchemy's
    per-call work (a lookup cost 45 µs through it, 9 µs without)."""

    statement: Select
    sql: str | None = None  # None: run through SQLAlchemy as any other statement
    order: tuple[str, ...] = ()  # the parameter each ``?`` takes, by name
    fixed: dict = field(default_factory=dict)  # values the statement carries itself (literals)


def _detail(exc: BaseException) -> str:
    """The driver's own words, on one line, without the SQL and parameters SQLAlchemy adds."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return " ".join(str(orig).split()) or type(orig).__name__


class Engine:
    """One database: connections for reading, a transaction for writing, waking feed readers."""

    description: str

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def prepare(self, statement: Select) -> Prepared:
        """``statement``, for ``rows`` to run many times."""
        return Prepared(statement)

    def rows(self, query: Executable | Prepared, parameters: dict | None = None) -> list[dict]:
        """The rows ``query`` gives, each a dict by column name."""
        statement = query.statement if isinstance(query, Prepared) else query
        with self.reading() as conn:
            result = conn.execute(statement, parameters)
            keys = list(result.keys())  # once: asking each row for its mapping costs more than the query
            return [dict(zip(keys, row, strict=True)) for row in result.all()]  # one fetch, not one per row

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection in a transaction, committed when the block ends, rolled back if it fails."""
        raise NotImplementedError

    def schema_transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction that no other process's schema step runs beside."""
        raise NotImplementedError

    def order_changes(self, conn: Connection) -> None:
        """Called in a write transaction just before it appends to the change feed: from here to
        its commit, no other writer of the feed commits (positions become visible in order)."""

    def announce_changes(self, conn: Connection) -> None:
        """Called after the append: wake the feed's readers once this transaction commits."""

    def wait_for_changes(self, timeout: float) -> None:
        """Return when another process may have changed something, or after ``timeout`` seconds.
        Never raises: a reader that cannot be woken catches up on its next round anyway."""
        time.sleep(timeout)

    def data_version(self) -> int | None:
        """A number that moves whenever another connection commits (None: the engine cannot tell)."""
        return None

    def change_token(self) -> int | None:
        """A number that moves whenever anyone commits, this process included (None: the engine
        cannot tell). Never raises: a token that cannot be read is None."""
        return None

    def close(self) -> None:
        raise NotImplementedError

    def error(self, action: str, exc: SQLAlchemyError | OSError) -> StorageError:
        """The StorageError for ``exc``: ``StorageUnavailable`` when trying again later may help."""
        if self._is_busy(exc):
            return StorageUnavailable(f"metadata database {self.description} is busy ({action}): {_detail(exc)}")
        if self._is_unreachable(exc):
            return StorageUnavailable(f"metadata database {self.description} is unreachable ({action}): "
                                      f"{_detail(exc)}")
        return StorageError(f"metadata database {self.description} failed ({action}): {_detail(exc)}")

    def _is_busy(self, exc: BaseException) -> bool:
        return isinstance(exc, PoolTimeout)

    def _is_unreachable(self, exc: BaseException) -> bool:
        return False


class SqliteEngine(Engine):
    def __init__(self, path: Path, busy_timeout: float):
        self.description = str(path)
        self._busy_ms = int(busy_timeout * 1000)
        # AUTOCOMMIT: the driver opens no transactions of its own; writes open theirs explicitly.
        self.engine = create_engine(
            URL.create("sqlite", database=str(path)),
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            poolclass=QueuePool, pool_size=5, max_overflow=-1,  # as many readers as threads
        )
        event.listen(self.engine, "connect", self._configure)
        self._writer_lock = threading.Lock()
        self._writer: Connection | None = None
        self._watch_lock = threading.Lock()
        self._watch: PoolProxiedConnection | None = None  # change_token's own connection, from the pool

    def _configure(self, dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        # WAL makes NORMAL durable against process crashes; only power loss can lose the tail.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def prepare(self, statement: Select) -> Prepared:
        dialect = self.engine.dialect
        compiled = statement.compile(dialect=dialect)
        binds = compiled.binds.values()
        # Only a statement whose values and columns the driver takes and gives as they are: nothing
        # for SQLAlchemy to convert (JSON, say), no list to expand into placeholders.
        if (compiled.positiontup is None or "POSTCOMPILE" in compiled.string
                or any(bind.expanding or bind.callable is not None or bind.type.bind_processor(dialect)
                       for bind in binds)
                or any(column.type.result_processor(dialect, None) for column in statement.selected_columns)):
            return Prepared(statement)
        order = tuple(compiled.positiontup)
        fixed = {name: compiled.binds[name].value for name in order if not compiled.binds[name].required}
        return Prepared(statement, compiled.string, order, fixed)

    def rows(self, query: Executable | Prepared, parameters: dict | None = None) -> list[dict]:
        if not isinstance(query, Prepared) or query.sql is None:
            return super().rows(query, parameters)
        given = parameters or {}
        values = [given[name] if name in given else query.fixed[name] for name in query.order]
        try:
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute(query.sql, values)
                keys = [column[0] for column in cursor.description]
                return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]
            finally:
                raw.close()  # back to the pool
        except sqlite3.Error as exc:  # as SQLAlchemy would have raised it, for Engine.error
            raise DBAPIError.instance(query.sql, values, exc, sqlite3.Error) from exc

    @contextlib.contextmanager
    def _writer_connection(self) -> Iterator[Connection]:
        """The one connection this process writes through, one writer at a time. SQLite allows one
        writer at a time anyway; sharing the connection also means that its ``PRAGMA data_version``
        moves only for changes made by *other* connections."""
        with self._writer_lock:
            if self._writer is None or self._writer.closed:
                self._writer = self.engine.connect()
            yield self._writer

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: Connection) -> Iterator[Connection]:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):
                conn.exec_driver_sql("ROLLBACK")
            raise

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        with self._writer_connection() as conn, self._transaction(conn):
            yield conn

    @contextlib.contextmanager
    def schema_transaction(self) -> Iterator[Connection]:
        with self._writer_connection() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")  # kept by the file; not inside a transaction
        with self.writing() as conn:  # BEGIN IMMEDIATE: the database's write lock is the schema lock
            yield conn

    def data_version(self) -> int:
        with self._writer_connection() as conn:
            return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())

    def change_token(self) -> int | None:
        # A connection of its own, so that the writer's commits move it too; read through the driver
        # because it is asked before every answer from a cached absence (3 µs instead of 15).
        try:
            with self._watch_lock:
                if self._watch is None:
                    self._watch = self.engine.raw_connection()
                cursor = self._watch.cursor()
                return int(cursor.execute("PRAGMA data_version").fetchone()[0])
        except (SQLAlchemyError, sqlite3.Error) as exc:
            log.debug("reading the change token: %s", _detail(exc))
            with self._watch_lock:
                broken, self._watch = self._watch, None  # opened afresh next time
            if broken is not None:  # not back to the pool, where a reader could be handed it
                with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
                    broken.invalidate()
            return None

    def wait_for_changes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            start = self.data_version()
            while time.monotonic() < deadline:
                time.sleep(min(SQLITE_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                if self.data_version() != start:
                    return
        except (SQLAlchemyError, OSError) as exc:
            log.debug("waiting for changes: %s", _detail(exc))
            time.sleep(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        self.engine.dispose()

    def _is_busy(self, exc: BaseException) -> bool:
        if isinstance(exc, OperationalError):
            return "locked" in _detail(exc) or "busy" in _detail(exc)
        return super()._is_busy(exc)


class PostgresEngine(Engine):
    def __init__(self, location: PostgresLocation, busy_timeout: float):
        self.description = location.description
        url = URL.create("postgresql+psycopg", username=location.user, password=location.password,
                         host=location.host, port=location.port, database=location.db)
        self.engine = create_engine(
            url,
            pool_pre_ping=True,  # a connection the server dropped is replaced, not handed out
            pool_size=location.pool_size,
            max_overflow=location.max_overflow,
            pool_recycle=location.pool_recycle,
            pool_timeout=busy_timeout,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT,
                "application_name": "s3filesfs",
                # A row or table another session holds is waited for as long as SQLite's busy timeout.
                "options": f"-c lock_timeout={int(busy_timeout * 1000)}",
            },
        )
        # Reads need no transaction: one round trip each.
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._location = location
        self._listener: psycopg.Connection | None = None  # used by the one thread that waits
        self._closed = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def schema_transaction(self) -> Iterator[Connection]:
        with self.writing() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield conn

    def order_changes(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})

    def announce_changes(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": FEED_CHANNEL})

    def _listening(self) -> psycopg.Connection:
        if self._listener is None or self._listener.closed:
            where = self._location
            self._listener = psycopg.connect(
                host=where.host, port=where.port, user=where.user, password=where.password,
                dbname=where.db, connect_timeout=CONNECT_TIMEOUT, application_name="s3filesfs",
                autocommit=True)
            self._listener.execute(f"LISTEN {FEED_CHANNEL}")
        return self._listener

    def wait_for_changes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            for _ in self._listening().notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            log.debug("waiting for changes: %s", " ".join(str(exc).split()))
            if self._listener is not None:
                self._listener.close()
            time.sleep(max(0.0, deadline - time.monotonic()))
        if self._closed and self._listener is not None:
            self._listener.close()

    def close(self) -> None:
        # The listening connection belongs to the thread that waits on it: it closes it on waking.
        self._closed = self._listener is not None
        self.engine.dispose()

    def _is_busy(self, exc: BaseException) -> bool:
        state = getattr(exc.orig, "sqlstate", None) if isinstance(exc, DBAPIError) else None
        return super()._is_busy(exc) or state in BUSY_STATES

    def _is_unreachable(self, exc: BaseException) -> bool:
        if not isinstance(exc, DBAPIError):
            return False
        if exc.connection_invalidated:
            return True
        state = getattr(exc.orig, "sqlstate", None)
        if state is None and any(words in _detail(exc) for words in REFUSALS):
            return False  # the server answered, and said no: not a matter of trying again
        # Without a SQLSTATE the client could not connect or lost the connection; class 08 is the
        # server's word for the same.
        return isinstance(exc, OperationalError) and (state is None or state.startswith("08"))
