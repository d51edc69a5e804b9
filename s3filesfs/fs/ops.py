"""The FUSE face of the mount: each kernel request, translated into a call on ``core.MountCore``.

Nothing here decides what an operation does (that is ``core.py``, which runs without a kernel).
This module only unpacks requests (paths, flags, the calling thread), packs answers (attributes,
handles and their caching flags) and maps every failure to the errno chosen for it in ``errors.py``
(via ``errno_of``): nothing reaches the kernel as a bare exception, and every refused operation is
logged once with its reason. mfusepy is imported nowhere else.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy prefers libfuse2 when both exist

import mfusepy  # noqa: E402

from .. import metrics  # noqa: E402
from ..errors import NotPermitted, NotSupported, S3FilesError, errno_of  # noqa: E402
from .core import Caller, MountCore, Opened  # noqa: E402
from .namespace import INDEX  # noqa: E402

log = logging.getLogger(__name__)

FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_READDIR_PLUS = 1  # libfuse3: the kernel asked for entries with their attributes
FUSE_FILL_DIR_PLUS = 2  # libfuse3: this entry's attributes are complete, cache them
QUIET_ERRNOS = (errno.ENOENT, errno.ENODATA, errno.ENOTSUP)  # answers `ls` and `cp` ask for all the time

# libfuse3's own call for "this path changed behind the kernel's back" (mfusepy does not wrap it).
_invalidate_path = mfusepy._libfuse.fuse_invalidate_path
_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_invalidate_path.restype = ctypes.c_int


def _caller() -> Caller:
    return Caller(mfusepy.fuse_get_context()[2])  # FUSE names the thread that made the request


def _refused(operation: str, where, exc: Exception) -> mfusepy.FuseOSError:
    """The errno for ``exc`` as a FuseOSError, counted and (unless it is routine) logged once."""
    code = errno_of(exc)
    metrics.error(exc, operation, keep=code not in QUIET_ERRNOS)
    if isinstance(where, str):
        where = where.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(exc, S3FilesError):
        if code not in QUIET_ERRNOS:
            log.warning("%s %s refused (%s): %s", operation, where, errno.errorcode.get(code, code), exc.message)
    elif isinstance(exc, OSError):
        log.warning("%s %s failed: %s", operation, where, exc)
    else:
        log.exception("%s %s: unexpected error, answering EIO", operation, where)
    return mfusepy.FuseOSError(code)


def _mapped(method):
    """Run one operation; turn any failure into its errno and log refusals once."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except Exception as exc:
            where = f"{args[0]} -> {args[1]}" if method.__name__ in ("rename", "link", "symlink") else args[0]
            raise _refused(method.__name__, where, exc) from None

    return wrapper


def _mapped_entries(entries, path: str):
    """A listing's entries, produced as they are asked for, with failures mapped as ``_mapped`` does."""
    try:
        yield from entries
    except mfusepy.FuseOSError:
        raise
    except Exception as exc:
        raise _refused("readdir", path, exc) from None


def _handle(fi, opened: Opened) -> int:
    fi.fh = opened.fh
    if opened.direct_io:
        fi.direct_io = 1
    if opened.keep_cache:
        fi.keep_cache = 1
    return 0


