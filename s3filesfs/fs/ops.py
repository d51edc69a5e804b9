"""The FUSE operations: each kernel request, turned into calls on the namespace, staging and reader.

Semantics are documented in ``docs/semantics.md``. Every operation goes through ``_mapped``: our
errors become the errno chosen for them in ``errors.py`` (via ``errno_of``), nothing reaches the
kernel as a bare exception, and every refused operation is logged once with its reason.

Handles: ``open``/``create`` return a number naming a ``Reader`` (a committed file opened to read),
a ``StagedFile`` (a path being written, shared by every open of that path; opening an existing
file for writing copies it into staging first) or bytes (``index.jsonl``, frozen at open).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy prefers libfuse2 when both exist

import mfusepy  # noqa: E402

from ..errors import (  # noqa: E402
    NoAttribute,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    S3FilesError,
    errno_of,
)
from ..files import FileService  # noqa: E402
from ..model import FileObject, check_name, is_temporary_name  # noqa: E402
from .namespace import BY_ID, INDEX, Namespace, parse  # noqa: E402
from .reader import Reader  # noqa: E402
from .staging import StagedFile, Staging  # noqa: E402

log = logging.getLogger(__name__)

FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_READDIR_PLUS = 1  # libfuse3: the kernel asked for entries with their attributes
FUSE_FILL_DIR_PLUS = 2  # libfuse3: this entry's attributes are complete, cache them
LAST_OPENED_MAX = 100_000
IO_SIZE = 1024 * 1024  # st_blksize: `cp` and `cat` move 1 MiB per call instead of 128 KiB
XATTRS = ("user.openai.file_id", "user.openai.purpose", "user.openai.created_at", "user.openai.expires_at")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
QUIET_ERRNOS = (errno.ENOENT, errno.ENODATA, errno.ENOTSUP)  # answers `ls` and `cp` ask for all the time


def _bypass_page_cache_if_write_only(fi) -> None:
    """Send a write-only descriptor's writes (``cp``, ``dd``, a ``>`` redirect) straight to us.

    Such a descriptor can neither read nor mmap, so caching what it writes only costs: the kernel
    would first copy every write into page-cache pages and keep them, a second copy of the staged
    file, a GiB of memory per GiB copied in. With ``direct_io`` each write reaches staging in one
    copy; the kernel drops any cached pages of the range written, so descriptors that can read
    still see the new bytes at once.
    """
    if fi.flags & os.O_ACCMODE == os.O_WRONLY:
        fi.direct_io = 1


def _calling_thread() -> int:
    return mfusepy.fuse_get_context()[2]  # FUSE names the thread that made the request


def _process_of(thread: int) -> int:
    """The process (thread group) of ``thread``: a descriptor opened in one thread of a process
    may be closed in another."""
    try:
        with open(f"/proc/{thread}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return thread


def _mapped(method):
    """Run one operation; turn any failure into its errno and log refusals once."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except Exception as exc:
            code = errno_of(exc)
            where = f"{args[0]} -> {args[1]}" if method.__name__ in ("rename", "link", "symlink") else args[0]
            if isinstance(exc, S3FilesError):
                if code not in QUIET_ERRNOS:
                    log.warning("%s %s refused (%s): %s", method.__name__, where, errno.errorcode.get(code, code), exc.message)
            elif isinstance(exc, OSError):
                log.warning("%s %s failed: %s", method.__name__, where, exc)
            else:
                log.exception("%s %s: unexpected error, answering EIO", method.__name__, where)
            raise mfusepy.FuseOSError(code) from None

    return wrapper


