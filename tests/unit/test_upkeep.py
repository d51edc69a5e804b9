"""Rebuild, repair and the expiry timer (upkeep.py) on real stores: the embedded local store and a
bucket of the real moto server. Damage is done behind the service's back; ages come from the
service's clock, set against the times the store itself records (S3's LastModified, a file's mtime).
"""

import io
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from s3filesfs import config, upkeep
from s3filesfs.access import OPERATOR
from s3filesfs.errors import StorageUnavailable
from s3filesfs.files import ORPHAN_GRACE, FileService, object_metadata, open_service
from s3filesfs.metadata import MetadataStore
from s3filesfs.model import FileObject, expires_at_for, new_file_id
from s3filesfs.processes import this_process
from tests.helpers import wait_for
from tests.unit.conftest import ENGINES, metadata_target, server_service
from tests.unit.stores import EPOCH, Clock, MetadataTarget, assert_clean

MIB = 1024 * 1024


@pytest.fixture(params=ENGINES)
def server_backend(request, s3_server, tmp_path, clock):
    """A bucket of the real moto server, with the metadata on each engine."""
    backend = server_service(s3_server, clock, metadata_target(request.param, request, tmp_path))
    yield backend
    backend.service.metadata.close()


@pytest.fixture(params=["local", "moto_server"])
def store(request, tmp_path, clock):
    """The local store or a bucket of the real moto server, with the metadata on SQLite (whose rows
    ``full_rows`` compares column by column)."""
    if request.param == "local":
        yield request.getfixturevalue("local_backend")
        return
    backend = server_service(request.getfixturevalue("s3_server"), clock, MetadataTarget.sqlite(tmp_path / "files.db"))
    yield backend
    backend.service.metadata.close()


def create(service, body=b"hello", filename="hello.txt", purpose="assistants", **kwargs) -> FileObject:
    return service.create(io.BytesIO(body), filename, purpose, **kwargs)


def write_as_the_mount_does(service, filename, purpose, body: bytes, created_at: int) -> FileObject:
    """The mount and the daemon: begin (created_at = when writing began), write in pieces, commit."""
    pending = service.begin(filename, purpose, created_at=created_at)
    for start in range(0, len(body), 64 * 1024):
        pending.write(body[start:start + 64 * 1024])
    return pending.commit()


def plant_labelled(service, file: FileObject, body: bytes, metadata: dict | None = None) -> None:
    """An object written with our metadata (or the given one) and no row."""
    writer = service.blobs.writer(file.id, object_metadata(file) if metadata is None else metadata)
    writer.write(body)
    writer.commit()


