"""FileService over each store: the OpenAI Files semantics of DESIGN §2.1 and the seed's own suite.

Every test runs on the local store, on moto's in-process mock and on a real moto server with its
metadata on SQLite, and on the local store and the moto server with its metadata on PostgreSQL, and
ends by checking that bucket and table agree wherever the state should be consistent.
"""

import io
import os
import re
import urllib.parse

import pytest

from s3filesfs.access import OPERATOR
from s3filesfs.errors import InvalidPurpose, InvalidRequest, NotFound, StorageError, StorageUnavailable
from s3filesfs.files import ORPHAN_GRACE, FileService
from s3filesfs.metadata import MetadataStore, PostgresLocation
from s3filesfs.model import EXPIRES_AFTER_MAX, NO_EXPIRY_SECONDS, PURPOSES
from tests.unit.stores import EPOCH, MetadataTarget, assert_clean

MIB = 1024 * 1024
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


def upload(service, body: bytes = b"hello world", filename="hello.txt", purpose="assistants", **kwargs):
    return service.create(io.BytesIO(body), filename, purpose, **kwargs)


def content_of(service, file_id, start=0, end=None) -> bytes:
    _, chunks = service.content(file_id, start, end)
    return b"".join(chunks)


def row_of(service, file_id):
    return service.metadata.get(file_id, viewer=OPERATOR)


# --- create ----------------------------------------------------------------------------------


def test_upload_echoes_fields_and_puts_the_object_under_the_id(backend):
    service = backend.service
    created = upload(service, b"some text\n", "notes.txt", "assistants")
    assert FILE_ID.match(created.id)
    assert (created.filename, created.purpose, created.bytes) == ("notes.txt", "assistants", 10)
    assert created.created_at == EPOCH
    shown = created.to_openai()
    assert shown == {"object": "file", "id": created.id, "bytes": 10, "created_at": EPOCH,
                     "expires_at": None, "filename": "notes.txt", "purpose": "assistants"}
    # The object sits at the bucket root under the id, with the raw bytes as its body.
    assert backend.object_keys() == {created.id}
    assert backend.object_body(created.id) == b"some text\n"
    assert service.retrieve(created.id) == created
    assert_clean(service)


def test_object_metadata_lets_the_index_be_rebuilt(backend):
    service = backend.service
    created = upload(service, b"x", "résumé 2024.pdf", "batch")
    metadata = backend.object_metadata(created.id)
    assert urllib.parse.unquote(metadata["filename"]) == "résumé 2024.pdf"
    assert metadata["filename"].isascii()
    assert metadata["purpose"] == "batch"
    assert int(metadata["created-at"]) == created.created_at
    assert int(metadata["expires-at"]) == created.expires_at
    assert service.retrieve(created.id).filename == "résumé 2024.pdf"
    assert_clean(service)


@pytest.mark.parametrize("filename", [None, ""])
def test_missing_filename_falls_back_to_uploaded_file(backend, filename):
    created = upload(backend.service, b"data", filename)
    assert created.filename == "uploaded_file"
    assert backend.service.retrieve(created.id).filename == "uploaded_file"
    assert_clean(backend.service)


def test_ten_uploads_give_ten_distinct_ids(backend):
    ids = [upload(backend.service, f"body {n}".encode(), f"f{n}.txt").id for n in range(10)]
    assert len(set(ids)) == 10
    assert all(FILE_ID.match(file_id) for file_id in ids)
    assert backend.object_keys() == set(ids)
    assert_clean(backend.service)


def test_empty_body_round_trips(backend):
    created = upload(backend.service, b"", "empty.txt")
    assert created.bytes == 0
    assert content_of(backend.service, created.id) == b""
    assert backend.service.read(created.id, 0, 100) == b""
    assert backend.object_body(created.id) == b""
    assert_clean(backend.service)


def test_unknown_purpose_is_rejected_and_nothing_is_written(backend):
    with pytest.raises(InvalidPurpose) as raised:
        upload(backend.service, purpose="training")
    assert "purpose must be one of assistants, batch, fine-tune, vision, user_data, evals" in str(raised.value)
    assert raised.value.param == "purpose"
    assert backend.object_keys() == set()
    assert backend.service.list().data == []
    assert_clean(backend.service)


