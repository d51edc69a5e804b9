"""The vocabulary of the Files store: file objects, purposes, ids, names and expiry arithmetic.

Pure functions and values only; nothing here touches storage. The numbers are the Llama Stack
``remote::s3`` provider's, so rows written by either side mean the same thing:

* ids are ``"file-" + uuid4().hex``;
* ``batch`` files expire 30 days after creation by default, other purposes never;
* "never" is stored as ``created_at + 42 * 30 days`` and shown as ``null``;
* an explicit ``expires_after`` is ``{"anchor": "created_at", "seconds": 3600..2592000}``.
"""

import re
import uuid
from dataclasses import asdict, dataclass

from .errors import InvalidName, InvalidPurpose, InvalidRequest, NameNotUtf8, NameTooLong

PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

EXPIRES_AFTER_MIN = 3600
EXPIRES_AFTER_MAX = 30 * 24 * 3600  # 2592000, also the batch default
NO_EXPIRY_SECONDS = EXPIRES_AFTER_MAX * 42  # 108864000: the seed's stand-in for "never"

LIST_LIMIT_MAX = 10000
DEFAULT_FILENAME = "uploaded_file"
NAME_MAX_BYTES = 255

_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def is_file_id(value: object) -> bool:
    return isinstance(value, str) and bool(_FILE_ID.match(value))


def check_purpose(purpose: object, allowed: tuple[str, ...] = PURPOSES) -> str:
    if not isinstance(purpose, str) or purpose not in allowed:
        raise InvalidPurpose(purpose, allowed)
    return purpose


def check_name(name: str) -> str:
    """A name usable as one path component: what the mount and the daemon accept."""
    if not name or name in (".", ".."):
        raise InvalidName(f"invalid file name {name!r}")
    if "/" in name or "\0" in name:
        raise InvalidName(f"file name {name!r} must not contain '/' or NUL")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8, kept as surrogates by the decoder
        raise NameNotUtf8(f"file name {name.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        raise NameTooLong(f"file name is longer than {NAME_MAX_BYTES} bytes")
    return name


# Names that editors, browsers and sync tools use while a file is still being written. They stay
# local: the daemon never uploads them and the mount keeps them in staging until renamed.
_TEMPORARY_SUFFIXES = ("~", ".swp", ".tmp", ".part", ".crdownload")
_RSYNC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")  # rsync's ".name.XXXXXX"


def is_temporary_name(name: str) -> bool:
    """True for ``.*``, ``*~``, ``*.swp``, ``*.tmp``, ``*.part``, ``*.crdownload`` and rsync's ``.name.XXXXXX``."""
    if not name:
        return False
    # rsync's names start with a dot too; the explicit pattern documents them.
    return name.startswith(".") or bool(_RSYNC_TEMP.match(name)) or name.lower().endswith(_TEMPORARY_SUFFIXES)


def parse_expires_after(value: object) -> int | None:
    """Validate an OpenAI ``expires_after`` and return its seconds (None when absent).

    Accepts the API's dict form ``{"anchor": "created_at", "seconds": N}`` or a bare number of
    seconds (what the CLI's ``--expires-after`` gives). Messages follow the seed's validation.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = set(value) - {"anchor", "seconds"}
        if unknown:
            raise InvalidRequest(
                f"expires_after: unknown field {sorted(unknown)[0]!r}", param="expires_after"
            )
        anchor = value.get("anchor")
        if anchor != "created_at":
            raise InvalidRequest(
                f"expires_after.anchor: Input should be 'created_at' (got {anchor!r})",
                param="expires_after",
            )
        seconds = value.get("seconds")
    else:
        seconds = value
    if isinstance(seconds, bool):
        seconds = None  # True/False are ints to Python, but not to a user
    elif isinstance(seconds, str) and re.fullmatch(r"\s*-?\d+\s*", seconds):
        seconds = int(seconds)
    elif isinstance(seconds, float) and seconds.is_integer():
        seconds = int(seconds)
    if not isinstance(seconds, int):
        raise InvalidRequest(
            f"expires_after.seconds: Input should be a valid integer (got {seconds!r})",
            param="expires_after",
        )
    if seconds < EXPIRES_AFTER_MIN:
        raise InvalidRequest(
            f"expires_after.seconds: Input should be greater than or equal to {EXPIRES_AFTER_MIN}",
            param="expires_after",
        )
    if seconds > EXPIRES_AFTER_MAX:
        raise InvalidRequest(
            f"expires_after.seconds: Input should be less than or equal to {EXPIRES_AFTER_MAX}",
            param="expires_after",
        )
    return seconds


def expires_at_for(purpose: str, created_at: int, expires_after: int | None) -> int:
    """The ``expires_at`` to store for a new file."""
    if expires_after is not None:
        return created_at + expires_after
    if purpose == "batch":
        return created_at + EXPIRES_AFTER_MAX
    return created_at + NO_EXPIRY_SECONDS


def shown_expires_at(created_at: int, expires_at: int | None) -> int | None:
    """What users see: ``None`` for "never" (anything past the longest allowed expiry)."""
    if expires_at is None or expires_at > created_at + EXPIRES_AFTER_MAX:
        return None
    return expires_at


@dataclass(frozen=True)
class FileObject:
    """One file as the OpenAI Files API describes it. ``expires_at`` is the stored value."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None

    @classmethod
    def from_row(cls, row: dict) -> "FileObject":
        # Built without the frozen __init__ (one guarded setattr per field): a folder listing makes
        # ten thousand of these at a time, and this is a fifth of the cost.
        file = object.__new__(cls)
        file.__dict__.update(
            id=row["id"],
            filename=row["filename"] if row.get("filename") is not None else DEFAULT_FILENAME,
            purpose=row["purpose"],
            bytes=int(row["bytes"] or 0),
            created_at=int(row["created_at"] or 0),
            expires_at=None if row.get("expires_at") is None else int(row["expires_at"]),
        )
        return file

    @property
    def visible_expires_at(self) -> int | None:
        return shown_expires_at(self.created_at, self.expires_at)

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_openai(self) -> dict:
        return {
            "object": "file",
            "id": self.id,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.visible_expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
        }

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FilePage:
    """One page of a listing, shaped like OpenAI's list response."""

    data: list[FileObject]
    has_more: bool

    def to_openai(self) -> dict:
        return {
            "object": "list",
            "data": [f.to_openai() for f in self.data],
            "has_more": self.has_more,
            "first_id": self.data[0].id if self.data else "",
            "last_id": self.data[-1].id if self.data else "",
        }
