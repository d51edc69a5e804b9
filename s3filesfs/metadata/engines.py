"""What differs between SQLite and PostgreSQL: connections, write transactions, the change token
behind ``data_version``, and what an error means. The statements themselves are in ``store``.

SQLite: one file shared by the mount, the daemon and the CLI, in WAL mode with a busy timeout.
Reads take a connection from a pool; every write of a process goes through one connection, one
transaction at a time (``BEGIN IMMEDIATE``, so a writer waits for the lock up front instead of
failing half-way). ``data_version`` is SQLite's ``PRAGMA data_version`` on that connection: it moves
for every commit of another connection (another process, a Llama Stack server) and never for ours.

PostgreSQL: a pool of connections per process (the pool keys of the seed's ``sql_postgres``
backend), each write in a transaction of its own. ``data_version`` is built from the server's
statistics: the rows inserted, updated and deleted in ``openai_files`` by anyone
(``pg_stat_user_tables``), less the rows this store changed itself, plus those of
``s3filesfs_missing`` by anyone, this store included (a read that hides a row reloads the listing of
the mount that read it). Every write of ours asks the
server to publish its statistics before the commit returns (``pg_stat_force_next_flush``, PostgreSQL
15 and later), so the token moves at once for other s3filesfs processes, does not move for our own
writes, and moves for other programs (a Llama Stack server) once the server publishes their
statistics, which it does within a second or so of their commit (at most its idle flush interval,
10 s). Before PostgreSQL 15 our own writes move it too (one needless reload of a mount's listing),
and a server with ``track_counts = off`` never moves it. A change feed will replace this.
"""

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import URL, Connection, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from ..errors import StorageError, StorageUnavailable
from .location import PostgresLocation
from .schema import MISSING, TABLE

# Seconds to wait for a PostgreSQL server to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 10
# Taken by every process while it creates missing tables, so two starting at once do not collide.
SCHEMA_LOCK_KEY = 0x7333_6673_7363_6865  # "s3fssche"
# SQLSTATEs that mean "try again later": lock timeout, serialization failure, deadlock, too many
# connections, and the server shutting down or starting up.
BUSY_STATES = {"55P03", "40001", "40P01", "53300", "57P01", "57P02", "57P03"}
# A connection the server refuses carries no SQLSTATE on the client side, only the server's words.
REFUSALS = ("authentication failed", "pg_hba.conf", "does not exist", "permission denied")


def _detail(exc: BaseException) -> str:
    """The driver's own words, on one line, without the SQL and parameters SQLAlchemy adds."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return " ".join(str(orig).split()) or type(orig).__name__


class Engine:
    """One database: connections for reading, a transaction for writing, the change token."""

    description: str

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection in a transaction, committed when the block ends, rolled back if it fails."""
        raise NotImplementedError

    def writing_visibly(self) -> contextlib.AbstractContextManager[Connection]:
        """Like ``writing``, but what it changes moves this process's own ``data_version`` too (as if
        another process had written it): for the notes that hide a row from every listing, the
        mount's own included."""
        raise NotImplementedError

    def schema_transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction that no other process's schema step runs beside."""
        raise NotImplementedError

    def files_changed(self, conn: Connection, rows: int) -> None:
        """Note that this store's write (not yet committed on ``conn``) changed ``rows`` rows of
        ``openai_files``, for ``data_version``."""

    def data_version(self) -> int:
        raise NotImplementedError

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
    def writing_visibly(self) -> Iterator[Connection]:
        # Through a connection of the pool, not the writer: the writer's data_version then moves.
        with self.reading() as conn, self._transaction(conn):
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

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
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
        self._own_rows = 0  # rows of openai_files this store changed, counted by the server too
        self._own_lock = threading.Lock()
        self._pending = threading.local()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        self._pending.rows = 0
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            # The server counts rows a statement changed whether or not its transaction commits.
            with self._own_lock:
                self._own_rows += self._pending.rows

    @contextlib.contextmanager
    def schema_transaction(self) -> Iterator[Connection]:
        with self.writing() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield conn

    def _publishes_own_statistics(self) -> bool:
        version = self.engine.dialect.server_version_info
        return version is not None and version >= (15,)

    @contextlib.contextmanager
    def writing_visibly(self) -> Iterator[Connection]:
        # Rows of s3filesfs_missing count in data_version as anyone's, ours included: published at
        # once (before the first statement, which may fail), never subtracted.
        with self.writing() as conn:
            if self._publishes_own_statistics():
                conn.execute(text("SELECT pg_stat_force_next_flush()"))
            yield conn

    def files_changed(self, conn: Connection, rows: int) -> None:
        if rows and self._publishes_own_statistics():
            # Published when this session goes idle after the commit, before the commit returns.
            conn.execute(text("SELECT pg_stat_force_next_flush()"))
            self._pending.rows += rows

    def data_version(self) -> int:
        with self.reading() as conn:
            changed = conn.execute(
                text("SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables "
                     "WHERE relid IN (to_regclass(:table), to_regclass(:missing))"),
                {"table": TABLE, "missing": MISSING},
            ).scalar()
        with self._own_lock:
            return int(changed or 0) - self._own_rows

    def close(self) -> None:
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
