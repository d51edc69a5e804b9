"""ChangeFeed: what changed in a store since a reader last looked, without re-reading the table.

Every writer in s3filesfs appends the id of each file whose row it inserts, deletes, renames, hides
or shows again to ``s3filesfs_changes`` (see ``store``), in the same transaction; positions grow and
become visible in order. A long-running reader (a mount) starts at the newest position and, each
round, takes the ids written after its position: it then knows exactly which files to look at
again. Rounds are started by a wake-up (PostgreSQL ``NOTIFY``, SQLite ``data_version``) or, at
the latest, every ``catch_up_seconds``, which covers a missed wake-up.

Writers that do not write the feed (a Llama Stack server sharing the database) are covered in two
ways:

* **Inserts**: each round also asks for the ids of rows created in the last ``RECENT_SECONDS`` (one
  indexed range query on ``created_at``, usually a handful of ids) and reports those not seen
  before. The window is wide because the seed stamps ``created_at`` before it uploads the object
  and inserts the row after, and because hosts' clocks differ.
* **Deletes and anything else**: on SQLite, ``data_version`` moving without any new feed entry
  means someone else wrote; the round then says so (``everything``), and the reader drops what it
  cached. PostgreSQL cannot tell, so a reader there also lets cached rows age out (see the mount's
  namespace).

A reader that fell behind past what the feed still keeps (entries are trimmed after a week) is
told ``everything`` too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .store import FEED_PAGE, MetadataStore

# How far back the query for rows of writers without the feed looks, in seconds of created_at.
RECENT_SECONDS = 300
# Entries of the feed are kept this long (the expiry sweep trims them, once per store).
KEEP_SECONDS = 7 * 24 * 3600


@dataclass
class Round:
    """What one round of reading the feed found."""

    file_ids: set[str] = field(default_factory=set)  # files whose rows may have changed
    everything: bool = False  # something changed that the feed cannot name: forget all cached rows

    def __bool__(self) -> bool:
        return self.everything or bool(self.file_ids)


class ChangeFeed:
    """One reader's place in the change feed of ``store``. Used by one thread at a time."""

    def __init__(self, store: MetadataStore, catch_up_seconds: float = 1.0):
        self.store = store
        self.catch_up_seconds = catch_up_seconds
        self.position = store.feed_position()
        self._version = store.data_version()
        self._recent = set(store.created_since(int(time.time()) - RECENT_SECONDS))
        self._last_recent_check = time.monotonic()

    def wait(self, timeout: float | None = None) -> None:
        """Until something may have changed, or ``catch_up_seconds`` (or ``timeout``) passed."""
        self.store.wait_for_changes(self.catch_up_seconds if timeout is None else timeout)

    def next_round(self) -> Round:
        """Everything that changed since the last round (raises StorageError if the store fails;
        the position only moves past what was returned, so nothing is lost by a failure)."""
        found = Round()
        version = self.store.data_version()  # before the feed: a write between the two is seen twice, not never
        entries = self._entries_since(self.position)
        if entries and self.position:
            oldest = self.store.feed_oldest()
            if oldest is not None and oldest > self.position + 1 and entries[0][0] == oldest:
                found.everything = True  # trimmed past us: what fell out is unknown
        if entries:
            found.file_ids.update(file_id for _, file_id in entries)
        elif version is not None and self._version is not None and version != self._version:
            found.everything = True  # someone wrote without the feed
        self._version = version
        if time.monotonic() - self._last_recent_check >= self.catch_up_seconds or found.everything:
            self._last_recent_check = time.monotonic()
            recent = set(self.store.created_since(int(time.time()) - RECENT_SECONDS))
            found.file_ids.update(recent - self._recent)
            self._recent = recent
        if entries:
            self.position = entries[-1][0]
        return found

    def _entries_since(self, position: int) -> list[tuple[int, str]]:
        entries: list[tuple[int, str]] = []
        while True:
            page = self.store.feed_since(position)
            entries.extend(page)
            if len(page) < FEED_PAGE:
                return entries
            position = page[-1][0]