def full_rows(db_path) -> list[tuple]:
    """Every column of every row, as plain sqlite3 sees them (the access columns included)."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT * FROM openai_files ORDER BY id").fetchall()


def on_new_database(service, path) -> FileService:
    """The same store, with a database that starts empty (the old one lost)."""
    return FileService(MetadataStore(path), service.blobs, clock=service.clock)


def run_rebuild(service, **options) -> tuple[Counter, list[upkeep.Action]]:
    actions: list[upkeep.Action] = []
    counts = upkeep.rebuild(service, actions.append, **options)
    return counts, actions


def run_repair(service, **options) -> tuple[Counter, list[upkeep.Action]]:
    actions: list[upkeep.Action] = []
    counts = upkeep.repair(service, service.check(), actions.append, **options)
    return counts, actions


def by_id(actions) -> dict[str, tuple[str, str]]:
    return {action.id: (action.action, action.detail) for action in actions}


# --- rebuild ---------------------------------------------------------------------------------


def test_rebuild_brings_every_row_back_as_it_was(store, tmp_path):
    service, clock = store.service, store.clock
    written = [
        create(service, b"alpha\n", "a.txt", "assistants"),
        create(service, b'{"custom_id": 1}\n', "lot 100% ü é 🙂.jsonl", "batch"),  # expires in 30 days
        create(service, b"short", "short-lived.txt", "user_data", expires_after=3600),
        write_as_the_mount_does(service, "through the mount.bin", "vision", b"\x00\x01" * 100_000, EPOCH - 30),
        write_as_the_mount_does(service, "expired already.txt", "evals", b"old", EPOCH - 200 * 86400),
    ]
    clock.advance(7)
    written.append(create(service, b"", "empty", "fine-tune"))
    if store.name == "moto_server":  # a multipart upload carries the metadata too
        written.append(create(service, bytes(9 * MIB), "big.bin", "batch"))
    before = full_rows(service.metadata.path)
    assert len(before) == len(written)

    rebuilt = on_new_database(service, tmp_path / "new.db")
    counts, actions = run_rebuild(rebuilt)  # a dry run: says what it would do, does nothing
    assert sorted(a.id for a in actions) == sorted(f.id for f in written)
    assert {a.action for a in actions} == {"would register"}
    assert {a.id: a.file for a in actions} == {f.id: f for f in written}
    assert counts["objects"] == len(written) and counts["would register"] == len(written)
    assert full_rows(tmp_path / "new.db") == []

    counts, actions = run_rebuild(rebuilt, apply=True)
    assert counts["register"] == len(written) and counts["present"] == 0
    assert full_rows(tmp_path / "new.db") == before  # every column of every row, as it was
    assert_clean(rebuilt)

    counts, actions = run_rebuild(rebuilt, apply=True)  # again: nothing to do, nothing changes
    assert actions == []
    assert counts["present"] == len(written) and counts["register"] == 0
    assert full_rows(tmp_path / "new.db") == before


def test_rebuild_reports_seed_objects_and_registers_them_only_when_told_how(store, tmp_path):
    service = store.service
    ours = create(service, b"ours", "ours.txt", "assistants")
    seed_id = new_file_id()
    store.plant_object(seed_id, b"written by the seed, no metadata")
    store.plant_object("notes.txt", b"not a file id: not ours, never touched")
    rebuilt = on_new_database(service, tmp_path / "new.db")

    counts, actions = run_rebuild(rebuilt, apply=True)
    assert by_id(actions) == {ours.id: ("register", "from its metadata"),
                              seed_id: ("unlabelled", "no metadata (32 bytes)")}
    assert counts["objects"] == 2 and counts["unlabelled"] == 1
    assert not rebuilt.has_row(seed_id)

    counts, actions = run_rebuild(rebuilt, apply=True, unlabelled_purpose="user_data")
    assert [(a.action, a.id) for a in actions] == [("register", seed_id)]
    assert counts["present"] == 1
    stored = rebuilt.describe_object(seed_id)
    assert stored is not None and stored.modified is not None
    row = rebuilt.metadata.get(seed_id, viewer=OPERATOR)
    assert row is not None
    created_at = int(stored.modified)
    assert abs(created_at - time.time()) < 120  # when the store says it was written
    assert {k: row[k] for k in ("filename", "purpose", "bytes", "created_at", "expires_at")} == {
        "filename": seed_id, "purpose": "user_data", "bytes": 32, "created_at": created_at,
        "expires_at": expires_at_for("user_data", created_at, None)}
    assert store.object_body("notes.txt") is not None
    assert_clean(rebuilt)


def test_rebuild_leaves_unreadable_metadata_and_uploads_under_way_alone(store, tmp_path):
    service, clock = store.service, store.clock
    file = FileObject(new_file_id(), "x.txt", "assistants", 3, EPOCH, expires_at_for("assistants", EPOCH, None))
    plant_labelled(service, file, b"abc", {**object_metadata(file), "purpose": "not-a-purpose"})
    half = FileObject(new_file_id(), "y.txt", "assistants", 3, EPOCH, None)
    plant_labelled(service, half, b"abc", {"filename": "y.txt"})
    # An upload whose writer has sent the object and not yet written the row.
    committing = FileObject(new_file_id(), "z.txt", "batch", 3, EPOCH, EPOCH + 3600)
    service.metadata.intent_add(committing.id, this_process(), int(clock()))
    plant_labelled(service, committing, b"abc")

    counts, actions = run_rebuild(service, apply=True)
    found = by_id(actions)
    assert found[file.id] == ("unreadable", "x-amz-meta-purpose 'not-a-purpose' is not a purpose")
    assert found[half.id] == ("unreadable", "x-amz-meta-purpose is missing")
    assert found[committing.id][0] == "under way"
    assert counts["register"] == 0
    assert [row["id"] for row in service.metadata.all_files()] == []
    service.metadata.intent_remove(committing.id)
    counts, actions = run_rebuild(service, apply=True)
    assert by_id(actions)[committing.id] == ("register", "from its metadata")
    assert (service.metadata.get(committing.id, viewer=OPERATOR) or {}).get("expires_at") == EPOCH + 3600


def test_rebuild_streams_the_listing_with_a_bounded_window_of_heads(server_backend, tmp_path):
    service = server_backend.service
    count, workers = 150, 3
    client = server_backend.client
    ids = [new_file_id() for _ in range(count)]
    for file_id in ids:
        client.put_object(Bucket=server_backend.bucket, Key=file_id, Body=b"x")
    listed = [0]
    position: dict[str, int] = {}
    ahead, in_flight, most_in_flight = [0], [0], [0]
    lock = threading.Lock()
    objects, describe = service.objects, service.describe_object

    def counting_objects():
        for info in objects():
            listed[0] += 1
            position[info.key] = listed[0]
            yield info

    def counting_describe(file_id):
        with lock:
            ahead[0] = max(ahead[0], listed[0] - position[file_id])  # how far the listing ran ahead
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        try:
            time.sleep(0.002)
            return describe(file_id)
        finally:
            with lock:
                in_flight[0] -= 1

    service.objects = counting_objects  # type: ignore[method-assign]
    service.describe_object = counting_describe  # type: ignore[method-assign]
    counts, actions = run_rebuild(service, workers=workers)
    assert counts["objects"] == counts["checked"] == counts["unlabelled"] == count
    assert sorted(a.id for a in actions) == sorted(ids)
    assert most_in_flight[0] <= workers
    assert ahead[0] <= workers * 4  # never more than the window held, whatever the bucket holds


# --- repair ----------------------------------------------------------------------------------


def test_repair_puts_right_what_is_older_than_the_grace_and_nothing_younger(store, tmp_path):
    service, clock = store.service, store.clock
    now = time.time()
    clock.now = now - 1000  # written long ago, as far as the rows are concerned
    healthy = create(service, b"fine", "fine.txt")
    row_gone = create(service, b"lost", "lost.txt")
    store.remove_object(row_gone.id)
    unregistered = create(service, b"no row", "no row.txt", "batch")
    unregistered_row = service.metadata.get(unregistered.id, viewer=OPERATOR)
    service.metadata.delete(unregistered.id, viewer=OPERATOR)
    seed_id = new_file_id()
    store.plant_object(seed_id, b"seed")
    clock.now = now + 390  # a row the seed wrote "just now" at the second repair below
    young_row = create(service, b"arriving", "arriving.txt")
    store.remove_object(young_row.id)

    # Now: the objects (written a moment ago, as the store says) are young; so is young_row.
    clock.now = time.time()
    counts, actions = run_repair(service)
    found = by_id(actions)
    assert found.pop(row_gone.id) == ("removed row", "its object is gone")
    assert found.pop(young_row.id)[0] == "left"
    assert found.pop(unregistered.id) == ("left", "object younger than 300 s: its row may still be on its way")
    assert found.pop(seed_id)[0] == "left"
    assert found == {}
    assert (counts["removed row"], counts["left"]) == (1, 3)
    assert store.object_body(unregistered.id) == b"no row" and store.object_body(seed_id) == b"seed"
    assert service.has_row(young_row.id)

    # Past the grace for the objects; young_row is 10 s old.
    clock.now = time.time() + ORPHAN_GRACE + 100
    counts, actions = run_repair(service)
    found = by_id(actions)
    assert found.pop(unregistered.id) == ("registered", "batch/no row.txt, from its metadata")
    assert found.pop(seed_id) == ("left", "it carries no metadata (written by the seed?); --delete-orphans deletes "
                                          "it, `s3filesfs rebuild --unlabelled-purpose` registers it")
    assert found.pop(young_row.id)[0] == "left"
    assert found == {}
    assert service.metadata.get(unregistered.id, viewer=OPERATOR) == unregistered_row  # as it was

    counts, actions = run_repair(service, delete_orphans=True)
    assert by_id(actions) == {seed_id: ("deleted object", "4 bytes without a row"),
                              young_row.id: by_id(actions)[young_row.id]}
    assert store.object_body(seed_id) is None

    clock.advance(ORPHAN_GRACE)
    counts, actions = run_repair(service)
    assert by_id(actions) == {young_row.id: ("removed row", "its object is gone")}
    assert service.retrieve(healthy.id) == healthy
    assert_clean(service)
    counts, actions = run_repair(service)
    assert actions == [] and sum(counts.values()) == 0


def test_repair_aborts_old_open_uploads_and_leaves_those_under_way(server_backend):
    service, clock, client, bucket = (server_backend.service, server_backend.clock, server_backend.client,
                                      server_backend.bucket)
    clock.now = time.time()
    # A writer that crashed with its database (no record of it left): its parts stay, and are billed.
    stale_id = new_file_id()
    stale = client.create_multipart_upload(Bucket=bucket, Key=stale_id)["UploadId"]
    client.upload_part(Bucket=bucket, Key=stale_id, UploadId=stale, PartNumber=1, Body=bytes(5 * MIB))
    # A writer at work right now, in this process.
    live = service.begin("big.bin", "batch")
    live.write(bytes(9 * MIB))
    assert live.begun
    # What a dead process's upload left: the object, and the record of the upload.
    dead_id = new_file_id()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = this_process().rsplit(":", 2)[0] + f":{finished.stdout.strip()}:1"
    service.metadata.intent_add(dead_id, dead_owner, int(clock()))
    plant_labelled(service, FileObject(dead_id, "d.txt", "assistants", 1, int(clock()), None), b"d")

    def open_uploads():
        return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    # Ages are measured against the time the store gives (moto gives every upload the same
    # Initiated, in 2010): first just after it, then past the grace.
    initiated = next(u.initiated for u in service.open_uploads() if u.key == stale_id)
    clock.now = initiated + 10
    counts, actions = run_repair(service, upload_grace=ORPHAN_GRACE)
    found = by_id(actions)
    assert found.pop(dead_id) == ("abandoned", "what an interrupted upload left, removed")
    assert found.pop(stale_id)[0] == "left"  # begun less than the grace ago
    assert found == {}
    assert open_uploads() == sorted([stale_id, live.id])
    assert server_backend.object_body(dead_id) is None

    clock.advance(ORPHAN_GRACE + 60)
    counts, actions = run_repair(service, upload_grace=ORPHAN_GRACE)
    assert by_id(actions) == {stale_id: ("aborted upload", by_id(actions)[stale_id][1])}
    assert open_uploads() == [live.id]  # recorded as under way: never touched, however old
    file = live.commit()
    assert service.retrieve(file.id).bytes == 9 * MIB
    assert_clean(service)


# --- the lease -------------------------------------------------------------------------------


def test_a_lease_has_one_holder_until_it_lapses_or_is_released(metadata_db):
    a, b = MetadataStore(metadata_db.location), MetadataStore(metadata_db.location)
    assert a.take_lease("expiry", "A", 100.0, 10)
    assert not b.take_lease("expiry", "B", 105.0, 10)
    assert a.take_lease("expiry", "A", 105.0, 10)  # renewed: until 115
    assert not b.take_lease("expiry", "B", 114.5, 10)
    assert b.take_lease("expiry", "B", 115.5, 10)  # lapsed: taken over
    assert not a.take_lease("expiry", "A", 116.0, 10)
    a.release_lease("expiry", "A")  # not the holder: nothing happens
    assert not a.take_lease("expiry", "A", 117.0, 10)
    b.release_lease("expiry", "B")
    assert a.take_lease("expiry", "A", 117.0, 10)
    assert a.lease("expiry") == {"name": "expiry", "holder": "A", "expires_at": 127.0}
    assert b.take_lease("other", "B", 117.0, 10)  # leases are by name


@pytest.mark.parametrize("taken_before", [False, True], ids=["new", "lapsed"])
def test_of_many_contenders_exactly_one_takes_the_lease(metadata_db, taken_before):
    if taken_before:
        assert MetadataStore(metadata_db.location).take_lease("expiry", "old", 0.0, 1)
    stores = [MetadataStore(metadata_db.location) for _ in range(8)]
    start = threading.Barrier(len(stores))
    won: list[str] = []

    def contend(number: int) -> None:
        start.wait()
        if stores[number].take_lease("expiry", f"holder-{number}", 1000.0, 60):
            won.append(f"holder-{number}")

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert (stores[0].lease("expiry") or {}).get("holder") == won[0]


# --- the expiry timer ------------------------------------------------------------------------


def expired(service, name="gone.txt") -> FileObject:
    """A file whose expiry (an hour after it was written, two hours ago) has passed by the
    service's clock."""
    pending = service.begin(name, "user_data", expires_after=3600, created_at=int(service.clock()) - 7200)
    pending.write(b"old")
    return pending.commit()


