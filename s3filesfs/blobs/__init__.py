"""The BlobStore interface: where file bodies live, keyed by file id.

A store knows nothing of purposes, names or rows; it keeps bytes under keys and a few string
metadata values beside them. Writes go through a ``BlobWriter`` so that a body can be sent while
it is still arriving (the mount's sequential writers, a streamed CLI upload) and memory stays
bounded whatever the size. An object exists only once its writer commits.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    modified: float | None = None  # when the object was written (S3's LastModified), epoch seconds


@dataclass(frozen=True)
class UploadInfo:
    """An upload begun and never completed or aborted (an open S3 multipart upload)."""

    key: str
    upload_id: str
    initiated: float  # epoch seconds


class BlobWriter(ABC):
    """An object being written. Call ``write`` any number of times, then ``commit`` or ``abort``."""

    @abstractmethod
    def write(self, data) -> None:
        """Append ``data``: any bytes-like object, which may be reused by the caller afterwards."""

    @abstractmethod
    def commit(self) -> int:
        """Make the object visible under its key; returns its size. On failure nothing is left."""

    @abstractmethod
    def abort(self) -> bool:
        """Drop everything written so far. Safe to call more than once and after a failure.

        Returns False if the store may still hold a piece of it (the abort itself failed)."""

    @property
    def begun(self) -> bool:
        """True once the store holds pieces of this object that only ``abort`` removes (an S3
        multipart upload under way); a writer that dies then leaves them behind."""
        return False


class BlobStore(ABC):
    #: Where the bodies go, for messages and ``config show`` (never holds a secret).
    location: str

    @abstractmethod
    def ensure_ready(self) -> None:
        """Check (and if configured, create) the bucket or directory. Raises a clear error."""

    @abstractmethod
    def writer(self, key: str, metadata: dict[str, str]) -> BlobWriter: ...

    @abstractmethod
    def read(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; ``b""`` past the end. Raises BlobMissing."""

    @abstractmethod
    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start..end`` (end exclusive, None for the rest) as chunks."""

    @abstractmethod
    def head(self, key: str) -> BlobInfo | None: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def keys(self) -> Iterator[BlobInfo]:
        """Every object in the store (its metadata not filled in), streamed: a listing of
        millions of objects is never held in memory at once."""

    def abort_unfinished(self, key: str) -> int:
        """Remove what writers of ``key`` that never finished left in the store (S3: its
        incomplete multipart uploads); returns how many. Other keys are never touched.

        Safe with several hosts on one bucket: every file id is new and written by one writer
        only, and callers ask this only for ids whose writer has ended (their own, or one of their
        host's dead processes), so it never cuts off another host's upload."""
        return 0

    def open_uploads(self) -> Iterator[UploadInfo]:
        """Every upload begun and neither completed nor aborted, streamed. A store whose writers
        leave nothing behind that outlives them (the local store) has none. Every host sees every
        host's uploads here: only ``repair`` looks, and it leaves those recorded as under way."""
        return iter(())

    def abort_upload(self, upload: UploadInfo) -> None:
        """Abort one of ``open_uploads()``; one that has ended meanwhile is not an error."""
        return None  # a store without open uploads has none to abort