def test_configured_purposes_restrict_uploads(backend):
    service = FileService(backend.service.metadata, backend.service.blobs, purposes=("batch",),
                          clock=backend.clock)
    with pytest.raises(InvalidPurpose, match="purpose must be one of batch "):
        upload(service, purpose="assistants")
    assert upload(service, purpose="batch").purpose == "batch"
    assert_clean(service)


def test_failed_object_put_leaves_no_row(backend):
    service = backend.service
    with backend.failing_put():
        with pytest.raises(StorageError):
            upload(service, b"small body")
        with pytest.raises(StorageError):
            upload(service, os.urandom(9 * MIB), "big.bin")  # the multipart path on S3
    assert service.metadata.all_files() == []
    assert service.list().data == []
    assert backend.object_keys() == set()
    assert backend.leftovers() == []
    assert_clean(service)


def test_body_that_fails_mid_upload_leaves_nothing(backend):
    class BrokenBody(io.RawIOBase):
        """Gives 9 MiB (more than one S3 part), then the connection drops."""

        def __init__(self):
            self.sent = 0

        def read(self, size=-1):
            if self.sent >= 9 * MIB:
                raise ConnectionResetError("client went away")
            self.sent += size
            return b"x" * size

    with pytest.raises(ConnectionResetError):
        backend.service.create(BrokenBody(), "partial.bin", "assistants")
    assert backend.service.metadata.all_files() == []
    assert backend.object_keys() == set()
    assert backend.leftovers() == []
    assert_clean(backend.service)


def test_failed_row_insert_removes_the_object(backend, monkeypatch):
    service = backend.service

    def broken_insert(row, writer=None, **_):
        raise StorageError("metadata database failed (insert): disk I/O error")

    monkeypatch.setattr(service.metadata, "insert", broken_insert)
    with pytest.raises(StorageError, match="disk I/O error"):
        upload(service)
    monkeypatch.undo()
    assert backend.object_keys() == set()
    assert service.metadata.all_files() == []
    assert_clean(service)


def test_pending_file_is_invisible_until_commit_and_abort_leaves_nothing(backend):
    service = backend.service
    pending = service.begin("streamed.bin", "user_data")
    assert FILE_ID.match(pending.id)
    pending.write(b"part one, ")
    assert service.list().data == []
    assert backend.object_keys() == set()
    pending.write(b"part two")
    created = pending.commit()
    assert created.id == pending.id and created.bytes == 18
    assert content_of(service, created.id) == b"part one, part two"

    dropped = service.begin("dropped.bin", "user_data")
    dropped.write(os.urandom(9 * MIB))
    dropped.abort()
    dropped.abort()  # twice is fine
    assert [f.id for f in service.list().data] == [created.id]
    assert backend.object_keys() == {created.id}
    assert backend.leftovers() == []
    assert_clean(service)


def test_abandon_removes_what_a_writer_that_died_left(backend):
    """A writer that stops without commit or abort (its process died) leaves a multipart upload
    (S3) or a body file (local); ``abandon`` of its id removes that, and only that."""
    service = backend.service
    died = service.begin("died.bin", "user_data")
    died.write(os.urandom(9 * MIB))  # past one S3 part: the multipart upload is under way
    assert died.begun == (backend.name != "local")  # S3 keeps the parts until they are aborted
    alive = service.begin("alive.bin", "user_data")
    alive.write(os.urandom(9 * MIB))
    assert len(backend.leftovers()) == 2
    assert service.abandon(died.id) is True
    assert len(backend.leftovers()) == 1, "another writer's upload is left alone"
    created = alive.commit()
    assert backend.leftovers() == []
    assert [f.id for f in service.list().data] == [created.id]
    assert service.abandon(created.id) is False  # a registered file is never abandoned
    assert backend.object_keys() == {created.id}
    assert_clean(service)


