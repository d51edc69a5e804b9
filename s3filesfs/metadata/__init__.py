"""The metadata layer: the ``openai_files`` table (shared with Llama Stack) and our ``s3filesfs_*`` state,
on SQLite or PostgreSQL. The only place that speaks SQL.

* ``schema``: the tables, declared once with SQLAlchemy Core, and how they are created when missing;
* ``engines``: what differs between the two engines (connections, write transactions, how a
  reader of the change feed is woken, what an error means);
* ``store``: ``MetadataStore``, every query, written once for both engines;
* ``feed``: ``ChangeFeed``, one reader's place in the change feed;
* ``location``: ``PostgresLocation``, where a PostgreSQL store lives (a SQLite one is a path).
"""

from .feed import ChangeFeed
from .location import PostgresLocation
from .schema import FILE_COLUMNS, PUBLIC_ROW, TABLE
from .store import MetadataStore

__all__ = ["ChangeFeed", "FILE_COLUMNS", "PUBLIC_ROW", "TABLE", "MetadataStore", "PostgresLocation"]
