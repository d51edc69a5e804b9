"""The mount core without a kernel: what it leaves in the store and in staging, also across crashes.

Each test drives ``MountCore`` (``fs/core.py``) as the kernel would. Where it matters, its mount
process ends the way a crash ends it: the core abandoned without ``stop()`` and every descriptor it
held closed; then the next process claims staging (recovery), runs ``retry`` and starts a new core.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from s3filesfs import config
from s3filesfs.errors import NotFound
from s3filesfs.files import FileService, open_service
from s3filesfs.fs import records
from s3filesfs.fs.core import Caller, MountCore
from s3filesfs.fs.staging import StagedFile, Staging

STAGING_CAP = 64 * 1024 * 1024
KILLED = 9  # SIGKILL


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
        metadata = self.service.metadata
        metadata.close()
        if metadata._writer_db is not None:
            metadata._writer_db.conn.close()
            metadata._writer_db = None


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
