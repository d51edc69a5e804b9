"""The mount core against a reference model of what the store must hold, without a kernel.

Hypothesis drives ``MountCore`` (``fs/core.py``) the way the kernel would, on a few names in two
purpose folders (temporary names among them), starting from a store that may already hold files:
create, open for writing (with and without ``O_TRUNC``, write-only and read-write), open to read a
file being written, writes in order and anywhere, truncate by path, fsync, four kinds of close (the
writer's own; a child's copy, which must change nothing; the last copy closed by a child, without
the writer's flush; a writer killed by SIGKILL), renames (between temporary and real names, over
existing names, from names that do not exist), unlinks, reads through a descriptor, a clean stop and
a crash of the mount process. A crash abandons the core without ``stop()`` and closes every
descriptor it held (as the kernel does for a killed process); then the next process starts: a fresh
``FileService`` on the same database and store, a fresh ``Staging`` that claims the folder
(recovery), ``retry`` as a user would run it, and a fresh core.

The model holds what each path must read back, what must be registered under each name (the bytes
the close, or the fsync before a crash, that last covered it held), what each open file holds, and
the interrupted files kept in staging. After every step:

* every path reads back the model's bytes through a read handle of the core, with the model's size,
  and each purpose folder lists exactly the model's names;
* the store holds exactly one row per registered name, with exactly the model's bytes, and no other
  row: nothing no close covered (a killed writer's, a crashed mount's), never two rows for one
  close, nothing written under a temporary name;
* bucket and table agree, and the uploads recorded as under way are exactly the streams still open
  (after a crash and ``retry``: none);
* staging holds one record per file the core has plus the interrupted files kept for ``retry``, and
  each record of an open file already says what a crash at this moment must lead to (so a crash
  anywhere between two steps is checked at every step, not only where the test crashes).

What the model accepts, as the code and docs/architecture.md decide it: the last close of a changed
file registers it even when the writer's own close never came (as semantics W12 has it for a child
that outlives the writer); a writer killed after changing the file leaves it interrupted for all
who share it (one that changed nothing leaves it as it is, and an O_TRUNC open starts it afresh);
a descriptor whose file was removed before its first change can no longer read it (unless it
already had) or write it (ENOENT).

In the spirit of mountpoint-s3's reference-model tests. The number of examples comes from
``S3FILESFS_PROPERTY_EXAMPLES`` (read at import: each test's environment is scrubbed of
``S3FILESFS_*``); under ``CI=true`` the examples are derandomized (the same ones every run). To
explore further::

    S3FILESFS_PROPERTY_EXAMPLES=2000 .venv/bin/python -m pytest tests/unit/test_core_model.py -q -p no:cacheprovider -s
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from s3filesfs import config
from s3filesfs.blobs.local import LocalBlobStore
from s3filesfs.errors import NotFound, StagingFailed
from s3filesfs.files import FileService, open_service
from s3filesfs.fs import records
from s3filesfs.fs.core import Caller, MountCore
from s3filesfs.fs.staging import StagedFile, Staging
from s3filesfs.model import is_temporary_name
from tests.helpers import UNDER_CI

EXAMPLES = int(os.environ.get("S3FILESFS_PROPERTY_EXAMPLES") or 0) or 60
EXAMPLES_S3 = max(3, EXAMPLES // 20)  # every step talks HTTP to the moto server
STEPS = 50

PURPOSES = ("assistants", "batch")
PATHS = (("assistants", "a.txt"), ("assistants", "b.txt"), ("assistants", "a.part"),
         ("assistants", ".x.swp"), ("batch", "a.txt"))
STAGING_CAP = 64 * 1024 * 1024
KILLED = 9  # SIGKILL

Where = tuple[str, str]


def mount_path(where: Where) -> str:
    return f"/{where[0]}/{where[1]}"


TALLY: Counter[str] = Counter()  # steps run, by rule, and examples: what a run exercised


def counted(step):
    @functools.wraps(step)
    def counting(self, **kwargs):
        kind = kwargs.get("clean")
        TALLY[step.__name__ if kind is None else f"{step.__name__}({kind})"] += 1
        return step(self, **kwargs)

    return counting


class FakeCaller(Caller):
    """A calling process without /proc: its thread is its process, and it may be dying of a signal."""

    def __init__(self, process: int, killed_by: int | None = None):
        super().__init__(process)
        self._process = process
        self._killed_by = killed_by

    def killed_by(self) -> int | None:
        return self._killed_by


class MountProcess:
    """One mount process: a FileService, the staging folder claimed (recovering what an earlier
    process left), `retry` run as a user would after a restart, and a core. It ends cleanly
    (``stop()``) or dies (no ``stop()``); either way the kernel closes every descriptor it held."""

    def __init__(self, settings: config.Settings, folder: Path):
        self.folder = folder
        self.service = open_service(settings)
        _ = self.service.blobs
        self.staging = Staging(folder, STAGING_CAP)
        self.staging.claim(self.service)
        self.retried, self.failing = records.retry(self.service, folder)
        # A refresh far away: the listing is what the core itself keeps up to date.
        self.core = MountCore(self.service, self.staging, refresh_seconds=3600)

    def files(self) -> set[StagedFile]:
        """Every file the core has: on a path, or only held open (unlinked)."""
        files = set(self.core._staged.values())
        files.update(h for h in self.core._handles.values() if isinstance(h, StagedFile))
        return files

    def end(self, clean: bool) -> None:
        if clean:
            self.core.stop()
        for staged in self.files():
            for fd in (staged._fd, staged._record_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            staged._fd = staged._record_fd = None
        if self.staging._mount_lock_fd is not None:
            os.close(self.staging._mount_lock_fd)
            self.staging._mount_lock_fd = None
        self.service.metadata.close()  # every connection, the writer's included


# --- the model -------------------------------------------------------------------------------------

# What an open file's content is, relative to what is registered under its path.
CLEAN = "clean"  # what is registered (the file it was opened from, or its last upload): nothing to do
DIRTY = "dirty"  # changed since a close or fsync last covered it
COVERED = "covered"  # covered by an fsync (or the close of a temporary name), not registered yet
INTERRUPTED = "interrupted"  # its writer was killed first: registered only when named to `retry`
UNLINKED = "unlinked"  # removed (or renamed over) while open: never registered


@dataclass(eq=False)
class Registered:
    """One registered file (one row); identity tells a replaced file from its successor."""

    content: bytes


@dataclass(eq=False)
class OpenFile:
    """A path being written: what the core's StagedFile must hold."""

    where: Where | None  # None once unlinked
    content: bytes
    status: str
    base: Registered | None = None  # opened from this file and not changed yet (copy-on-write)
    base_read: bool = False  # the base was read through it (its reader keeps the bytes)
    opens: int = 0


