"""The mount's core, without FUSE: what each operation on a path or a handle does.

``ops.py`` turns kernel requests into calls here and errors into errnos; everything else about the
mount is decided here, so it can be driven (and property-tested) without a kernel. Semantics are in
``docs/semantics.md``.

Handles are numbers naming a ``Reader`` (a registered file opened to read), a ``StagedFile`` (a path
being written, shared by every open of that path; opening an existing file for writing copies it on
its first change) or bytes (``index.jsonl``, frozen at open), or a folder's listing.

Locks, in the order they may be taken, never the reverse (docs/architecture.md):
1. ``StagedFile.io``: one file's content and upload; held across that file's disk and network I/O.
2. ``MountCore._lock``: the table of paths being written and of handles; dictionary work only, never
   held across disk or network I/O.
3. ``StagedFile._lock``: one file's state and open count; taken under (2) so that deciding a file is
   done with and taking it off its path are one step (no ``open`` can revive it in between).
4. Leaves: ``Staging._lock`` (the cap), ``Namespace._lock`` (the listing).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import NoAttribute, NotFound, NotPermitted, NotSupported, ReadOnly, S3FilesError
from ..files import FileService
from ..model import FileObject, check_name
from .namespace import BY_ID, INDEX, Namespace, parse
from .reader import Reader
from .staging import StagedFile, Staging, State
from .writeback import WriteBack

log = logging.getLogger(__name__)

LAST_OPENED_MAX = 100_000
IO_SIZE = 1024 * 1024  # st_blksize: `cp` and `cat` move 1 MiB per call instead of 128 KiB
XATTRS = ("user.openai.file_id", "user.openai.purpose", "user.openai.created_at", "user.openai.expires_at")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
PF_EXITING = 0x4  # a task's flags while it exits (include/linux/sched.h)
STOP_GRACE = 60.0  # how long an unmount waits for background uploads


class Caller:
    """The thread that made a request, and what /proc says of it (read only when needed)."""

    def __init__(self, thread: int):
        self.thread = thread
        self._stat: list[bytes] | None = None
        self._process: int | None = None

    def _fields(self) -> list[bytes]:
        if self._stat is None:
            try:
                with open(f"/proc/{self.thread}/stat", "rb") as stat_file:
                    self._stat = stat_file.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                self._stat = []
        return self._stat

    @property
    def process(self) -> int:
        """The thread group: a descriptor opened in one thread of a process may be closed in another."""
        if self._process is None:
            self._process = _tgid(self.thread)
        return self._process

    def killed_by(self) -> int | None:
        """The signal that is ending this thread's process, if it is exiting because of one: its
        descriptors are being closed by the kernel, not by the program."""
        fields = self._fields()
        if len(fields) < 50:
            return None
        flags, exit_code = int(fields[6]), int(fields[49])
        signal_number = exit_code & 0x7F
        return signal_number if flags & PF_EXITING and signal_number else None


def _tgid(thread: int) -> int:
    try:
        with open(f"/proc/{thread}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return thread


@dataclass
class Opened:
    """A handle and how the kernel should cache what it reads through it."""

    fh: int
    direct_io: bool = False  # bypass the page cache
    keep_cache: bool = False  # keep pages cached from an earlier open


class IndexSnapshot:
    """An open ``index.jsonl``: the scratch file it was opened on, whatever is written later."""

    def __init__(self, file, size: int):
        self.file, self.size = file, size

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.file.fileno(), max(0, min(size, self.size - offset)), offset)


class DirStream:
    """An open folder's entries, produced as the kernel asks for them.

    The kernel reads a folder in batches, each starting at the offset after the last entry it
    kept, so only the entries from the last asked offset on are held. Going back (``rewinddir``)
    lists the folder again from the start.
    """

    def __init__(self, produce: Callable[[], Iterator[tuple[str, dict]]]):
        self._produce = produce
        self._source: Iterator[tuple[str, dict]] | None = None
        self._base = 0  # the offset of the first held entry
        self._held: collections.deque[tuple[str, dict]] = collections.deque()

    def entries(self, offset: int) -> Iterator[tuple[int, str, dict]]:
        if self._source is None or offset < self._base:
            self._source, self._base = self._produce(), 0
            self._held.clear()
        while self._base < offset:
            if self._held:
                self._held.popleft()
            elif next(self._source, None) is None:
                return
            self._base += 1
        number = offset
        for entry in list(self._held):
            number += 1
            yield number, *entry
        for entry in self._source:
            self._held.append(entry)
            number += 1
            yield number, *entry


class MountCore:
    def __init__(self, service: FileService, staging: Staging, refresh_seconds: float = 1.0,
                 read_only: bool = False, write_back: bool = False):
        self.service = service
        self.staging = staging
        self.namespace = Namespace(service, refresh_seconds, scratch_dir=str(staging.folder))
        self.read_only = read_only
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self._lock = threading.Lock()
        self._handles: dict[int, object] = {}
        self._numbers = itertools.count(1)
        self._staged: dict[tuple[str, str], StagedFile] = {}  # paths being written or kept local
        self._last_opened: dict[str, str] = {}  # path -> the id it named when last opened to read
        self._writers: dict[int, tuple[int, int]] = {}  # handle -> (thread, process) that opened it to write
        self._wrote: set[int] = set()  # handles that changed their file: only their writer's death matters
        # Write-back mode: closes return once the data is durable in staging; uploads run here.
        self._write_back = WriteBack(self._uploaded) if write_back else None

    # --- paths ---------------------------------------------------------------------------------

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

    def _staged_at(self, purpose: str, name: str) -> StagedFile | None:
        with self._lock:
            return self._staged.get((purpose, name))

    # --- attributes and listing -----------------------------------------------------------------

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

    def getattr(self, path: str, fh: int | None = None) -> dict:
        handle = self._handles.get(fh) if fh else None
        if isinstance(handle, Reader):
            return self._committed_attrs(handle.file, 0o444 if path.startswith(f"/{BY_ID}/") else 0o644)
        if isinstance(handle, StagedFile):
            return self._staged_attrs(handle)
        if isinstance(handle, IndexSnapshot):
            return self._file_attrs(handle.size, time.time_ns(), 0o444)
        where = self._parse(path)
        if where.kind == "root":
            return self._dir_attrs(0o555)
        if where.kind == "folder":
            return self._dir_attrs(0o755)
        if where.kind == "by-id":
            return self._dir_attrs(0o555)
        if where.kind == "index":
            return self._file_attrs(self.namespace.index_size(), time.time_ns(), 0o444)
        if where.kind == "id":
            return self._committed_attrs(self.namespace.by_id(where.name), 0o444)
        if where.kind == "top":
            raise NotFound(path)
        staged = self._staged_at(where.purpose, where.name)
        if staged is not None:
            return self._staged_attrs(staged)
        return self._committed_attrs(self.namespace.lookup(where.purpose, where.name))

    def opendir(self, path: str) -> int:
        where = self._parse(path)
        if where.kind not in ("root", "folder", "by-id"):
            raise NotFound(path)
        return self._new_handle(DirStream(lambda: self._entries(path)))

    def readdir(self, path: str, fh: int, offset: int = 0) -> Iterator[tuple[int, str, dict]]:
        """This open folder's entries from ``offset`` on, each ``(offset of the next, name,
        attributes)``, streamed: a folder of a million files is never held whole."""
        stream = self._handles[fh]
        assert isinstance(stream, DirStream)
        return stream.entries(offset)

    def releasedir(self, fh: int) -> None:
        with self._lock:
            self._handles.pop(fh, None)

    def _entries(self, path: str) -> Iterator[tuple[str, dict]]:
        where = self._parse(path)
        yield ".", self._dir_attrs(0o555 if where.kind != "folder" else 0o755)
        yield "..", self._dir_attrs(0o555)
        if where.kind == "root":
            for purpose in self.service.purposes:
                yield purpose, self._dir_attrs(0o755)
            yield BY_ID, self._dir_attrs(0o555)
            yield INDEX, self._file_attrs(0, self.started, 0o444)
            return
        if where.kind == "by-id":
            for file in self.namespace.ids():
                yield file.id, self._committed_attrs(file, 0o444)
            return
        if where.kind != "folder":
            raise NotPermitted(f"{path} is not a folder")
        with self._lock:
            local = {name: staged for (purpose, name), staged in self._staged.items() if purpose == where.purpose}
        for name, file in self.namespace.names(where.purpose):
            if name not in local:
                yield name, self._committed_attrs(file)
        for name, staged in local.items():
            yield name, self._staged_attrs(staged)

    def statfs(self) -> dict:
        block = 4096
        blocks = self.staging.max_bytes // block
        free = max(0, blocks - self.staging.used // block)
        return {"f_bsize": block, "f_frsize": block, "f_blocks": blocks, "f_bfree": free, "f_bavail": free,
                "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    def accept(self, path: str) -> None:
        """chmod, chown and utimens: accepted and ignored, so `cp -a` and `rsync -a` work."""
        self._parse(path)  # an unknown path is still ENOENT

    # --- extended attributes ----------------------------------------------------------------------

    def _xattr_file(self, path: str) -> FileObject | None:
        where = self._parse(path)
        if where.kind == "id":
            return self.namespace.by_id(where.name)
        if where.kind != "file":
            return None
        staged = self._staged_at(where.purpose, where.name)
        if staged is not None:
            return staged.shown_file
        return self.namespace.lookup(where.purpose, where.name)

    def getxattr(self, path: str, name: str) -> bytes:
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

    def listxattr(self, path: str) -> list[str]:
        return list(XATTRS) if self._xattr_file(path) is not None else []

    # --- handles ---------------------------------------------------------------------------------

    def _new_handle(self, handle: object) -> int:
        with self._lock:
            number = next(self._numbers)
            self._handles[number] = handle
        return number

    def _stage(self, purpose: str, name: str, base: FileObject | None, copy: bool) -> StagedFile:
        """The staged file of a path about to change, with one more handle on it.

        Shared if the path is already being written; else a new one that replaces ``base`` and,
        with ``copy``, starts from its content (copy-on-write).
        """
        staged = self._attached(purpose, name)
        if staged is not None:
            return staged
        fresh = self.staging.new_file(self.service, purpose, name, base.id if base else None)
        if copy and base is not None:
            fresh.start_from(base)
        with self._lock:
            staged = self._staged.get((purpose, name))
            if staged is not None and staged.attach():  # another open got there first
                winner = staged
            else:
                fresh.attach()
                self._staged[(purpose, name)] = winner = fresh
        if winner is not fresh:
            fresh.unlink()
            fresh.finish()
        return winner

    def _attached(self, purpose: str, name: str) -> StagedFile | None:
        """The path's staged file with one more handle on it, if it has one still in use."""
        with self._lock:
            staged = self._staged.get((purpose, name))
            return staged if staged is not None and staged.attach() else None

    def _open_staged(self, staged: StagedFile, flags: int, caller: Caller) -> Opened:
        """A handle on ``staged``, which has been attached for it (and is detached again if this fails)."""
        truncating = bool(flags & WRITE_FLAGS and flags & os.O_TRUNC)
        if truncating:
            try:
                staged.truncate(0)
            except BaseException:
                self._detach(staged)
                raise
        fh = self._new_handle(staged)
        if flags & WRITE_FLAGS:
            self._writers[fh] = (caller.thread, caller.process)
        if truncating:
            self._wrote.add(fh)
        # A write-only descriptor (`cp`, `dd`, a `>` redirect) can neither read nor mmap, so caching
        # what it writes only costs: with direct_io each write reaches staging in one copy. A
        # descriptor that can read goes through the page cache (a shared writable mmap works),
        # started afresh: keep_cache stays off, so pages of the id this path named before go.
        return Opened(fh, direct_io=flags & os.O_ACCMODE == os.O_WRONLY)

    def create(self, path: str, flags: int, caller: Caller) -> Opened:
        where = self._writable(path, "create")
        base = self.namespace.find(where.purpose, where.name)
        staged = self._stage(where.purpose, where.name, base, copy=False)
        return self._open_staged(staged, flags, caller)

    def open(self, path: str, flags: int, caller: Caller) -> Opened:
        where = self._parse(path)
        writing = flags & WRITE_FLAGS
        if where.kind == "index":
            if writing:
                raise NotPermitted("index.jsonl is read-only")
            return Opened(self._new_handle(IndexSnapshot(*self.namespace.index())), direct_io=True)  # its size changes
        if where.kind == "id":
            if writing:
                raise NotPermitted("by-id/ is read-only; write through a purpose folder")
            reader = Reader(self.service, self.namespace.by_id(where.name))
            return Opened(self._new_handle(reader), keep_cache=True)  # an id's content never changes
        if where.kind != "file":
            raise NotPermitted(f"{path} is not a file")
        if writing:
            self._writable(path, "open for writing")
        staged = self._attached(where.purpose, where.name)
        if staged is None and not writing:
            file = self.namespace.lookup(where.purpose, where.name)
            # The kernel caches pages per path; keep them only while the path still names the
            # same id (an id's content never changes, a path's does).
            keep = self._last_opened.get(path) == file.id
            if len(self._last_opened) >= LAST_OPENED_MAX:
                self._last_opened.clear()  # forgetting only costs a re-read
            self._last_opened[path] = file.id
            return Opened(self._new_handle(Reader(self.service, file)), keep_cache=keep)
        if staged is None:
            base = self.namespace.lookup(where.purpose, where.name)
            staged = self._stage(where.purpose, where.name, base, copy=not flags & os.O_TRUNC)
        return self._open_staged(staged, flags, caller)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handles[fh]
        return handle.read(size, offset)  # type: ignore[attr-defined]

    def write(self, fh: int, data, offset: int) -> int:
        handle = self._handles[fh]
        if not isinstance(handle, StagedFile):
            raise NotPermitted("the file was not opened for writing")
        self._wrote.add(fh)
        return handle.write(data, offset)

    def truncate(self, path: str, length: int) -> None:
        where = self._writable(path, "truncate")
        staged = self._attached(where.purpose, where.name)
        if staged is None:
            base = self.namespace.lookup(where.purpose, where.name)
            if length == base.bytes:
                return
            # `truncate -s` on a path nobody has open: copy, cut, and register at once.
            staged = self._stage(where.purpose, where.name, base, copy=length > 0)
        try:
            staged.truncate(length)
        except BaseException:
            self._detach(staged)
            raise
        self._detach(staged, report=True)

    def _closed_by_writer(self, fh: int, caller: Caller) -> bool:
        """Whether this close comes from the process that opened ``fh`` for writing (the same
        thread, the usual case, is answered without reading /proc)."""
        opener = self._writers.get(fh)
        if opener is None:
            return False
        return caller.thread == opener[0] or caller.process == opener[1]

    def flush(self, fh: int, caller: Caller) -> None:
        """A close of a descriptor. The writer's own close registers what it wrote, and reports
        the upload's failure; a writer killed before closing leaves its data interrupted."""
        staged = self._handles.get(fh)
        if not isinstance(staged, StagedFile) or not staged.changed or not self._closed_by_writer(fh, caller):
            # A copy of the descriptor closed by another process (a child's, closed when it runs
            # exec or exits), or a descriptor opened only to read: whoever writes is still at it.
            # Uploading now would register a partial file and end the streamed upload. The
            # writer's own close uploads, or else the last close (release).
            return
        signal_number = caller.killed_by()
        if signal_number is not None:
            if fh in self._wrote:  # one that only had it open changed nothing: its death neither
                staged.writer_died(f"was killed (signal {signal_number})")
            return
        staged.closed_by_writer(defer=self._write_back is not None)
        self._show(staged)

    def fsync(self, fh: int, caller: Caller) -> None:
        """Make what was written durable in staging: should the mount die now, it waits complete
        for `retry` (registered once the close comes, as usual)."""
        staged = self._handles.get(fh)
        if isinstance(staged, StagedFile) and self._closed_by_writer(fh, caller):
            staged.synced()

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
            self._writers.pop(fh, None)
            self._wrote.discard(fh)
        if isinstance(handle, Reader):
            handle.close()
        elif isinstance(handle, StagedFile):
            self._detach(handle)

    def _detach(self, staged: StagedFile, report: bool = False) -> None:
        """One handle of ``staged`` is gone; with none left, finish with it. With ``report``, a
        failed upload is raised (a `truncate -s`); else it only goes to `retry` (a release)."""
        with self._lock:
            state = staged.detach()
            self._off_path_if_done(staged, state)
        self._after_settling(staged, state, report)

    def _off_path_if_done(self, staged: StagedFile, state: State) -> None:
        if state in (State.DISCARDED, State.KEPT):
            key = (staged.purpose, staged.filename)
            if self._staged.get(key) is staged:
                del self._staged[key]

    def _after_settling(self, staged: StagedFile, state: State, report: bool) -> None:
        if state in (State.WRITING, State.CLOSED) and staged.opens == 0 and self._write_back is not None:
            if not staged.temporary:
                self._write_back.submit(staged)  # registered behind the close; settled when done
        elif state in (State.WRITING, State.CLOSED) and staged.opens == 0:
            # Changed after its writer's last close (a shared mmap written back at unmap), or a
            # temporary name renamed to a real one: nobody can change it now, so register it.
            try:
                staged.upload_if_complete()
            except S3FilesError:
                if report:
                    raise
            finally:
                self._uploaded(staged)
        elif state in (State.DISCARDED, State.KEPT):
            staged.finish()

    def _uploaded(self, staged: StagedFile) -> None:
        """After an upload (whatever its outcome, here or in the background): show what it
        registered and, if no handle is left, finish with the file."""
        self._show(staged)
        with self._lock:
            state = staged.settle()
            self._off_path_if_done(staged, state)
        if state in (State.DISCARDED, State.KEPT):
            staged.finish()

    def _show(self, staged: StagedFile) -> None:
        """An upload succeeded: the listing shows the new file and no longer the replaced one."""
        if staged.state == State.REGISTERED and staged.uploaded is not None:
            self.namespace.added(staged.uploaded)
            for replaced in staged.take_replaced():
                self.namespace.removed(replaced)

    # --- names ---------------------------------------------------------------------------------

    def unlink(self, path: str) -> None:
        where = self._writable(path, "remove")
        with self._lock:
            staged = self._staged.pop((where.purpose, where.name), None)
            idle = staged.unlink() if staged is not None else False
        if staged is None:
            self._delete(self.namespace.lookup(where.purpose, where.name).id)
            return
        if idle:
            staged.finish()
        else:
            staged.note_unlinked()
        # The registered file the path showed (the last upload, or the file being replaced) goes too.
        if staged.replaces:
            self._delete(staged.replaces)

    def _delete(self, file_id: str) -> None:
        try:
            self.service.delete(file_id)
        except NotFound:
            pass
        self.namespace.removed(file_id)

    def rename(self, old: str, new: str) -> None:
        source = self._writable(old, "rename")
        target = self._writable(new, "rename into")
        if (source.purpose, source.name) == (target.purpose, target.name):
            return
        while True:
            # A source that does not exist is refused before the target is touched.
            with self._lock:
                being_written = (source.purpose, source.name) in self._staged
            file = None if being_written else self.namespace.lookup(source.purpose, source.name)
            with self._lock:
                staged = self._staged.pop((source.purpose, source.name), None)
                if staged is None and file is None:
                    continue  # finished with meanwhile: look it up again
                displaced = self._staged.pop((target.purpose, target.name), None)
                displaced_idle = displaced.unlink() if displaced is not None else False
                if staged is not None:
                    self._staged[(target.purpose, target.name)] = staged
            break
        replaced = self.namespace.find(target.purpose, target.name)
        if displaced is not None:
            if displaced_idle:
                displaced.finish()
            else:
                displaced.note_unlinked()
            if displaced.replaces and (replaced is None or replaced.id != displaced.replaces):
                self._delete(displaced.replaces)
        if staged is not None:
            self._rename_staged(staged, target, replaced)
            return
        assert file is not None
        renamed = self.service.rename(file.id, target.name, target.purpose)
        self.namespace.renamed(renamed)
        if replaced is not None and replaced.id != file.id:
            self._delete(replaced.id)

    def _rename_staged(self, staged: StagedFile, target, replaced: FileObject | None) -> None:
        was_temporary = staged.temporary
        staged.rename(target.purpose, target.name)
        if staged.replaces:
            # The registered file this path showed moves along, so the name is right even if the
            # staged change is never uploaded (opened for writing, nothing written).
            try:
                self.namespace.renamed(self.service.rename(staged.replaces, target.name, target.purpose))
            except NotFound:
                staged.replacing(None)
        if replaced is not None and replaced.id != staged.replaces:
            if staged.replaces is None:
                staged.replacing(replaced.id)  # replaced once the new content is registered
            else:
                self._delete(replaced.id)
        if was_temporary and not staged.temporary:
            # An editor's or rsync's finished file: register it now if nobody has it open (its
            # failure is the rename's), else at its last close.
            with self._lock:
                state = staged.settle()
            self._after_settling(staged, state, report=True)

    # --- end of the mount --------------------------------------------------------------------

    def files_being_written(self) -> list[str]:
        """Paths open for writing whose content is not registered yet: what a stop waits for."""
        with self._lock:
            open_ = [f"{purpose}/{name}" for (purpose, name), staged in self._staged.items()
                     if staged.opens > 0 and staged.waiting]
        return open_ + (self._write_back.pending() if self._write_back is not None else [])

    def write_back_queue(self) -> list[str]:
        """Paths closed but still queued or uploading in the background (write-back)."""
        return self._write_back.pending() if self._write_back is not None else []

    def stop(self) -> None:
        """Unmounted: keep anything written but not registered for `retry`; drop the rest."""
        if self._write_back is not None:
            self._write_back.stop(STOP_GRACE)  # what it has not uploaded by then: the next mount's
        with self._lock:
            left = list(self._staged.values())
            self._staged.clear()
        for staged in left:
            staged.stop()