def test_the_timer_removes_expired_files_within_its_interval(server_backend):
    service = server_backend.service
    keep = create(service, b"keep", "keep.txt", expires_after=3600)
    timer = upkeep.ExpiryTimer(service, 0.2).start()
    try:
        doomed = [expired(service, f"gone-{n}.txt") for n in range(3)]
        planted = time.monotonic()
        wait_for(lambda: not {f.id for f in doomed} & server_backend.object_keys(), 10, "expired objects to go")
        assert time.monotonic() - planted < 0.2 + 2.0
        assert all(not service.has_row(f.id) for f in doomed)
        wait_for(lambda: timer.counts["removed"] == 3, 5, "the removals to be counted")
    finally:
        timer.stop()
    assert server_backend.object_body(keep.id) == b"keep"
    assert (service.metadata.lease(upkeep.EXPIRY_LEASE) or {}).get("expires_at") == 0  # handed on at stop
    assert_clean(service)


def test_two_timers_on_one_database_never_both_sweep(server_backend):
    first = server_backend.service
    first.clock = time.time
    second = FileService(MetadataStore(first.metadata.location), first.blobs)  # another connection, as another process
    doomed = {expired(first, f"gone-{n}.txt").id for n in range(40)}
    sweeps: dict[str, list[tuple[float, float]]] = {"first": [], "second": []}

    def recorded(name, gc):
        def sweep(before_each=None):
            began = time.monotonic()
            try:
                return gc(before_each=before_each)
            finally:
                sweeps[name].append((began, time.monotonic()))
        return sweep

    first.gc = recorded("first", first.gc)  # type: ignore[method-assign]
    second.gc = recorded("second", second.gc)  # type: ignore[method-assign]
    timers = [upkeep.ExpiryTimer(first, 0.05), upkeep.ExpiryTimer(second, 0.05)]
    for timer in timers:
        timer.start()
    try:
        wait_for(lambda: not doomed & server_backend.object_keys(), 20, "the expired files to go")
        more = {expired(first, f"later-{n}.txt").id for n in range(5)}
        wait_for(lambda: not more & server_backend.object_keys(), 20, "the later ones to go")
        wait_for(lambda: sum(t.counts["removed"] for t in timers) == 45, 5, "the removals to be counted")
    finally:
        # Both stop sweeping before either hands the lease on: otherwise the second could take
        # the lease the first just released and make one (empty) sweep before its own stop.
        for timer in timers:
            timer._stop.set()
        for timer in timers:
            timer.stop()
    # One timer held the lease all along: the other only ever found it taken.
    sweepers = [name for name, ran in sweeps.items() if ran]
    assert len(sweepers) == 1, sweeps
    idle = timers[1] if sweepers == ["first"] else timers[0]
    assert idle.counts["sweeps"] == 0 and idle.counts["skipped"] > 0
    assert sum(t.counts["removed"] for t in timers) == 45  # each file removed once
    assert_clean(first)