def test_streamed_writes_of_any_size_and_buffer_type_round_trip(backend):
    """Writes that straddle part boundaries, empty writes, and callers that reuse their buffer."""
    service = backend.service
    body = os.urandom(17 * MIB + 123)
    sizes = [1, 3 * MIB + 7, 0, 5 * MIB - 1, 65536, 8 * MIB, 2 * MIB + 1]
    reused = bytearray(8 * MIB)
    pending = service.begin("odd.bin", "batch")
    offset, n = 0, 0
    while offset < len(body):
        size = min(sizes[n % len(sizes)], len(body) - offset)
        piece = body[offset:offset + size]
        kind = n % 3
        if kind == 0:
            pending.write(piece)
        elif kind == 1:
            chunk = bytearray(piece)
            pending.write(chunk)
            chunk[:] = b"\0" * len(chunk)  # the caller reuses its buffer at once
        else:
            view = memoryview(reused)[:size]
            view[:] = piece
            pending.write(view)
            view[:] = b"\xff" * size
        offset, n = offset + size, n + 1
    created = pending.commit()
    assert created.bytes == len(body)
    assert content_of(service, created.id) == body
    assert backend.object_body(created.id) == body
    assert_clean(service)


def test_a_second_service_on_the_same_store_sees_the_files(backend):
    created = upload(backend.service, b"persisted", "p.txt")
    again = FileService(MetadataStore(backend.service.metadata.location), backend.service.blobs, clock=backend.clock)
    assert again.retrieve(created.id) == created
    assert content_of(again, created.id) == b"persisted"
    assert_clean(again)


# --- read ------------------------------------------------------------------------------------


def test_empty_list(backend):
    page = backend.service.list().to_openai()
    assert page == {"object": "list", "data": [], "has_more": False, "first_id": "", "last_id": ""}
    assert_clean(backend.service)


def test_retrieve_and_content_round_trip(backend):
    service = backend.service
    body = bytes(range(256)) * 40
    created = upload(service, body, "binary.bin", "fine-tune")
    assert service.retrieve(created.id).to_openai() == created.to_openai()
    file, chunks = service.content(created.id)
    assert file == created
    assert b"".join(chunks) == body
    assert service.read(created.id, 0, len(body)) == body
    assert_clean(service)


def test_ranged_reads_of_a_small_file(backend):
    service = backend.service
    body = b"0123456789abcdef"
    file_id = upload(service, body).id
    assert content_of(service, file_id, 3, 7) == b"3456"
    assert content_of(service, file_id, 10) == b"abcdef"
    assert content_of(service, file_id, 10, 100) == b"abcdef"
    assert content_of(service, file_id, 16) == b""
    assert content_of(service, file_id, 50, 60) == b""
    assert content_of(service, file_id, 5, 5) == b""
    assert service.read(file_id, 0, 4) == b"0123"
    assert service.read(file_id, 14, 10) == b"ef"
    assert service.read(file_id, 16, 10) == b""
    assert service.read(file_id, 1000, 10) == b""
    assert service.read(file_id, 4, 0) == b""
    assert_clean(service)


def test_multipart_body_round_trips_byte_for_byte(backend):
    service = backend.service
    body = os.urandom(17 * MIB)
    created = upload(service, body, "big.bin", "batch")
    assert created.bytes == len(body)
    if backend.name != "local":
        # 8 MiB parts: 8 + 8 + 1, so the object was really sent as a multipart upload.
        etag = backend.client.head_object(Bucket=backend.bucket, Key=created.id)["ETag"]
        assert etag.strip('"').endswith("-3")
    assert content_of(service, created.id) == body
    boundary = 8 * MIB
    assert content_of(service, created.id, boundary - 5, boundary + 5) == body[boundary - 5:boundary + 5]
    assert content_of(service, created.id, 16 * MIB) == body[16 * MIB:]
    assert service.read(created.id, boundary - 3, 6) == body[boundary - 3:boundary + 3]
    assert service.read(created.id, len(body) - 2, 10) == body[-2:]
    assert service.read(created.id, len(body), 10) == b""
    assert content_of(service, created.id, len(body) + 1) == b""
    assert backend.object_body(created.id) == body
    assert_clean(service)