class S3FilesOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, core: MountCore):
        self.core = core
        self.started_serving = False  # set once libfuse has mounted and called init
        self._fuse: int | None = None  # libfuse's handle of this mount, for invalidations

    def init_with_config(self, conn, config):
        # Always list with attributes: in "auto" mode the kernel does so only for the first batch
        # of a big folder, and `ls -l` then looks up every later file one by one.
        if conn is not None and conn.capable & FUSE_CAP_READDIRPLUS:
            conn.want = (conn.want | FUSE_CAP_READDIRPLUS) & ~FUSE_CAP_READDIRPLUS_AUTO
        self._fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        self.started_serving = True

    def invalidate(self, paths: list[str]) -> None:
        """Make the kernel forget what it cached about ``paths`` (relative to the mount), which
        changed elsewhere: their next lookup asks us again instead of waiting out the timeout.
        A path the kernel does not know is skipped (libfuse answers ENOENT)."""
        if self._fuse is None:
            return
        for path in paths:
            encoded = ("/" + path).encode("utf-8", "surrogateescape")
            _invalidate_path(self._fuse, encoded)

    # --- attributes and listing ------------------------------------------------------------

    @_mapped
    def getattr(self, path, fh=None):
        # With a handle (an fstat, or the kernel checking an open file's size before a read), the
        # handle answers: its path may name another file by now, or none.
        return self.core.getattr(path, None if fh is None else fh.fh)

    @_mapped
    def opendir(self, path):
        return self.core.opendir(path)

    @_mapped
    def releasedir(self, path, fh):
        self.core.releasedir(fh)
        return 0

    @_mapped
    def readdir(self, path, fh, offset=0):
        return _mapped_entries(self.core.readdir(path, fh, offset), path)

    @_mapped
    def statfs(self, path):
        return self.core.statfs()

    @_mapped
    def getxattr(self, path, name, position=0):
        return self.core.getxattr(path, name)

    @_mapped
    def listxattr(self, path):
        return self.core.listxattr(path)

    @_mapped
    def setxattr(self, path, name, value, options, position=0):
        raise NotSupported(f"extended attributes are read-only ({name})")

    @_mapped
    def removexattr(self, path, name):
        raise NotSupported(f"extended attributes are read-only ({name})")

    # --- refused, or accepted and ignored ----------------------------------------------------

    @_mapped
    def mkdir(self, path, mode):
        raise NotPermitted("folders cannot be created: the purposes are fixed")

    @_mapped
    def rmdir(self, path):
        raise NotPermitted("folders cannot be removed: the purposes are fixed")

    @_mapped
    def symlink(self, target, source):
        raise NotPermitted("symbolic links are not supported")

    @_mapped
    def link(self, target, source):
        raise NotPermitted("hard links are not supported")

    @_mapped
    def mknod(self, path, mode, dev):
        raise NotPermitted("only regular files can be created")

    @_mapped
    def chmod(self, path, mode):
        self.core.accept(path)
        return 0

    @_mapped
    def chown(self, path, uid, gid):
        self.core.accept(path)
        return 0

    @_mapped
    def utimens(self, path, times=None):
        self.core.accept(path)
        return 0

    # --- files -------------------------------------------------------------------------------

    @_mapped
    def create(self, path, mode, fi):
        return _handle(fi, self.core.create(path, fi.flags, _caller()))

    @_mapped
    def open(self, path, fi):
        return _handle(fi, self.core.open(path, fi.flags, _caller()))

    @_mapped
    def read(self, path, size, offset, fi):
        return self.core.read(fi.fh, size, offset)

    @_mapped
    def write(self, path, data, offset, fi):
        return self.core.write(fi.fh, data, offset)

    @_mapped
    def truncate(self, path, length, fh=None):
        self.core.truncate(path, length)
        return 0

    @_mapped
    def flush(self, path, fi):
        self.core.flush(fi.fh, _caller())
        return 0

    @_mapped
    def fsync(self, path, datasync, fi):
        self.core.fsync(fi.fh, _caller())
        return 0

    @_mapped
    def release(self, path, fi):
        self.core.release(fi.fh)
        return 0

    @_mapped
    def unlink(self, path):
        self.core.unlink(path)
        return 0

    @_mapped
    def rename(self, old, new):
        self.core.rename(old, new)
        return 0

    def destroy(self, path):
        self.core.stop()


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with two requests answered closer to libfuse.

    ``readdir``: mfusepy hands libfuse only each entry's mode, so after a listing the kernel looks
    every file up again: 10,000 calls into Python for one ``ls -l``. Here each entry carries its
    attributes and an offset (libfuse only forwards attributes in offset mode), and the kernel
    caches them for ``attr_timeout``. ``.``, ``..`` and ``index.jsonl`` (whose size changes with
    every file) are listed without them.

    ``write``: mfusepy copies every request's data into a new ``bytes`` (a fresh 1 MiB allocation
    per call, page faults included). Here the operation gets a view of libfuse's buffer, valid for
    the call only; staging and the upload buffer each copy from it once.
    """

    def write(self, path, buf, size, offset, fip):
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        fh = fip.contents if self.raw_fi else fip.contents.fh
        if size <= 0:
            return self.operations.write(decoded, b"", offset, fh)
        address = ctypes.cast(buf, ctypes.c_void_p).value
        with memoryview((ctypes.c_char * size).from_address(address)).cast("B") as data:
            return self.operations.write(decoded, data, offset, fh)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        plus = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        st = mfusepy.c_stat()
        for number, name, attrs in self.operations.readdir(decoded, fip.contents.fh, offset):
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            mfusepy.set_st_attrs(st, attrs, use_ns=True)
            fill = 0 if name in (".", "..", INDEX) else plus  # libfuse looks these up on its own
            if filler(buf, name.encode(self.encoding, self.errors), st, number, fill) != 0:
                break
        return 0