def test_the_lease_passes_on_when_its_holder_stops_or_lapses(server_backend):
    service, clock = server_backend.service, server_backend.clock
    other = FileService(MetadataStore(service.metadata.location), service.blobs, clock=clock)
    a, b = upkeep.ExpiryTimer(service, 60), upkeep.ExpiryTimer(other, 60)
    one = expired(service, "one.txt")
    assert a.sweep() == [one.id]
    two = expired(service, "two.txt")
    assert b.sweep() is None  # a holds the lease
    clock.advance(a.lease_seconds - 1)
    assert b.sweep() is None
    assert a.sweep() == [two.id]  # a renews it
    three = expired(service, "three.txt")
    clock.advance(a.lease_seconds + 1)  # a went silent (a crash): its lease lapses
    assert b.sweep() == [three.id]
    assert a.sweep() is None
    four = expired(service, "four.txt")
    b.stop()  # hands it on at once
    assert a.sweep() == [four.id]
    assert (a.counts["removed"], b.counts["removed"]) == (3, 1)
    assert_clean(service)


def test_a_sweep_stops_at_once_when_its_lease_is_lost(server_backend):
    service, clock = server_backend.service, server_backend.clock
    other = FileService(MetadataStore(service.metadata.location), service.blobs, clock=clock)
    timer = upkeep.ExpiryTimer(service, 60)
    doomed = [expired(service, f"gone-{n}.txt") for n in range(5)]
    asked = []
    renew = timer._hold

    def hold_then_lose() -> bool:
        asked.append(1)
        if len(asked) == 3:  # the lease lapsed during the sweep, and another process took it
            clock.advance(timer.lease_seconds + 1)
            assert other.hold_lease(upkeep.EXPIRY_LEASE, "someone else", 600)
        return renew()

    timer._hold = hold_then_lose  # type: ignore[method-assign]
    removed = timer.sweep()
    assert removed is not None and len(removed) == 1  # the first removal only
    assert len([f for f in doomed if service.has_row(f.id)]) == 4