def test_body_written_from_a_reused_buffer_keeps_what_was_written(backend):
    """The mount hands writers a view of libfuse's buffer, overwritten by the next request."""
    service = backend.service
    body = os.urandom(6 * 8 * MIB + 3)  # six parts or more: part buffers are filled again
    scratch = bytearray(MIB + 7)  # writes straddle every part boundary
    pending = service.begin("reused.bin", "batch")
    for start in range(0, len(body), len(scratch)):
        piece = body[start:start + len(scratch)]
        scratch[:len(piece)] = piece
        with memoryview(scratch)[:len(piece)] as view:
            pending.write(view)
        scratch[:] = b"\xff" * len(scratch)  # what the caller does with its buffer next
    created = pending.commit()
    assert created.bytes == len(body)
    assert backend.object_body(created.id) == body
    assert_clean(service)


@pytest.mark.parametrize("operation", ["retrieve", "content", "read", "delete"])
@pytest.mark.parametrize("file_id", ["file-" + "0" * 32, "not-a-file-id"])
def test_unknown_id_is_not_found(backend, operation, file_id):
    service = backend.service
    kept = upload(service).id
    call = {"retrieve": lambda: service.retrieve(file_id), "content": lambda: service.content(file_id),
            "read": lambda: service.read(file_id, 0, 10), "delete": lambda: service.delete(file_id)}[operation]
    with pytest.raises(NotFound) as raised:
        call()
    assert "not found" in str(raised.value)
    assert file_id in str(raised.value)
    assert raised.value.http_status == 404
    assert [f.id for f in service.list().data] == [kept]
    assert_clean(service)


# --- delete ----------------------------------------------------------------------------------


def test_delete_then_retrieve_is_not_found_and_the_object_is_gone(backend):
    service = backend.service
    doomed = upload(service, b"bye", "bye.txt").id
    kept = upload(service, b"stay", "stay.txt").id
    assert service.delete(doomed) == {"id": doomed, "object": "file", "deleted": True}
    with pytest.raises(NotFound, match=doomed):
        service.retrieve(doomed)
    with pytest.raises(NotFound):
        service.content(doomed)
    with pytest.raises(NotFound):
        service.delete(doomed)
    assert backend.object_body(doomed) is None
    assert row_of(service, doomed) is None
    assert backend.object_keys() == {kept}
    assert [f.id for f in service.list().data] == [kept]
    assert_clean(service)


def test_delete_of_a_file_whose_object_is_already_gone_succeeds(backend):
    service = backend.service
    file_id = upload(service).id
    backend.remove_object(file_id)
    assert service.delete(file_id)["deleted"] is True
    assert row_of(service, file_id) is None
    assert_clean(service)


# --- objects that vanish behind our back -----------------------------------------------------


def test_object_deleted_out_of_band_makes_content_not_found_and_drops_the_file(backend):
    service = backend.service
    orphan = upload(service, b"orphan", "orphan.txt").id
    kept = upload(service, b"kept", "kept.txt").id
    backend.remove_object(orphan)
    backend.clock.advance(ORPHAN_GRACE)
    with pytest.raises(NotFound, match="not found"):
        service.content(orphan)
    assert [f.id for f in service.list().data] == [kept]
    assert row_of(service, orphan) is None
    with pytest.raises(NotFound):
        service.read(orphan, 0, 10)
    assert_clean(service)


def test_read_of_an_object_deleted_out_of_band_also_reaps_it(backend):
    service = backend.service
    orphan = upload(service).id
    backend.remove_object(orphan)
    backend.clock.advance(ORPHAN_GRACE + 1)
    with pytest.raises(NotFound):
        service.read(orphan, 0, 10)
    assert service.list().data == []
    assert_clean(service)


def listed(service) -> list[str]:
    return [f.id for f in service.list(order="asc").data]


def plain(service):
    """A plain connection to the service's metadata database, as another program would open one."""
    location = service.metadata.location
    return MetadataTarget("postgres" if isinstance(location, PostgresLocation) else "sqlite", location).plain()