@dataclass(eq=False)
class Handle:
    fh: int
    file: OpenFile
    writer: int | None  # the process that opened it for writing; None for a reader
    readable: bool
    wrote: bool = False  # changed the file through this handle (a write, or O_TRUNC at open)


class CoreModel(RuleBasedStateMachine):
    """One mount (and its successors after crashes and restarts) on a fresh store per example."""

    settings_for: Callable[[Path], config.Settings]  # set by each test: the store under test
    workdir: Path
    examples = itertools.count()

    def __init__(self):
        super().__init__()
        TALLY["examples"] += 1
        self.root = self.workdir / f"example-{next(self.examples)}"
        self.settings = self.settings_for(self.root)
        self.folder = self.root / "staging"
        self.pids = itertools.count(1_000_000)
        self.registered: dict[Where, Registered] = {}
        self.staged: dict[Where, OpenFile] = {}
        self.handles: list[Handle] = []
        self.kept: list[tuple[Where, bytes]] = []  # interrupted files waiting in staging
        self.retried: list[Where] = []  # files an fsync covered when the mount ended: `retry` registers them
        self.mount = self._start()

    @property
    def core(self) -> MountCore:
        return self.mount.core

    @property
    def service(self) -> FileService:
        return self.mount.service

    def teardown(self):
        with contextlib.suppress(Exception):
            self.mount.end(clean=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _start(self) -> MountProcess:
        mount = MountProcess(self.settings, self.folder)
        assert mount.failing == []
        assert sorted((f.purpose, f.filename) for f in mount.retried) == sorted(self.retried)
        self.retried = []
        assert mount.service.metadata.intents() == [], "what the last process was sending is cleaned up"
        return mount

    def _model_after_the_process(self) -> None:
        """What must survive a mount that ends with files open: interrupted ones wait in staging,
        ones an fsync covered are registered by `retry`, the rest goes."""
        for file in self._open_files():
            if file.where is None or file.status in (CLEAN, UNLINKED) or is_temporary_name(file.where[1]):
                continue
            if file.status == COVERED:
                self.registered[file.where] = Registered(file.content)
                self.retried.append(file.where)
            else:
                self.kept.append((file.where, file.content))
        self.staged.clear()
        self.handles.clear()

    def _open_files(self) -> list[OpenFile]:
        files = {id(f): f for f in self.staged.values()}
        files.update((id(h.file), h.file) for h in self.handles)
        return list(files.values())

    # --- model helpers -----------------------------------------------------------------------

    def _alive(self, file: Registered | None) -> bool:
        return file is not None and any(r is file for r in self.registered.values())

    def _changed(self, file: OpenFile, content: bytes) -> None:
        file.content = content
        file.base = None
        if file.status in (CLEAN, COVERED) or (file.status == INTERRUPTED and not content):
            file.status = DIRTY  # cut to nothing, an incomplete content no longer matters

    def _upload(self, file: OpenFile) -> None:
        assert file.where is not None
        self.registered[file.where] = Registered(file.content)
        file.status = CLEAN
        file.base = None

    def _last_handle_gone(self, file: OpenFile) -> None:
        """What the core does once nobody has the file open."""
        if file.opens > 0:
            return
        where = file.where
        if file.status in (DIRTY, COVERED) and where is not None and not is_temporary_name(where[1]):
            self._upload(file)  # changed after its writer's close: nobody can change it now
        if file.status in (DIRTY, COVERED):
            return  # a temporary name: stays local until renamed or the mount ends
        if where is not None and self.staged.get(where) is file:
            del self.staged[where]
        if file.status == INTERRUPTED and where is not None and not is_temporary_name(where[1]):
            self.kept.append((where, file.content))

    def _open_writable(self, where: Where, truncate: bool) -> OpenFile | None:
        file = self.staged.get(where)
        if file is None:
            base = self.registered.get(where)
            if base is None:
                return None
            file = self.staged[where] = OpenFile(where, base.content, CLEAN, base=base)
        file.opens += 1
        if truncate:
            self._changed(file, b"")
        return file

    def _names(self) -> st.SearchStrategy[Where]:
        """A name that exists, half of the time; else any (which may not exist)."""
        existing = sorted({*self.staged, *self.registered})
        return st.one_of(st.sampled_from(existing), st.sampled_from(PATHS)) if existing else st.sampled_from(PATHS)

    def _pick(self, index: int, readable: bool = False, writer: bool = False) -> Handle | None:
        usable = [h for h in self.handles if (h.readable or not readable) and (h.writer is not None or not writer)]
        return usable[index % len(usable)] if usable else None

    @staticmethod
    def _outcome(call: Callable[[], object], error: type[BaseException] | None):
        if error is None:
            return call()
        with pytest.raises(error):
            call()
        return None

    # --- the store as the mount finds it ------------------------------------------------------------

    @initialize(files=st.dictionaries(st.sampled_from(PATHS), st.binary(max_size=3000), max_size=3))
    def files_uploaded_elsewhere(self, files):
        """Files already in the store (the API, the CLI): a temporary-looking name is a file too."""
        for (purpose, name), content in files.items():
            self.service.create(io.BytesIO(content), name, purpose)
            self.registered[(purpose, name)] = Registered(content)
        self.mount.core = MountCore(self.service, self.mount.staging, refresh_seconds=3600)  # lists them at once

    # --- steps: opening --------------------------------------------------------------------------

    @rule(where=st.sampled_from(PATHS))
    @counted
    def create(self, where):
        """O_WRONLY|O_CREAT|O_TRUNC (`cp`, a `>` redirect)."""
        pid = next(self.pids)
        opened = self.core.create(mount_path(where), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FakeCaller(pid))
        file = self.staged.get(where)
        if file is None:
            file = self.staged[where] = OpenFile(where, b"", DIRTY)  # a new file is registered even if empty
        else:
            self._changed(file, b"")
        file.opens += 1
        self.handles.append(Handle(opened.fh, file, pid, readable=False, wrote=True))

    @rule(data=st.data(), truncate=st.booleans(), read_write=st.booleans())
    @counted
    def open_for_writing(self, data, truncate, read_write):
        where = data.draw(self._names(), label="where")
        pid = next(self.pids)
        flags = (os.O_RDWR if read_write else os.O_WRONLY) | (os.O_TRUNC if truncate else 0)
        file = self._open_writable(where, truncate)
        opened = self._outcome(lambda: self.core.open(mount_path(where), flags, FakeCaller(pid)),
                               None if file else NotFound)
        if file is not None:
            assert opened is not None
            self.handles.append(Handle(opened.fh, file, pid, readable=read_write, wrote=truncate))

    @precondition(lambda self: bool(self.staged))
    @rule(index=st.integers(0, 7))
    @counted
    def open_for_reading_while_written(self, index):
        where = sorted(self.staged)[index % len(self.staged)]
        opened = self.core.open(mount_path(where), os.O_RDONLY, FakeCaller(next(self.pids)))
        file = self.staged[where]
        file.opens += 1
        self.handles.append(Handle(opened.fh, file, None, readable=True))

    # --- steps: changing ---------------------------------------------------------------------------

    def _write(self, index: int, data: bytes, offset: int | None) -> None:
        handle = self._pick(index, writer=True)
        assert handle is not None
        file = handle.file
        at = len(file.content) if offset is None else min(offset, len(file.content) + 1024)
        refused = file.base is not None and not self._alive(file.base)  # removed before its copy was made
        written = self._outcome(lambda: self.core.write(handle.fh, data, at), NotFound if refused else None)
        if not refused:
            handle.wrote = True
            assert written == len(data)
            old = file.content
            self._changed(file, old[:at].ljust(at, b"\0") + data + old[at + len(data):])

    # The kernel sends no empty write.
    @precondition(lambda self: any(h.writer is not None for h in self.handles))
    @rule(index=st.integers(0, 7), data=st.binary(min_size=1, max_size=2048))
    @counted
    def write_at_the_end(self, index, data):
        """Writes in order (`cp`, a download), which a new file streams to the store as they come."""
        self._write(index, data, None)

    @precondition(lambda self: any(h.writer is not None for h in self.handles))
    @rule(index=st.integers(0, 7), data=st.binary(min_size=1, max_size=2048), offset=st.integers(0, 6000))
    @counted
    def write_anywhere(self, index, data, offset):
        """A write anywhere; past the end it leaves a hole of zeros."""
        self._write(index, data, offset)

    @rule(data=st.data(), length=st.integers(0, 5000))
    @counted
    def truncate(self, data, length):
        """`truncate -s` (or ftruncate, which reaches the mount by path too)."""
        where = data.draw(self._names(), label="where")
        file = self.staged.get(where)
        registered = self.registered.get(where)
        if file is None and registered is not None and length != len(registered.content):
            file = self.staged[where] = OpenFile(where, registered.content, CLEAN, base=registered)
        missing = file is None and registered is None
        self._outcome(lambda: self.core.truncate(mount_path(where), length), NotFound if missing else None)
        if file is not None:
            self._changed(file, file.content[:length].ljust(length, b"\0"))
            self._last_handle_gone(file)

    @precondition(lambda self: any(h.writer is not None for h in self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def fsync(self, index):
        handle = self._pick(index, writer=True)
        assert handle is not None and handle.writer is not None
        file, writer = handle.file, FakeCaller(handle.writer)
        self._outcome(lambda: self.core.fsync(handle.fh, writer),
                      StagingFailed if file.status == INTERRUPTED else None)
        if file.status == DIRTY:
            file.status = COVERED

    # --- steps: closing --------------------------------------------------------------------------

    def _release(self, handle: Handle) -> None:
        self.handles.remove(handle)
        self.core.release(handle.fh)
        handle.file.opens -= 1
        self._last_handle_gone(handle.file)

    def _close(self, index: int, how: str) -> None:
        handle = self._pick(index)
        assert handle is not None
        file = handle.file
        by_writer = handle.writer is not None and how != "by a child"
        caller = FakeCaller(handle.writer if by_writer and handle.writer else next(self.pids),
                            killed_by=KILLED if how == "writer killed" else None)
        failure = None
        if by_writer and how == "by its writer" and file.status == INTERRUPTED:
            failure = StagingFailed  # a killed writer's data: whoever closes it next is told
        self._outcome(lambda: self.core.flush(handle.fh, caller), failure)
        if by_writer and file.status in (DIRTY, COVERED):
            assert file.where is not None
            if how == "writer killed":
                if handle.wrote:  # one that changed nothing leaves the others' data as it is
                    file.status = INTERRUPTED
            elif is_temporary_name(file.where[1]):
                file.status = COVERED  # complete, but kept local until renamed to a real name
            else:
                self._upload(file)
        self._release(handle)

    @precondition(lambda self: bool(self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def writer_closes(self, index):
        """close() by the process that opened it: flush, then release."""
        self._close(index, "by its writer")

    @precondition(lambda self: bool(self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def last_close_by_a_child(self, index):
        """A child that inherited the descriptor closes the last copy: the writer's went without a
        flush of its own (an mmap, a descriptor passed on)."""
        self._close(index, "by a child")

    @precondition(lambda self: bool(self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def writer_killed(self, index):
        """The writer dies of SIGKILL holding the descriptor: the kernel closes it."""
        self._close(index, "writer killed")

    @precondition(lambda self: bool(self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def stray_close_by_a_child(self, index):
        """A child that inherited the descriptor closes it (exec, exit): the writer still writes."""
        handle = self._pick(index)
        assert handle is not None
        self.core.flush(handle.fh, FakeCaller(next(self.pids)))

    # --- steps: names ------------------------------------------------------------------------------

    @rule(data=st.data())
    @counted
    def rename(self, data):
        source = data.draw(self._names(), label="source")
        destination = data.draw(st.sampled_from([p for p in PATHS if p != source]), label="destination")
        missing = source not in self.staged and source not in self.registered
        self._outcome(lambda: self.core.rename(mount_path(source), mount_path(destination)),
                      NotFound if missing else None)
        if missing:
            return  # refused: nothing changes
        displaced = self.staged.pop(destination, None)
        if displaced is not None:
            displaced.where, displaced.status = None, UNLINKED
        file = self.staged.pop(source, None)
        if file is None:
            self.registered[destination] = self.registered.pop(source)
            return
        self.staged[destination] = file
        file.where = destination
        if source in self.registered:
            self.registered[destination] = self.registered.pop(source)  # moves along with its path
        if is_temporary_name(source[1]) and not is_temporary_name(destination[1]):
            self._last_handle_gone(file)  # an editor's finished file: registered now if nobody has it

    @rule(data=st.data())
    @counted
    def unlink(self, data):
        where = data.draw(self._names(), label="where")
        file = self.staged.pop(where, None)
        registered = self.registered.pop(where, None)
        self._outcome(lambda: self.core.unlink(mount_path(where)),
                      NotFound if file is None and registered is None else None)
        if file is not None:
            file.where, file.status = None, UNLINKED

    # --- steps: reading ----------------------------------------------------------------------------

    @precondition(lambda self: any(h.readable for h in self.handles))
    @rule(index=st.integers(0, 7))
    @counted
    def read_through_a_descriptor(self, index):
        handle = self._pick(index, readable=True)
        assert handle is not None
        file = handle.file
        # Removed before its copy was made, and never read: nothing holds those bytes any more.
        gone = (file.base is not None and not self._alive(file.base) and not file.base_read
                and len(file.base.content) > 0)
        data = self._outcome(lambda: self.core.read(handle.fh, 1 << 20, 0), NotFound if gone else None)
        if not gone:
            assert data == file.content
            file.base_read = file.base is not None

    # --- steps: the mount process --------------------------------------------------------------------

    @precondition(lambda self: bool(self.handles or self.staged))  # the interesting case
    @rule(clean=st.booleans())
    @counted
    def the_mount_ends(self, clean):
        """A clean stop (unmount), or the mount process dies: no stop(), and the kernel closes its
        descriptors. Then a new mount process starts (recovery) and the user runs `retry`."""
        self.mount.end(clean)
        self._model_after_the_process()
        self.mount = self._start()

    # --- what must hold after every step -------------------------------------------------------------

    def _expected_at(self, where: Where) -> bytes | None:
        file = self.staged.get(where)
        if file is not None:
            return file.content
        registered = self.registered.get(where)
        return None if registered is None else registered.content

    @invariant()
    def paths_read_back_the_model(self):
        for where in PATHS:
            expected = self._expected_at(where)
            path = mount_path(where)
            if expected is None:
                with pytest.raises(NotFound):
                    self.core.getattr(path)
                continue
            assert self.core.getattr(path)["st_size"] == len(expected), path
            opened = self.core.open(path, os.O_RDONLY, FakeCaller(next(self.pids)))
            try:
                assert self.core.read(opened.fh, 1 << 20, 0) == expected, path
            finally:
                self.core.release(opened.fh)
            file = self.staged.get(where)
            if file is not None and file.base is not None:
                file.base_read = True
        for purpose in PURPOSES:
            fh = self.core.opendir(f"/{purpose}")
            names = {name for _, name, _ in self.core.readdir(f"/{purpose}", fh)} - {".", ".."}
            self.core.releasedir(fh)
            expected_names = {n for p, n in (*self.staged, *self.registered) if p == purpose}
            assert names == expected_names, purpose

    @invariant()
    def the_store_holds_exactly_what_closes_covered(self):
        service = self.service
        rows = Counter((row["purpose"], row["filename"]) for row in service.metadata.all_files())
        assert rows == Counter(list(self.registered)), "one row per registered name, and no other"
        for row in service.metadata.all_files():
            body = b"".join(service.content(row["id"])[1])
            assert body == self.registered[(row["purpose"], row["filename"])].content, row
        report = service.check()
        assert report.clean, report.to_dict()
        streams = {f._stream.id for f in self.mount.files() if f._stream is not None}
        assert {i["id"] for i in service.metadata.intents()} == streams, "uploads recorded as under way"
        blobs = service.blobs
        if isinstance(blobs, LocalBlobStore):
            assert len(list((blobs.root / "tmp").iterdir())) == len(streams)

    @invariant()
    def staging_holds_the_open_files_and_the_interrupted_ones(self):
        core_files = self.mount.files()
        assert len(core_files) == len(self._open_files())
        for handle in self.handles:  # the handles of one open file share one staged file
            staged = self.core._handles[handle.fh]
            assert isinstance(staged, StagedFile)
            assert all(self.core._handles[h.fh] is staged for h in self.handles if h.file is handle.file)
        waiting = sorted((r.purpose, r.filename, r.state, (self.folder / f"{r.token}.data").read_bytes())
                         for r in records.waiting(self.folder))
        assert waiting == sorted((*where, "interrupted", content) for where, content in self.kept)
        everything = records.records(self.folder)
        assert len(everything) == len(core_files) + len(self.kept)
        names = sorted(p.name for p in self.folder.iterdir() if p.name != ".mount.lock")
        tokens = sorted(r.token for r in everything)
        assert names == sorted([f"{t}.data" for t in tokens] + [f"{t}.json" for t in tokens])


    def _core_file(self, file: OpenFile) -> StagedFile:
        for handle in self.handles:
            if handle.file is file:
                staged = self.core._handles[handle.fh]
                assert isinstance(staged, StagedFile)
                return staged
        assert file.where is not None
        return self.core._staged[file.where]

    @invariant()
    def each_record_says_what_a_crash_now_must_do(self):
        """Wherever a crash falls, the next start and `retry` act on the records alone: a file an
        fsync covered is registered, replacing the file its name shows; a changed one is kept as
        interrupted; an unchanged or removed one is dropped. So each record must say so at once."""
        on_disk = {r.token: r for r in records.records(self.folder)}
        rows = {(row["purpose"], row["filename"]): row["id"] for row in self.service.metadata.all_files()}
        for file in self._open_files():
            record = on_disk[self._core_file(file).token]
            if file.status == UNLINKED:
                assert record.state == "unlinked"
                continue
            assert file.where is not None and (record.purpose, record.filename) == file.where
            if is_temporary_name(file.where[1]):
                assert record.state != "uploading", record  # dropped at the next start
            elif file.status == CLEAN:
                assert record.state == "registered" or (
                    record.state == "uploading" and record.uploading_id == rows.get(file.where)), record
            else:
                assert record.state in (("closed", "failed") if file.status == COVERED else ("writing", "interrupted"))
                assert record.replaces == rows.get(file.where), record
                assert (self.folder / f"{record.token}.data").read_bytes() == file.content


def _run(workdir: Path, settings_for: Callable[[Path], config.Settings], examples: int, shrink: bool = True) -> None:
    machine = type("CoreModelRun", (CoreModel,), {"workdir": workdir, "settings_for": staticmethod(settings_for)})
    # Without shrinking (a run that must fail), the first failure is enough.
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    TALLY.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=examples, stateful_step_count=STEPS, deadline=None, derandomize=UNDER_CI, print_blob=True,
            phases=phases, report_multiple_bugs=shrink,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        runs = TALLY.pop("examples", 0)
        print(f"core model: {runs} examples, {sum(TALLY.values())} steps in {time.monotonic() - started:.1f}s "
              f"({', '.join(f'{name} {count}' for name, count in TALLY.most_common())}); "
              f"more with S3FILESFS_PROPERTY_EXAMPLES (now {EXAMPLES})")


def test_the_core_keeps_the_store_as_the_model_says_on_the_local_store(tmp_path):
    _run(tmp_path, lambda root: config.load(flags={"data_dir": str(root / "data")}), EXAMPLES)


def test_the_core_keeps_the_store_as_the_model_says_on_an_s3_server(tmp_path, s3_server):
    def settings_for(root: Path) -> config.Settings:
        values = s3_server.settings_values(s3_server.new_bucket_name(), db_path=str(root / "files.db"))
        return config.load(flags={**values, "data_dir": str(root / "data")})

    _run(tmp_path, settings_for, EXAMPLES_S3)


def test_the_model_rejects_a_core_that_registers_a_killed_writers_data(tmp_path, monkeypatch):
    """The model is not vacuous: a core that ignores a writer's death fails it."""
    monkeypatch.setattr(FakeCaller, "killed_by", lambda self: None)
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        _run(tmp_path, lambda root: config.load(flags={"data_dir": str(root / "data")}), 200, shrink=False)


# --- what the model found, each as its smallest case ---------------------------------------------------

WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@pytest.fixture
def start(tmp_path):
    """Start a mount process (again) on one store and staging folder."""
    settings = config.load(flags={"data_dir": str(tmp_path / "data")})
    return lambda: MountProcess(settings, tmp_path / "staging")


def stored(service: FileService) -> list[tuple[str, str, bytes]]:
    return sorted((f.purpose, f.filename, b"".join(service.content(f.id)[1])) for f in service.iter_all())


def test_a_rename_from_a_name_that_does_not_exist_leaves_the_target_alone(start):
    core, writer = start().core, FakeCaller(100)
    fh = core.create("/assistants/a.txt", WRITE_NEW, writer).fh
    core.write(fh, b"draft", 0)
    with pytest.raises(NotFound):
        core.rename("/assistants/gone.txt", "/assistants/a.txt")  # deleted elsewhere a moment ago
    core.flush(fh, writer)
    core.release(fh)
    assert stored(core.service) == [("assistants", "a.txt", b"draft")]


def test_a_killed_writer_of_a_temporary_name_leaves_nothing_in_staging(start):
    mount, writer = start(), FakeCaller(100)
    fh = mount.core.create("/assistants/.a.txt.swp", WRITE_NEW, writer).fh
    mount.core.write(fh, b"swap", 0)
    mount.core.flush(fh, FakeCaller(100, killed_by=KILLED))
    mount.core.release(fh)
    # `status` and `retry` never list a temporary name: a record kept for them would stay forever.
    assert records.records(mount.folder) == []


def test_a_temporary_name_a_crash_left_interrupted_is_removed_at_the_next_start(start):
    mount = start()
    fh = mount.core.create("/assistants/a.part", WRITE_NEW, FakeCaller(100)).fh
    mount.core.write(fh, b"partial", 0)
    mount.core.open("/assistants/a.part", os.O_RDONLY, FakeCaller(101))  # still open when the writer dies
    mount.core.flush(fh, FakeCaller(100, killed_by=KILLED))
    mount.core.release(fh)
    mount.end(clean=False)
    assert [r.state for r in records.records(mount.folder)] == ["interrupted"]
    start()
    assert records.records(mount.folder) == []


def test_bytes_written_after_an_fsync_are_not_registered_after_a_crash(start):
    mount, writer = start(), FakeCaller(100)
    fh = mount.core.create("/assistants/a.txt", WRITE_NEW, writer).fh
    mount.core.write(fh, b"complete", 0)
    mount.core.fsync(fh, writer)  # a crash now would leave "complete" for `retry`
    mount.core.write(fh, b" and half", 8)  # no close or fsync covers these
    mount.end(clean=False)
    after = start()
    assert after.retried == [] and stored(after.service) == []
    record, = records.waiting(mount.folder)
    assert (record.filename, record.state) == ("a.txt", "interrupted")
    assert (mount.folder / f"{record.token}.data").read_bytes() == b"complete and half"


def test_a_new_file_renamed_over_another_replaces_it_also_when_retry_registers_it(start):
    mount, writer = start(), FakeCaller(100)
    mount.service.create(io.BytesIO(b"old"), "b.txt", "assistants")
    fh = mount.core.create("/assistants/a.txt", WRITE_NEW, writer).fh
    mount.core.write(fh, b"new", 0)
    mount.core.fsync(fh, writer)
    mount.core.rename("/assistants/a.txt", "/assistants/b.txt")  # b.txt shows the new bytes now
    mount.end(clean=False)
    after = start()
    assert [f.filename for f in after.retried] == ["b.txt"]
    assert stored(after.service) == [("assistants", "b.txt", b"new")]  # one b.txt, not two
