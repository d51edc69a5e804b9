"""The one exception tree of s3filesfs.

Every error the project raises on purpose is an ``S3FilesError``. Each class carries the three ways
the outside world sees it: the errno the mount returns to the kernel, the HTTP status the API
answers with, and the exit code of the CLI. They are chosen here and nowhere else, so the mount, the
socket API and the CLI can never disagree about what a failure means.

Exit codes: 0 ok, 1 the user can fix it (bad input, unknown id, bad config), 2 usage (click's own),
3 the storage backend failed or could not be reached, 4 an internal error (a bug), 130 interrupted
(Ctrl-C), 141 a command that changes the store did all its work but its reader went away before
reading all of its output (``upload *.txt | head -1``), 128+N stopped by signal N (SIGTERM, SIGHUP)
once what was under way was cleaned up, as a shell reports a command the signal killed.
"""

import errno as _errno
import signal as _signal

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_OUTPUT_LOST = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


class S3FilesError(Exception):
    """Base class; on its own it means the storage backend failed."""

    errno = _errno.EIO
    http_status = 500
    exit_code = 3
    # The OpenAI error "type" field in API error bodies.
    error_type = "server_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_openai(self) -> dict:
        """The OpenAI-shaped error body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": getattr(self, "param", None),
                "code": self.__class__.__name__,
            }
        }


# --- errors the user can fix -----------------------------------------------------------------


class UserError(S3FilesError):
    """Something the caller asked for cannot be done as asked."""

    errno = _errno.EINVAL
    http_status = 400
    exit_code = 1
    error_type = "invalid_request_error"


class InvalidRequest(UserError):
    """A request argument is malformed or out of range; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidPurpose(InvalidRequest):
    def __init__(self, purpose: object, allowed: tuple[str, ...]):
        super().__init__(
            f"purpose must be one of {', '.join(allowed)} (got {purpose!r})", param="purpose"
        )


class InvalidName(InvalidRequest):
    """A file name that cannot exist on a filesystem (empty, '.', '..', '/' or NUL inside)."""

    def __init__(self, message: str):
        super().__init__(message, param="filename")


class NameTooLong(InvalidName):
    errno = _errno.ENAMETOOLONG


class NameNotUtf8(InvalidName):
    """A name whose bytes are not UTF-8: the table and the API hold text, so it cannot be stored."""

    errno = _errno.EILSEQ


class NotFound(UserError):
    errno = _errno.ENOENT
    http_status = 404

    def __init__(self, file_id: str):
        super().__init__(f"File '{file_id}' not found")
        self.file_id = file_id


class NotStaged(UserError):
    """``retry --drop`` named something that is not waiting in the mount's staging folder."""

    errno = _errno.ENOENT
    http_status = 404

    def __init__(self, names: list[str]):
        super().__init__(f"nothing waits in staging as {', '.join(names)}: `s3filesfs status` lists "
                         "what does (a file a running mount is still writing is not waiting)")


class NotPermitted(UserError):
    """An operation the store or the mount refuses by design (mkdir, writes to by-id/, ...)."""

    errno = _errno.EPERM
    http_status = 403
    error_type = "permission_error"


class ReadOnly(NotPermitted):
    """A write on a mount made with ``--read-only``."""

    errno = _errno.EROFS


class NoAttribute(UserError):
    """An extended attribute the file does not have."""

    errno = _errno.ENODATA
    http_status = 404


class NotSupported(UserError):
    """An operation the mount does not offer (setting extended attributes)."""

    errno = _errno.ENOTSUP
    http_status = 405


class ConfigError(UserError):
    """The configuration is wrong; the message names the key."""

    http_status = 500


class UnsafeFolder(UserError):
    """The folder for the daemon's socket could be controlled by another user."""

    errno = _errno.EACCES
    http_status = 500
    error_type = "permission_error"


class NoSpace(UserError):
    """Local staging is full."""

    errno = _errno.ENOSPC
    http_status = 507


class FileTooLarge(UserError):
    """The table cannot record the file's size: an ``openai_files`` that a Llama Stack server created
    on PostgreSQL has a 32-bit ``bytes`` column (a table s3filesfs creates there has 64 bits)."""

    errno = _errno.EFBIG
    http_status = 413

    def __init__(self, file_id: str, size: int, database: str):
        super().__init__(
            f"{file_id} has {size} bytes, more than the openai_files table in {database} can record "
            "(its bytes column is a 32-bit INTEGER, as Llama Stack creates it on PostgreSQL: at most "
            "2147483647); nothing was registered. Files of 2 GiB or more need that column widened "
            "(ALTER TABLE openai_files ALTER COLUMN bytes TYPE BIGINT)")


class StagingInUse(UserError):
    """Another mount is using the staging folder."""

    def __init__(self, folder):
        super().__init__(f"staging folder {folder} is in use by another mount; give this mount a "
                         "folder of its own with --staging-dir")


# --- errors of the storage backend --------------------------------------------------------------


class StorageError(S3FilesError):
    """The object store or the metadata database failed."""

    http_status = 502


class BucketNotFound(StorageError):
    errno = _errno.ENODEV
    exit_code = 1

    def __init__(self, bucket: str):
        super().__init__(
            f"S3 bucket '{bucket}' does not exist. Either create the bucket manually or set "
            "'auto_create_bucket: true' in your configuration."
        )


class AccessDenied(StorageError):
    errno = _errno.EACCES
    exit_code = 1

    def __init__(self, bucket: str, detail: str = ""):
        hint = f": {detail}" if detail else ""
        super().__init__(f"Access denied to S3 bucket '{bucket}'{hint}")


class StorageUnavailable(StorageError):
    """The backend could not be reached (connection refused, timeout, endpoint gone)."""

    http_status = 503


class StagingFailed(StorageError):
    """The local staging disk failed a read or write (EIO), or a writer ended without closing:
    the staged content is incomplete and is never registered on its own."""


class BlobMissing(StorageError):
    """A metadata row exists but its object does not: the file is treated as gone."""

    errno = _errno.ENOENT
    http_status = 404
    exit_code = 1


def errno_of(exc: BaseException) -> int:
    """The errno the mount returns for any exception: ours carry one, the OS's keep theirs."""
    if isinstance(exc, S3FilesError):
        return exc.errno
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return _errno.EIO


def internal_error(exc: BaseException) -> S3FilesError:
    """Wrap an unexpected exception so callers can still map it in one place."""
    err = S3FilesError(f"internal error: {type(exc).__name__}: {exc}")
    err.exit_code = 4
    return err


# --- not an error: a command told to stop -----------------------------------------------------


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived while a command was working (raised by its signal handler).

    A ``BaseException``, like Ctrl-C's ``KeyboardInterrupt``: no ``except Exception`` on the way
    may swallow it, while every ``except BaseException`` clean-up (an upload aborting its open
    multipart upload) runs before the command exits with ``exit_code``.
    """

    def __init__(self, signum: int):
        self.signal_name = _signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")
        self.message = f"stopped by {self.signal_name}"
        self.exit_code = 128 + signum