class S3FilesOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, service: FileService, staging: Staging, refresh_seconds: float = 1.0,
                 read_only: bool = False):
        self.service = service
        self.staging = staging
        self.namespace = Namespace(service, refresh_seconds)
        self.read_only = read_only
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self.started_serving = False  # set once libfuse has mounted and called init
        self._handles: dict[int, object] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.RLock()
        self._staged: dict[tuple[str, str], StagedFile] = {}  # paths being written or kept local
        self._last_opened: dict[str, str] = {}  # path -> the id it named when last opened to read
        self._writers: dict[int, tuple[int, int]] = {}  # handle -> (thread, process) that opened it to write

    def init_with_config(self, conn, config):
        # Always list with attributes: in "auto" mode the kernel does so only for the first batch
        # of a big folder, and `ls -l` then looks up every later file one by one.
        if conn is not None and conn.capable & FUSE_CAP_READDIRPLUS:
            conn.want = (conn.want | FUSE_CAP_READDIRPLUS) & ~FUSE_CAP_READDIRPLUS_AUTO
        self.started_serving = True

    # --- helpers -----------------------------------------------------------------------------

    def _parse(self, path: str):
        return parse(path, self.service.purposes)

    def _writable(self, path: str, what: str):
        """The parsed path if it names a file in a purpose folder we may write to."""
        if self.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")
        where = self._parse(path)
        if where.kind != "file":
            raise NotPermitted(f"{what}: only files inside a purpose folder can be written")
        check_name(where.name)
        return where

    def _new_handle(self, handle: object) -> int:
        number = next(self._numbers)
        self._handles[number] = handle
        return number

    def _note_writer(self, fh: int) -> None:
        thread = _calling_thread()
        self._writers[fh] = (thread, _process_of(thread))

    def _closed_by_writer(self, fh: int) -> bool:
        """Whether this close comes from the process that opened ``fh`` for writing (the same
        thread, the usual case, is answered without reading /proc)."""
        opener = self._writers.get(fh)
        if opener is None:
            return False
        thread = _calling_thread()
        return thread == opener[0] or _process_of(thread) == opener[1]

    def _file_attrs(self, size: int, mtime_ns: int, mode: int) -> dict:
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": size, "st_uid": self.uid,
                "st_gid": self.gid, "st_mtime": mtime_ns, "st_atime": mtime_ns, "st_ctime": mtime_ns,
                "st_blocks": (size + 511) // 512, "st_blksize": IO_SIZE}

    def _dir_attrs(self, mode: int) -> dict:
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2, "st_uid": self.uid, "st_gid": self.gid,
                "st_mtime": self.started, "st_atime": self.started, "st_ctime": self.started}

    def _committed_attrs(self, file: FileObject, mode: int = 0o644) -> dict:
        return self._file_attrs(file.bytes, file.created_at * 1_000_000_000, mode)

    def _staged_attrs(self, staged: StagedFile) -> dict:
        return self._file_attrs(staged.size, staged.shown_created_at * 1_000_000_000, 0o644)

    def _stage(self, purpose: str, name: str, base: FileObject | None, copy: bool) -> StagedFile:
        """The staged file of a path about to change, opened once more.

        Shared if the path is already being written; else a new one that replaces ``base`` and,
        with ``copy``, starts from its content (copy-on-write).
        """
        with self._lock:
            staged = self._staged.get((purpose, name))
            if staged is not None:
                staged.opens += 1
                return staged
            staged = self.staging.new_file(self.service, purpose, name, base.id if base else None,
                                           is_temporary_name(name))
            staged.opens = 1
            if copy and base is not None:
                staged.start_from(base)
            self._staged[(purpose, name)] = staged
        return staged

    def _forget(self, staged: StagedFile) -> None:
        with self._lock:
            if self._staged.get((staged.purpose, staged.filename)) is staged:
                del self._staged[(staged.purpose, staged.filename)]
        staged.discard()

    def _finish(self, staged: StagedFile) -> None:
        """Upload a staged file now (a temp name became real, a truncate without an open handle)."""
        try:
            file = staged.upload()
        except S3FilesError as exc:
            with self._lock:
                self._staged.pop((staged.purpose, staged.filename), None)
            staged.keep_for_retry(exc.message)
            raise
        self._registered(staged, file)

    def _registered(self, staged: StagedFile, file: FileObject) -> None:
        """An upload succeeded: show the file; a staged copy nobody has open is done with."""
        self.namespace.added(file)
        for replaced in staged.replaced_ids:
            self.namespace.removed(replaced)
        with self._lock:  # checked and removed together: an open of this path may be racing
            idle = staged.opens == 0
            if idle and self._staged.get((staged.purpose, staged.filename)) is staged:
                del self._staged[(staged.purpose, staged.filename)]
        if idle:
            staged.discard()

    def _drop(self, staged: StagedFile) -> None:
        """A staged file removed from its path (unlinked, renamed over): never uploaded."""
        staged.unlinked = True
        if staged.opens == 0:
            staged.discard()

    # --- attributes and listing ------------------------------------------------------------

    @_mapped
    def getattr(self, path, fh=None):
        where = self._parse(path)
        if where.kind == "root":
            return self._dir_attrs(0o555)
        if where.kind == "folder":
            return self._dir_attrs(0o755)
        if where.kind == "by-id":
            return self._dir_attrs(0o555)
        if where.kind == "index":
            return self._file_attrs(len(self.namespace.index()), time.time_ns(), 0o444)
        if where.kind == "id":
            return self._committed_attrs(self.namespace.by_id(where.name), 0o444)
        if where.kind == "top":
            raise NotFound(path)
        staged = self._staged.get((where.purpose, where.name))
        if staged is not None:
            return self._staged_attrs(staged)
        return self._committed_attrs(self.namespace.lookup(where.purpose, where.name))

    @_mapped
    def opendir(self, path):
        where = self._parse(path)
        if where.kind not in ("root", "folder", "by-id"):
            raise NotFound(path)
        return self._new_handle([])  # the entries, listed at the first readdir

    @_mapped
    def releasedir(self, path, fh):
        self._handles.pop(fh, None)
        return 0

    @_mapped
    def readdir(self, path, fh):
        """This open folder's entries with their attributes, listed once per ``opendir``."""
        entries = self._handles[fh]
        if not entries:
            entries.extend(self._entries(path))
        return entries

    def _entries(self, path) -> list:
        where = self._parse(path)
        dots = [(".", self._dir_attrs(0o555 if where.kind != "folder" else 0o755)), ("..", self._dir_attrs(0o555))]
        if where.kind == "root":
            return dots + [(p, self._dir_attrs(0o755)) for p in self.service.purposes] + [
                (BY_ID, self._dir_attrs(0o555)), (INDEX, self._file_attrs(0, self.started, 0o444))]
        if where.kind == "by-id":
            return dots + [(f.id, self._committed_attrs(f, 0o444)) for f in self.namespace.ids()]
        if where.kind != "folder":
            raise NotPermitted(f"{path} is not a folder")
        with self._lock:
            local = {name: staged for (purpose, name), staged in self._staged.items() if purpose == where.purpose}
        listed = [(name, self._committed_attrs(file)) for name, file in self.namespace.names(where.purpose)
                  if name not in local]
        return dots + listed + [(name, self._staged_attrs(staged)) for name, staged in local.items()]

    @_mapped
    def statfs(self, path):
        block = 4096
        blocks = self.staging.max_bytes // block
        free = max(0, blocks - self.staging.used // block)
        return {"f_bsize": block, "f_frsize": block, "f_blocks": blocks, "f_bfree": free, "f_bavail": free,
                "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    # --- extended attributes ----------------------------------------------------------------

    def _xattr_file(self, path) -> FileObject | None:
        where = self._parse(path)
        if where.kind == "id":
            return self.namespace.by_id(where.name)
        if where.kind != "file":
            return None
        staged = self._staged.get((where.purpose, where.name))
        if staged is not None:
            return staged.shown_file
        return self.namespace.lookup(where.purpose, where.name)

    @_mapped
    def getxattr(self, path, name, position=0):
        if not name.startswith("user."):
            # ENOTSUP (not ENODATA) tells `ls -l` once that there are no ACLs or security labels
            # here, instead of it asking again for every file.
            raise NotSupported(f"{name.split('.')[0]} attributes are not supported")
        file = self._xattr_file(path)
        if file is None or name not in XATTRS:
            raise NoAttribute(f"{path} has no attribute {name}")
        expires = file.visible_expires_at
        value = {"user.openai.file_id": file.id, "user.openai.purpose": file.purpose,
                 "user.openai.created_at": str(file.created_at),
                 "user.openai.expires_at": "null" if expires is None else str(expires)}[name]
        return value.encode()

    @_mapped
    def listxattr(self, path):
        return list(XATTRS) if self._xattr_file(path) is not None else []

    @_mapped
    def setxattr(self, path, name, value, options, position=0):
        raise NotSupported(f"extended attributes are read-only ({name})")

    @_mapped
    def removexattr(self, path, name):
        raise NotSupported(f"extended attributes are read-only ({name})")

    # --- things that are refused, or accepted and ignored -----------------------------------

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
        self._parse(path)  # an unknown path is still ENOENT
        return 0

    @_mapped
    def chown(self, path, uid, gid):
        self._parse(path)
        return 0

    @_mapped
    def utimens(self, path, times=None):
        self._parse(path)
        return 0

    # --- open, read, write, close -----------------------------------------------------------

    @_mapped
    def create(self, path, mode, fi):
        where = self._writable(path, "create")
        base = self.namespace.find(where.purpose, where.name)
        staged = self._stage(where.purpose, where.name, base, copy=False)
        if fi.flags & os.O_TRUNC:
            staged.truncate(0)
        _bypass_page_cache_if_write_only(fi)
        fi.fh = self._new_handle(staged)
        self._note_writer(fi.fh)
        return 0

    @_mapped
    def open(self, path, fi):
        where = self._parse(path)
        writing = fi.flags & WRITE_FLAGS
        if where.kind == "index":
            if writing:
                raise NotPermitted("index.jsonl is read-only")
            fi.direct_io = 1  # its size changes with every file; never cache it
            fi.fh = self._new_handle(self.namespace.index())
            return 0
        if where.kind == "id":
            if writing:
                raise NotPermitted("by-id/ is read-only; write through a purpose folder")
            fi.keep_cache = 1  # an id's content never changes
            fi.fh = self._new_handle(Reader(self.service, self.namespace.by_id(where.name)))
            return 0
        if where.kind != "file":
            raise NotPermitted(f"{path} is not a file")
        if writing:
            self._writable(path, "open for writing")
        staged = self._staged.get((where.purpose, where.name))
        if staged is None and not writing:
            file = self.namespace.lookup(where.purpose, where.name)
            # The kernel caches pages per path; keep them only while the path still names the
            # same id (an id's content never changes, a path's does).
            fi.keep_cache = int(self._last_opened.get(path) == file.id)
            if len(self._last_opened) >= LAST_OPENED_MAX:
                self._last_opened.clear()  # forgetting only costs a re-read
            self._last_opened[path] = file.id
            fi.fh = self._new_handle(Reader(self.service, file))
            return 0
        if staged is None:
            base = self.namespace.lookup(where.purpose, where.name)
            truncating = bool(fi.flags & os.O_TRUNC)
            staged = self._stage(where.purpose, where.name, base, copy=not truncating)
        else:
            with self._lock:
                staged.opens += 1
        if writing and fi.flags & os.O_TRUNC:
            staged.truncate(0)
        # A descriptor that can read goes through the page cache (so a shared writable mmap works),
        # which this open starts afresh: keep_cache stays 0, so pages of the id this path named
        # before are dropped.
        _bypass_page_cache_if_write_only(fi)
        fi.fh = self._new_handle(staged)
        if writing:
            self._note_writer(fi.fh)
        return 0

    @_mapped
    def read(self, path, size, offset, fi):
        handle = self._handles[fi.fh]
        if isinstance(handle, bytes):
            return handle[offset:offset + size]
        return handle.read(size, offset)

    @_mapped
    def write(self, path, data, offset, fi):
        handle = self._handles[fi.fh]
        if not isinstance(handle, StagedFile):
            raise NotPermitted("the file was not opened for writing")
        return handle.write(data, offset)

    @_mapped
    def truncate(self, path, length, fh=None):
        where = self._writable(path, "truncate")
        staged = self._staged.get((where.purpose, where.name))
        if staged is not None:
            staged.truncate(length)
            return 0
        base = self.namespace.lookup(where.purpose, where.name)
        if length == base.bytes:
            return 0
        # `truncate -s` on a path nobody has open: copy, cut, and register at once.
        staged = self._stage(where.purpose, where.name, base, copy=length > 0)
        staged.truncate(length)
        with self._lock:
            staged.opens -= 1
            idle = staged.opens == 0
        if idle and not staged.temporary:
            self._finish(staged)
        return 0

    @_mapped
    def flush(self, path, fi):
        staged = self._handles.get(fi.fh)
        if not isinstance(staged, StagedFile):
            return 0
        if staged.temporary or staged.unlinked or not staged.dirty or staged.write_error is not None:
            return 0
        if not self._closed_by_writer(fi.fh):
            # A copy of the descriptor closed by another process (a child's, closed when it runs
            # exec or exits), or a descriptor opened only to read: whoever writes is still at it.
            # Uploading now would register a partial file and end the streamed upload. The
            # writer's own close uploads, or else the last close (release).
            return 0
        self._registered(staged, staged.upload())
        return 0

    @_mapped
    def fsync(self, path, datasync, fi):
        return 0  # data is made durable by the upload at close

    @_mapped
    def release(self, path, fi):
        handle = self._handles.pop(fi.fh, None)
        self._writers.pop(fi.fh, None)
        if isinstance(handle, Reader):
            handle.close()
        if not isinstance(handle, StagedFile):
            return 0
        staged = handle
        with self._lock:
            staged.opens -= 1
            if staged.opens > 0:
                return 0
            current = self._staged.get((staged.purpose, staged.filename)) is staged
            if staged.temporary and current and not staged.unlinked:
                return 0  # kept local until renamed to a real name or removed
            if current:
                del self._staged[(staged.purpose, staged.filename)]
        if staged.unlinked or not staged.dirty:
            staged.discard()
        elif staged.write_error is not None:
            log.warning("%s/%s discarded: a write failed (%s)", staged.purpose, staged.filename, staged.write_error.message)
            staged.discard()
        elif staged.last_error is None:
            self._upload_late(staged)
        else:  # the upload at close failed
            self._keep_for_retry(staged, staged.last_error)
        return 0

    def _upload_late(self, staged: StagedFile) -> None:
        """Changed after its last close: a shared mmap written back when it was unmapped. Upload
        now (nobody is left to tell of a failure, so a failure goes to `retry`)."""
        try:
            file = staged.upload()
        except S3FilesError:
            self._keep_for_retry(staged, staged.last_error or "not uploaded when the file was closed")
            return
        self._registered(staged, file)

    @staticmethod
    def _keep_for_retry(staged: StagedFile, why: str) -> None:
        staged.keep_for_retry(why)
        log.warning("%s/%s kept in staging for `s3filesfs retry`", staged.purpose, staged.filename)

    # --- names -------------------------------------------------------------------------------

    @_mapped
    def unlink(self, path):
        where = self._writable(path, "remove")
        with self._lock:
            staged = self._staged.pop((where.purpose, where.name), None)
        if staged is None:
            self._delete(self.namespace.lookup(where.purpose, where.name).id)
            return 0
        self._drop(staged)
        # The committed file the path showed (the last upload, or the file being replaced) goes too.
        if staged.replaces:
            self._delete(staged.replaces)
        return 0

    def _delete(self, file_id: str) -> None:
        try:
            self.service.delete(file_id)
        except NotFound:
            pass
        self.namespace.removed(file_id)

    @_mapped
    def rename(self, old, new):
        source = self._writable(old, "rename")
        target = self._writable(new, "rename into")
        if (source.purpose, source.name) == (target.purpose, target.name):
            return 0
        with self._lock:
            staged = self._staged.pop((source.purpose, source.name), None)
            displaced = self._staged.pop((target.purpose, target.name), None)
        replaced = self.namespace.find(target.purpose, target.name)
        if displaced is not None:
            self._drop(displaced)
            if displaced.replaces and (replaced is None or replaced.id != displaced.replaces):
                self._delete(displaced.replaces)
        if staged is not None:
            return self._rename_staged(staged, target, replaced)
        file = self.namespace.lookup(source.purpose, source.name)
        renamed = self.service.rename(file.id, target.name, target.purpose)
        self.namespace.renamed(renamed)
        if replaced is not None and replaced.id != file.id:
            self._delete(replaced.id)
        return 0

    def _rename_staged(self, staged: StagedFile, target, replaced: FileObject | None) -> int:
        was_temporary = staged.temporary
        staged.rename(target.purpose, target.name, is_temporary_name(target.name))
        if staged.replaces:
            # The committed file this path showed moves along, so the name is right even if the
            # staged change is never uploaded (opened for writing, nothing written).
            try:
                self.namespace.renamed(self.service.rename(staged.replaces, target.name, target.purpose))
            except NotFound:
                staged.replaces = None
        if replaced is not None and replaced.id != staged.replaces:
            if staged.replaces is None:
                staged.replaces = replaced.id  # replaced once the new content is registered
            else:
                self._delete(replaced.id)
        with self._lock:
            self._staged[(target.purpose, target.name)] = staged
            idle = staged.opens == 0
        if was_temporary and not staged.temporary and idle:
            self._finish(staged)  # an editor's or rsync's finished file: upload it now
        return 0

    # --- end of the mount --------------------------------------------------------------------

    def files_being_written(self) -> list[str]:
        """Paths open for writing whose content is not registered yet: what a stop waits for."""
        with self._lock:
            return [f"{purpose}/{name}" for (purpose, name), staged in self._staged.items()
                    if staged.opens > 0 and not staged.temporary and not staged.unlinked]

    def destroy(self, path):
        """Unmounted: keep anything written but not uploaded for `retry`; drop temp files."""
        with self._lock:
            left = list(self._staged.values())
            self._staged.clear()
        for staged in left:
            if staged.temporary or not staged.dirty:
                staged.discard()
            else:
                self._keep_for_retry(staged, "the mount stopped before this file was closed")


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
        entries = self.operations.readdir(decoded, fip.contents.fh)
        st = mfusepy.c_stat()
        for number in range(offset, len(entries)):
            name, attrs = entries[number]
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            mfusepy.set_st_attrs(st, attrs, use_ns=True)
            fill = 0 if name in (".", "..", INDEX) else plus  # libfuse looks these up on its own
            if filler(buf, name.encode(self.encoding, self.errors), st, number + 1, fill) != 0:
                break
        return 0
