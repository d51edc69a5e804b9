"""Staging without a kernel: one staged file's lifecycle, and what `status` and `retry` see of it
from another process, while a mount writes and after a mount or a `retry` dies.

A running mount holds a lock on each record it has, so another process's `retry` leaves it alone.
A failed upload (the writer's close was reached) is free for `retry`, which registers it exactly
once; an interrupted one (possibly incomplete) is registered only when named.
"""

import io
import subprocess
import sys
import textwrap

import pytest

from s3filesfs.errors import NoSpace, StagingInUse, StorageUnavailable
from s3filesfs.fs import records, staging
from s3filesfs.fs.staging import State
from tests.unit.stores import assert_clean


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "staging"


@pytest.fixture
def stage(folder, local_backend):
    area = staging.Staging(folder, max_bytes=1024 * 1024)
    area.claim(local_backend.service)
    return area


def opened(stage, service, purpose, name, replaces=None):
    staged = stage.new_file(service, purpose, name, replaces)
    assert staged.attach()
    return staged


def waiting_in_other_process(folder) -> list[tuple[str, ...]]:
    """`records.waiting` as another process (the CLI) sees it: flock is per open file description."""
    code = textwrap.dedent(f"""
        from s3filesfs.fs import records
        for r in records.waiting({str(folder)!r}):
            print(r.filename, r.to_dict()["state"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [tuple(line.split()) for line in result.stdout.splitlines()]


def test_a_file_being_written_is_not_offered_for_retry(stage, folder, local_backend):
    service = local_backend.service
    staged = opened(stage, service, "assistants", "draft.txt")
    staged.write(b"half", 0)
    assert waiting_in_other_process(folder) == []
    staged.rename("batch", "draft.jsonl")  # the record is rewritten: still held
    assert waiting_in_other_process(folder) == []
    staged.closed_by_writer()  # registered; the record is rewritten again, still held
    assert staged.state == State.REGISTERED
    assert waiting_in_other_process(folder) == []
    assert records.retry(service, folder) == ([], [])
    assert staged.detach() == State.DISCARDED
    staged.finish()
    assert [(f.filename, f.purpose) for f in service.iter_all()] == [("draft.jsonl", "batch")]
    assert list(folder.glob("*.data")) == [] and list(folder.glob("*.json")) == []
    assert_clean(service)


def test_a_failed_upload_is_kept_and_retried_once(stage, folder, local_backend, monkeypatch):
    service = local_backend.service
    staged = opened(stage, service, "assistants", "report.txt")
    staged.write(b"the whole report\n", 0)

    def down(*args, **kwargs):
        raise StorageUnavailable("S3 is down")

    monkeypatch.setattr(service.metadata, "insert", down)
    with pytest.raises(StorageUnavailable):
        staged.closed_by_writer()  # the close reports it
    assert staged.state == State.FAILED
    assert waiting_in_other_process(folder) == []  # still the mount's until its last handle goes
    assert staged.detach() == State.KEPT
    staged.finish()
    monkeypatch.undo()
    assert waiting_in_other_process(folder) == [("report.txt", "failed")]
    record, = records.waiting(folder)
    assert (record.purpose, record.bytes, record.error) == ("assistants", 17, "S3 is down")
    done, failing = records.retry(service, folder)
    assert failing == [] and [f.filename for f in done] == ["report.txt"]
    assert next(service.content(done[0].id)[1]) == b"the whole report\n"
    assert records.retry(service, folder) == ([], [])  # nothing twice
    assert_clean(service)


def test_retry_replaces_what_the_write_would_have(stage, folder, local_backend):
    service = local_backend.service
    old = service.create(io.BytesIO(b"v1"), "notes.txt", "assistants")
    staged = opened(stage, service, "assistants", "notes.txt", old.id)
    staged.write(b"v2", 0)
    staged.synced()  # complete so far: a stop now keeps it as failed, not interrupted
    staged.stop()
    done, _ = records.retry(service, folder)
    assert [f.id for f in service.iter_all()] == [done[0].id] and done[0].id != old.id
    assert_clean(service)


def test_a_second_mount_on_the_same_folder_is_refused(stage, folder, local_backend):
    with pytest.raises(StagingInUse, match="--staging-dir") as refused:
        staging.Staging(folder, max_bytes=1).claim(local_backend.service)
    assert refused.value.exit_code == 1  # the user's to fix


def test_the_cap_refuses_a_write_and_the_close_and_registers_nothing(stage, folder, local_backend):
    staged = opened(stage, local_backend.service, "assistants", "big.bin")
    staged.write(b"x" * 1000, 0)
    with pytest.raises(NoSpace):
        staged.write(b"x" * (1024 * 1024), 1000)
    with pytest.raises(NoSpace):
        staged.closed_by_writer()  # an incomplete file is never registered
    # Keeping what fitted would keep staging full; the writer was told and still has its data.
    assert staged.detach() == State.DISCARDED
    staged.finish()
    assert stage.used == 0
    assert list(local_backend.service.iter_all()) == []
    assert list(folder.glob("*.data")) == []


def _dead_mount(folder, data_dir, script: str) -> None:
    code = textwrap.dedent(f"""
        import os
        from s3filesfs.files import open_service
        from s3filesfs import config
        from s3filesfs.fs import records, staging
        service = open_service(config.load(flags={{"data_dir": {str(data_dir)!r}}}))
        area = staging.Staging({str(folder)!r}, max_bytes=1 << 20)
        area.claim(service)
    """) + textwrap.dedent(script) + "\nos.kill(os.getpid(), 9)\n"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9


def test_what_a_dead_mount_was_writing_is_interrupted(folder, tmp_path, local_backend):
    """Killed before the close: maybe incomplete, so only registered when named."""
    _dead_mount(folder, tmp_path / "data", """
        area.new_file(service, "batch", "run.jsonl", None).write(b"{}\\n", 0)
        area.new_file(service, "batch", ".run.jsonl.swp", None).write(b"tmp", 0)
    """)
    assert waiting_in_other_process(folder) == [("run.jsonl", "interrupted")]  # a swap file never is
    area = staging.Staging(folder, max_bytes=1 << 20)
    area.claim(local_backend.service)  # the next mount: the temporary one is dropped
    record, = records.waiting(folder)
    assert (record.filename, record.state, record.bytes) == ("run.jsonl", "interrupted", 3)
    assert record.error and "before this file was closed" in record.error
    assert area.used == 3
    assert records.retry(local_backend.service, folder) == ([], [])
    assert records.retry(local_backend.service, folder, include_interrupted=True)[0][0].filename == "run.jsonl"
    assert_clean(local_backend.service)


def test_a_mount_killed_after_registering_does_not_register_twice(folder, tmp_path, local_backend):
    """Killed after the row went in but before the staged copy was dropped: finished, not sent again."""
    _dead_mount(folder, tmp_path / "data", """
        staged = area.new_file(service, "batch", "done.jsonl", None)
        staged.attach()
        staged.write(b"all of it\\n", 0)
        staged.closed_by_writer()
    """)
    service = local_backend.service
    assert [f.filename for f in service.iter_all()] == ["done.jsonl"]
    staging.Staging(folder, max_bytes=1 << 20).claim(service)
    assert records.records(folder) == []
    assert records.retry(service, folder) == ([], [])
    assert [f.filename for f in service.iter_all()] == ["done.jsonl"]
    assert_clean(service)


def test_a_killed_retry_is_finished_by_the_next_one_exactly_once(folder, tmp_path, local_backend):
    service = local_backend.service
    area = staging.Staging(folder, max_bytes=1 << 20)
    area.claim(service)
    staged = opened(area, service, "assistants", "report.txt")
    staged.write(b"complete\n", 0)
    staged.synced()
    staged.stop()
    del area  # the mount is gone
    # A `retry` killed right after the row went in, before it dropped the staged copy.
    code = textwrap.dedent(f"""
        import os
        from s3filesfs.files import open_service
        from s3filesfs import config
        from s3filesfs.fs import records
        service = open_service(config.load(flags={{"data_dir": {str(tmp_path / "data")!r}}}))
        records.discard = lambda folder, token: os.kill(os.getpid(), 9)
        records.retry(service, {str(folder)!r})
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert [f.filename for f in service.iter_all()] == ["report.txt"]
    done, failing = records.retry(service, folder)
    assert (done, failing) == ([], [])  # finished, not registered again
    assert records.records(folder) == []
    assert [f.filename for f in service.iter_all()] == ["report.txt"]
    assert_clean(service)


def test_an_upload_cut_off_by_a_kill_is_removed_by_the_next_retry(folder, tmp_path, local_backend):
    """The object went in, the process died before its row: the recorded intent names it."""
    code = textwrap.dedent(f"""
        import io, os
        from s3filesfs.files import open_service
        from s3filesfs import config
        service = open_service(config.load(flags={{"data_dir": {str(tmp_path / "data")!r}}}))
        service.metadata.insert = lambda row, writer=None, **_: os.kill(os.getpid(), 9)
        service.create(io.BytesIO(b"orphan"), "orphan.txt", "assistants")
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    service = local_backend.service
    assert service.check().objects_without_rows  # what the kill left
    assert len(service.metadata.intents()) == 1
    assert records.retry(service, folder) == ([], [])
    assert service.metadata.intents() == []
    assert_clean(service)