def notes(service) -> list[str]:
    """The rows noted as missing their object, read straight from the table."""
    with plain(service) as db:
        return [row["id"] for row in db.query("SELECT id FROM s3filesfs_missing ORDER BY id")]


def test_young_row_without_object_is_hidden_at_once_and_kept(backend):
    """The seed writes its row before its object: a fresh row may be waiting for its body. A read
    that finds no body hides the row from every listing, and keeps it."""
    service = backend.service
    kept = upload(service, b"kept", "kept.txt").id
    backend.clock.advance(1)
    file_id = upload(service, b"arriving", "late.txt").id
    backend.remove_object(file_id)
    backend.clock.advance(ORPHAN_GRACE - 1)
    assert listed(service) == [kept, file_id]  # nobody has looked yet
    with pytest.raises(NotFound):
        service.content(file_id)
    assert listed(service) == [kept]
    assert service.list(purpose="assistants").data == [service.retrieve(kept)]
    with pytest.raises(NotFound):
        service.read(file_id, 0, 10)
    assert row_of(service, file_id) is not None and notes(service) == [file_id]
    assert service.check().rows_without_objects == [file_id]
    # Hidden for every process on the database: another service, with its own connections.
    other = FileService(MetadataStore(service.metadata.location), service.blobs, clock=backend.clock)
    assert listed(other) == [kept]
    # The body arrives: the first read that finds it lists the file again, everywhere.
    backend.plant_object(file_id, b"arriving")
    assert content_of(other, file_id) == b"arriving"
    assert listed(service) == [kept, file_id] and notes(service) == []
    assert_clean(service)


def test_hidden_row_is_deleted_by_the_first_listing_after_the_grace(backend):
    service = backend.service
    file_id = upload(service, b"lost", "lost.txt").id
    backend.remove_object(file_id)
    backend.clock.advance(10)
    with pytest.raises(NotFound):
        service.read(file_id, 0, 4)
    backend.clock.advance(ORPHAN_GRACE - 11)
    assert listed(service) == [] and row_of(service, file_id) is not None  # still within the grace
    backend.clock.advance(1)
    assert listed(service) == []
    assert row_of(service, file_id) is None and notes(service) == []
    assert_clean(service)


def test_hidden_row_whose_body_arrived_is_listed_again_after_the_grace(backend):
    """Nobody reads it again: the listing after the grace looks once, finds the body, shows it."""
    service = backend.service
    file_id = upload(service, b"slow", "slow.txt").id
    backend.remove_object(file_id)
    with pytest.raises(NotFound):
        service.content(file_id)
    backend.plant_object(file_id, b"slow")
    assert listed(service) == []
    backend.clock.advance(ORPHAN_GRACE)
    assert listed(service) == [file_id] and notes(service) == []
    assert content_of(service, file_id) == b"slow"
    assert_clean(service)


def test_a_store_that_does_not_answer_keeps_the_row_hidden(backend, monkeypatch):
    service = backend.service
    file_id = upload(service).id
    backend.remove_object(file_id)
    with pytest.raises(NotFound):
        service.content(file_id)
    backend.clock.advance(ORPHAN_GRACE)

    def unreachable(key):
        raise StorageUnavailable("S3 endpoint URL is unreachable")

    monkeypatch.setattr(service.blobs, "head", unreachable)
    assert listed(service) == []  # the listing itself still answers
    assert row_of(service, file_id) is not None and notes(service) == [file_id]
    monkeypatch.undo()
    assert listed(service) == [] and row_of(service, file_id) is None
    assert_clean(service)


def test_a_hidden_row_deleted_by_anyone_leaves_no_note(backend):
    service = backend.service
    ours, theirs = upload(service).id, upload(service).id
    for file_id in (ours, theirs):
        backend.remove_object(file_id)
        with pytest.raises(NotFound):
            service.content(file_id)
    assert notes(service) == sorted([ours, theirs])
    assert service.delete(ours)["deleted"] is True
    assert notes(service) == [theirs]
    with plain(service) as db:  # a seed server deletes only its row
        db.execute("DELETE FROM openai_files WHERE id = ?", [theirs])
    assert listed(service) == [] and notes(service) == []
    assert_clean(service)