def test_a_repair_that_fails_is_reported_and_the_rest_still_done(own_s3_server, tmp_path):
    bucket = own_s3_server.new_bucket_name()
    settings = config.load(flags=own_s3_server.settings_values(bucket, db_path=str(tmp_path / "files.db")))
    service = open_service(settings)
    service.clock = Clock(time.time() - 1000)
    lost = [create(service, b"lost", f"lost-{n}.txt") for n in range(2)]
    for file in lost:
        service.blobs.delete(file.id)
    service.clock = Clock(time.time())
    found = service.check()
    assert found.rows_without_objects == sorted(f.id for f in lost)
    own_s3_server.stop()  # the store goes away between the check and the repair
    actions: list[upkeep.Action] = []
    counts = upkeep.repair(service, found, actions.append)
    failed = [a for a in actions if a.action == "failed"]
    assert [a.id for a in failed] == [*sorted(f.id for f in lost), ""]  # each row tried, then the uploads
    assert all(isinstance(a.error, StorageUnavailable) and a.error.exit_code == 3 for a in failed)
    assert "is unreachable" in failed[0].detail and failed[-1].detail.startswith("listing open uploads: ")
    assert counts["failed"] == 3 and counts["removed row"] == 0
    assert all(service.has_row(f.id) for f in lost)  # nothing removed on a guess
