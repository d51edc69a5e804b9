"""Where a PostgreSQL metadata store lives: the Llama Stack ``sql_postgres`` backend's keys.

A SQLite store is just a path; a PostgreSQL one is this. The password is a secret: it is left out of
``repr`` and ``description``, so neither a log line nor a message can carry it.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PostgresLocation:
    host: str = "localhost"
    port: int = 5432
    db: str = "llamastack"
    user: str = "llamastack"
    password: str | None = field(default=None, repr=False)
    # The connection pool of each process (the seed's newer keys, with SQLAlchemy's defaults).
    pool_size: int = 5
    max_overflow: int = 10
    pool_recycle: int = -1  # seconds before a connection is replaced; -1: never

    @property
    def description(self) -> str:
        """The database for messages and status: ``postgresql://user@host:port/db``, no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.description