# --- expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", PURPOSES)
def test_default_expiry(backend, purpose):
    service = backend.service
    created = upload(service, purpose=purpose)
    row = row_of(service, created.id)
    if purpose == "batch":
        assert created.to_openai()["expires_at"] == EPOCH + EXPIRES_AFTER_MAX == EPOCH + 30 * 86400
        assert row["expires_at"] == EPOCH + 2592000
    else:
        assert created.to_openai()["expires_at"] is None
        assert service.retrieve(created.id).to_openai()["expires_at"] is None
        assert row["expires_at"] == EPOCH + NO_EXPIRY_SECONDS == EPOCH + 108864000
    assert_clean(service)


@pytest.mark.parametrize("expires_after", [{"anchor": "created_at", "seconds": 7200}, 7200, "7200", 7200.0])
def test_explicit_expires_after(backend, expires_after):
    created = upload(backend.service, purpose="assistants", expires_after=expires_after)
    assert created.to_openai()["expires_at"] == EPOCH + 7200
    assert row_of(backend.service, created.id)["expires_at"] == EPOCH + 7200
    assert_clean(backend.service)


@pytest.mark.parametrize("seconds", [3600, 2592000])
def test_expires_after_bounds_are_accepted(backend, seconds):
    created = upload(backend.service, purpose="batch", expires_after={"anchor": "created_at", "seconds": seconds})
    assert created.to_openai()["expires_at"] == EPOCH + seconds
    assert_clean(backend.service)


@pytest.mark.parametrize("expires_after, message", [
    ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor: Input should be 'created_at'"),
    ({"seconds": 3600}, "expires_after.anchor: Input should be 'created_at'"),
    ({"anchor": "created_at", "seconds": "soon"}, "expires_after.seconds: Input should be a valid integer"),
    ({"anchor": "created_at", "seconds": 3600.5}, "expires_after.seconds: Input should be a valid integer"),
    ({"anchor": "created_at", "seconds": None}, "expires_after.seconds: Input should be a valid integer"),
    ({"anchor": "created_at", "seconds": True}, "expires_after.seconds: Input should be a valid integer"),
    ({"anchor": "created_at", "seconds": 3599}, "greater than or equal to 3600"),
    ({"anchor": "created_at", "seconds": -5}, "greater than or equal to 3600"),
    ({"anchor": "created_at", "seconds": 2592001}, "less than or equal to 2592000"),
    ({"anchor": "created_at", "seconds": 3600, "extra": 1}, "expires_after: unknown field 'extra'"),
    (10, "greater than or equal to 3600"),
])
def test_bad_expires_after_is_rejected_and_nothing_is_written(backend, expires_after, message):
    with pytest.raises(InvalidRequest) as raised:
        upload(backend.service, purpose="batch", expires_after=expires_after)
    assert message in str(raised.value)
    assert raised.value.param == "expires_after"
    assert raised.value.http_status == 400
    assert backend.object_keys() == set()
    assert backend.service.metadata.all_files() == []
    assert_clean(backend.service)


def test_file_expires_exactly_at_its_expiry(backend):
    service = backend.service
    file_id = upload(service, expires_after=3600).id
    backend.clock.advance(3599)
    assert service.retrieve(file_id).id == file_id
    assert [f.id for f in service.list().data] == [file_id]
    backend.clock.advance(1)
    assert service.list().data == []
    assert_clean(service)


@pytest.mark.parametrize("operation", ["retrieve", "content", "read", "delete"])
def test_expired_file_is_unlisted_unreadable_and_removed(backend, operation):
    service = backend.service
    expired = upload(service, b"old", "old.txt", "batch").id
    live = upload(service, b"new", "new.txt", "assistants").id
    backend.clock.advance(EXPIRES_AFTER_MAX)
    assert [f.id for f in service.list().data] == [live]
    assert [f.id for f in service.list(purpose="batch").data] == []
    call = {"retrieve": lambda: service.retrieve(expired), "content": lambda: service.content(expired),
            "read": lambda: service.read(expired, 0, 10), "delete": lambda: service.delete(expired)}[operation]
    with pytest.raises(NotFound, match=expired):
        call()
    # Touching it removed it physically: object and row are gone.
    assert backend.object_body(expired) is None
    assert row_of(service, expired) is None
    assert backend.object_keys() == {live}
    assert content_of(service, live) == b"new"
    assert_clean(service)


