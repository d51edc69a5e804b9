"""Staging without a kernel: what `status` and `retry` see while a mount writes, and after it fails.

A running mount holds a lock on each record it is writing, so another process's `retry` must leave
it alone, also after the mount rewrites the record (an upload, a rename). A failed upload is free
for `retry`, which registers it exactly once.
"""

import io
import subprocess
import sys
import textwrap

import pytest

from s3filesfs.errors import NoSpace, StorageUnavailable
from s3filesfs.fs import records, staging
from tests.unit.stores import assert_clean


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "staging"


@pytest.fixture
def stage(folder):
    area = staging.Staging(folder, max_bytes=1024 * 1024)
    area.claim()
    return area


def failed_in_other_process(folder) -> list[str]:
    """`records.failed` as another process (the CLI) sees it: flock is per open file description."""
    code = textwrap.dedent(f"""
        from s3filesfs.fs import records, staging
        print("\\n".join(r.filename for r in records.failed({str(folder)!r})))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_a_file_being_written_is_not_offered_for_retry(stage, folder, local_backend):
    service = local_backend.service
    staged = stage.new_file(service, "assistants", "draft.txt", None, temporary=False)
    staged.write(b"half", 0)
    assert failed_in_other_process(folder) == []
    staged.rename("batch", "draft.jsonl", temporary=False)  # the record is rewritten: still held
    assert failed_in_other_process(folder) == []
    file = staged.upload()  # rewritten again after the upload
    assert failed_in_other_process(folder) == []
    assert records.retry(service, folder) == ([], [])
    staged.discard()
    assert [f.id for f in service.iter_all()] == [file.id]
    assert list(folder.glob("*.data")) == [] and list(folder.glob("*.json")) == []
    assert_clean(service)


def test_a_failed_upload_is_kept_and_retried_once(stage, folder, local_backend, monkeypatch):
    service = local_backend.service
    staged = stage.new_file(service, "assistants", "report.txt", None, temporary=False)
    staged.write(b"the whole report\n", 0)
    def down(*args, **kwargs):
        raise StorageUnavailable("S3 is down")

    monkeypatch.setattr(service.metadata, "insert", down)
    with pytest.raises(StorageUnavailable):
        staged.upload()
    staged.keep_for_retry(staged.last_error)
    monkeypatch.undo()
    assert failed_in_other_process(folder) == ["report.txt"]
    record, = records.failed(folder)
    assert (record.purpose, record.bytes, record.error) == ("assistants", 17, "S3 is down")
    done, failing = records.retry(service, folder)
    assert failing == [] and [f.filename for f in done] == ["report.txt"]
    assert service.content(done[0].id)[1].__next__() == b"the whole report\n"
    assert records.retry(service, folder) == ([], [])  # nothing twice
    assert_clean(service)


def test_retry_replaces_what_the_write_would_have(stage, folder, local_backend):
    service = local_backend.service
    old = service.create(io.BytesIO(b"v1"), "notes.txt", "assistants")
    staged = stage.new_file(service, "assistants", "notes.txt", old.id, temporary=False)
    staged.write(b"v2", 0)
    staged.keep_for_retry("S3 was down")
    done, _ = records.retry(service, folder)
    assert [f.id for f in service.iter_all()] == [done[0].id] and done[0].id != old.id
    assert_clean(service)


def test_a_second_mount_on_the_same_folder_is_refused(stage, folder):
    with pytest.raises(Exception, match="in use by another mount"):
        staging.Staging(folder, max_bytes=1).claim()


def test_the_cap_refuses_a_write_and_marks_the_file_incomplete(stage, local_backend):
    staged = stage.new_file(local_backend.service, "assistants", "big.bin", None, temporary=False)
    staged.write(b"x" * 1000, 0)
    with pytest.raises(NoSpace):
        staged.write(b"x" * (1024 * 1024), 1000)
    with pytest.raises(NoSpace):
        staged.upload()  # an incomplete file is never registered
    staged.discard()
    assert stage.used == 0
    assert list(local_backend.service.iter_all()) == []


def test_records_of_a_dead_mount_become_failures(folder, local_backend):
    # A mount process writes two files and dies without closing them.
    code = textwrap.dedent(f"""
        import os
        from s3filesfs.files import open_service
        from s3filesfs import config
        from s3filesfs.fs import records, staging
        service = open_service(config.load(flags={{"data_dir": {str(folder.parent / "data")!r}}}))
        area = staging.Staging({str(folder)!r}, max_bytes=1 << 20)
        area.claim()
        area.new_file(service, "batch", "run.jsonl", None, temporary=False).write(b"{{}}\\n", 0)
        area.new_file(service, "batch", ".run.jsonl.swp", None, temporary=True).write(b"tmp", 0)
        os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert failed_in_other_process(folder) == ["run.jsonl"]  # a swap file is never offered
    area = staging.Staging(folder, max_bytes=1 << 20)
    area.claim()  # the next mount: the real file waits for retry, the temporary one is dropped
    record, = records.failed(folder)
    assert (record.filename, record.state, record.bytes) == ("run.jsonl", "failed", 3)
    assert record.error and "stopped before" in record.error
    assert area.used == 3
    done, failing = records.retry(local_backend.service, folder)
    assert failing == [] and [f.filename for f in done] == ["run.jsonl"]
    assert_clean(local_backend.service)