def test_gc_removes_expired_files_and_returns_their_ids(backend):
    service = backend.service
    short = upload(service, b"1", "short.txt", "assistants", expires_after=3600).id
    batch = upload(service, b"2", "batch.jsonl", "batch").id
    long_lived = upload(service, b"3", "long.txt", "assistants", expires_after=EXPIRES_AFTER_MAX).id
    forever = upload(service, b"4", "forever.txt", "vision").id
    assert service.gc() == []
    backend.clock.advance(3600)
    assert service.gc() == [short]
    backend.clock.advance(EXPIRES_AFTER_MAX)
    assert sorted(service.gc()) == sorted([batch, long_lived])
    assert service.gc() == []
    assert backend.object_keys() == {forever}
    assert [row["id"] for row in service.metadata.all_files()] == [forever]
    assert [f.id for f in service.list().data] == [forever]
    assert_clean(service)


def test_gc_removes_an_expired_row_whose_object_is_already_gone(backend):
    service = backend.service
    file_id = upload(service, purpose="batch").id
    backend.remove_object(file_id)
    backend.clock.advance(EXPIRES_AFTER_MAX)
    assert service.gc() == [file_id]
    assert service.metadata.all_files() == []
    assert_clean(service)


# --- listing ---------------------------------------------------------------------------------


def test_purpose_filter(backend):
    service = backend.service
    by_purpose: dict[str, list[str]] = {}
    for purpose in ("assistants", "batch", "assistants", "vision"):
        by_purpose.setdefault(purpose, []).append(upload(service, purpose=purpose).id)
        backend.clock.advance(1)
    for purpose, ids in by_purpose.items():
        page = service.list(purpose=purpose, order="asc")
        assert [f.id for f in page.data] == ids
        assert all(f.purpose == purpose for f in page.data)
    assert service.list(purpose="evals").data == []
    with pytest.raises(InvalidPurpose):
        service.list(purpose="nonsense")
    assert_clean(service)


def test_limit_and_order(backend):
    service = backend.service
    ids = []
    for n in range(5):
        ids.append(upload(service, f"{n}".encode(), f"{n}.txt").id)
        backend.clock.advance(1)
    newest_first = list(reversed(ids))
    assert [f.id for f in service.list().data] == newest_first  # desc by default
    assert [f.id for f in service.list(order="desc").data] == newest_first
    assert [f.id for f in service.list(order="asc").data] == ids

    page = service.list(limit=2).to_openai()
    assert [f["id"] for f in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (newest_first[0], newest_first[1])

    page = service.list(limit=2, order="asc").to_openai()
    assert [f["id"] for f in page["data"]] == ids[:2]
    assert (page["first_id"], page["last_id"]) == (ids[0], ids[1])

    assert service.list(limit=5).has_more is False
    assert service.list(limit=4).has_more is True
    assert len(service.list(limit=10000).data) == 5
    assert_clean(service)


@pytest.mark.parametrize("kwargs, param", [
    ({"limit": 0}, "limit"), ({"limit": 10001}, "limit"), ({"limit": -1}, "limit"),
    ({"limit": "5"}, "limit"), ({"limit": True}, "limit"),
    ({"order": "sideways"}, "order"),
    ({"after": "file-" + "f" * 32}, "after"), ({"after": "garbage"}, "after"),
])
def test_bad_list_arguments_are_rejected(backend, kwargs, param):
    upload(backend.service)
    with pytest.raises(InvalidRequest) as raised:
        backend.service.list(**kwargs)
    assert raised.value.param == param
    assert param in str(raised.value)
    assert_clean(backend.service)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_after_pagination_gives_disjoint_pages(backend, order):
    service = backend.service
    ids = []
    for _ in range(7):
        ids.append(upload(service, purpose="user_data").id)
        backend.clock.advance(1)
    expected = ids if order == "asc" else ids[::-1]
    first = service.list(limit=3, order=order)
    second = service.list(limit=3, order=order, after=first.data[-1].id)
    third = service.list(limit=3, order=order, after=second.data[-1].id)
    assert [f.id for f in first.data] == expected[0:3] and first.has_more
    assert [f.id for f in second.data] == expected[3:6] and second.has_more
    assert [f.id for f in third.data] == expected[6:] and not third.has_more
    assert service.list(limit=3, order=order, after=expected[-1]).to_openai()["data"] == []
    assert_clean(service)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_many_files_created_in_one_second_page_without_gaps_or_repeats(backend, order):
    service = backend.service  # the clock stands still: every file has the same created_at
    created = [upload(service, f"{n}".encode(), f"same-{n}.txt").id for n in range(25)]
    seen: list[str] = []
    pages, after = 0, None
    while pages < 10:  # 7 are enough; a cursor that goes round in circles must fail, not hang
        page = service.list(limit=4, order=order, after=after)
        pages += 1
        assert len(page.data) == (4 if page.has_more else 1)
        seen.extend(f.id for f in page.data)
        if not page.has_more:
            break
        after = page.data[-1].id
    assert pages == 7
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == set(created)
    # Ties on created_at are broken by id, in the listing's direction.
    assert seen == sorted(created, reverse=order == "desc")
    assert list(service.iter_all(order=order)) == service.list(order=order).data
    assert_clean(service)


def test_listing_with_a_purpose_filter_pages_too(backend):
    service = backend.service
    wanted = []
    for n in range(9):
        file = upload(service, purpose="evals" if n % 3 else "vision")
        if file.purpose == "evals":
            wanted.append(file.id)
    seen: list[str] = []
    after = None
    for _ in range(10):
        page = service.list(limit=2, order="asc", purpose="evals", after=after)
        seen.extend(f.id for f in page.data)
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == sorted(wanted)
    assert_clean(service)


# --- check -----------------------------------------------------------------------------------


def test_check_reports_rows_without_objects_and_objects_without_rows(backend):
    service = backend.service
    whole = upload(service, b"whole", "whole.txt").id
    rowless = upload(service, b"rowless", "rowless.txt").id
    bodiless = upload(service, b"bodiless", "bodiless.txt").id
    assert_clean(service)

    service.metadata.delete(rowless, viewer=OPERATOR)
    backend.remove_object(bodiless)
    stray = "file-" + "a" * 32
    backend.plant_object(stray, b"planted by someone else")
    backend.plant_object("notes.txt", b"not a file id: not ours, not reported")
    report = service.check()
    assert not report.clean
    assert report.rows_without_objects == [bodiless]
    assert report.objects_without_rows == sorted([rowless, stray])
    assert report.size_mismatches == []
    assert report.to_dict()["clean"] is False
    assert whole not in report.rows_without_objects + report.objects_without_rows

    # Put things right: the check agrees again.
    backend.remove_object(rowless)
    backend.remove_object(stray)
    service.metadata.delete(bodiless, viewer=OPERATOR)
    assert_clean(service)


def test_check_warns_about_purposes_outside_the_configured_set(backend):
    wide = backend.service
    for purpose in ("assistants", "batch", "user_data", "fine-tune", "fine-tune"):
        upload(wide, purpose=purpose)
    assert wide.check().warnings == []
    narrow = FileService(wide.metadata, wide.blobs, purposes=("assistants", "batch"), clock=backend.clock)
    report = narrow.check()
    assert report.clean  # consistent: a warning is not a disagreement
    assert len(report.warnings) == 1
    assert "fine-tune (2), user_data (1)" in report.warnings[0]
    assert "(assistants, batch)" in report.warnings[0]
    assert report.to_dict()["warnings"] == report.warnings
    assert_clean(narrow)


def test_check_reports_a_size_that_differs(backend):
    service = backend.service
    file_id = upload(service, b"twelve bytes").id
    backend.plant_object(file_id, b"now it is longer than before")
    assert service.check().size_mismatches == [file_id]
    backend.plant_object(file_id, b"twelve bytes")
    assert_clean(service)
