"""The mount's rules that need no kernel: its config section, path parsing and the names it shows.

The behaviour through a real mount is in ``tests/fs``; these pin the rules themselves.
"""

import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from s3filesfs import config
from s3filesfs.access import OPERATOR
from s3filesfs.errors import ConfigError, NameTooLong, NotFound, StorageError, errno_of
from s3filesfs.fs.namespace import decorated_name, parse, safe_name, shown_names
from s3filesfs.model import PURPOSES, FileObject, new_file_id


def file(name, created_at=1000, purpose="assistants", file_id=None):
    return FileObject(id=file_id or new_file_id(), filename=name, purpose=purpose, bytes=1,
                      created_at=created_at, expires_at=None)


# --- config ----------------------------------------------------------------------------------


def test_mount_defaults_live_under_the_data_dir(tmp_path):
    settings = config.load(flags={"data_dir": str(tmp_path)})
    assert settings.staging_dir == tmp_path / "staging"
    assert settings.mount_log_path == tmp_path / "mount.log"
    assert (settings.mount_staging_max_mb, settings.mount_refresh_seconds) == (10240, 1.0)


def test_mount_section_env_and_flags(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("mount:\n  staging_dir: ~/stage\n  staging_max_mb: 64\n  refresh_seconds: 0.5\n")
    settings = config.load(path)
    assert settings.staging_dir == Path.home() / "stage"
    assert (settings.mount_staging_max_mb, settings.mount_refresh_seconds) == (64, 0.5)
    monkeypatch.setenv("S3FILESFS_MOUNT_STAGING_MAX_MB", "32")
    assert config.load(path).mount_staging_max_mb == 32
    assert config.load(path, {"mount_staging_max_mb": 16}).mount_staging_max_mb == 16


@pytest.mark.parametrize("text, message", [
    ("mount:\n  staging_max_mb: lots\n", "mount.staging_max_mb"),
    ("mount:\n  staging_max_mb: 0\n", "mount.staging_max_mb"),
    ("mount:\n  refresh_seconds: soon\n", "mount.refresh_seconds must be a number"),
    ("mount:\n  stagingdir: /x\n", "mount.staging_dir"),  # a typo gets a did-you-mean
])
def test_bad_mount_settings_name_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        config.load(path)
    assert message in str(raised.value)


# --- paths -----------------------------------------------------------------------------------


def test_parse_kinds():
    assert parse("/", PURPOSES).kind == "root"
    assert parse("/batch", PURPOSES).kind == "folder"
    assert parse("/by-id", PURPOSES).kind == "by-id"
    assert parse("/index.jsonl", PURPOSES).kind == "index"
    assert parse("/batch/a.jsonl", PURPOSES) == parse("/batch/a.jsonl/", PURPOSES)
    assert parse("/by-id/file-x", PURPOSES).kind == "id"
    assert parse("/notes.txt", PURPOSES).kind == "top"  # never exists; writing there is refused


def test_parse_refuses_unknown_folders_and_long_names():
    with pytest.raises(NotFound):
        parse("/nope/a.txt", PURPOSES)
    with pytest.raises(NotFound):
        parse("/batch/a/b", PURPOSES)
    with pytest.raises(NameTooLong) as raised:
        parse("/batch/" + "é" * 128, PURPOSES)  # 256 bytes
    assert errno_of(raised.value) == errno.ENAMETOOLONG
    assert parse("/batch/" + "a" * 255, PURPOSES).kind == "file"


# --- shown names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, shown", [
    ("report.pdf", "report.pdf"),
    ("a/b.txt", "a\uff0fb.txt"),
    ("nul\0byte", "nul\u2400byte"),
])
def test_safe_name(name, shown):
    assert safe_name(file(name)) == shown


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 256])
def test_names_that_cannot_be_shown_become_the_id(name):
    f = file(name)
    assert safe_name(f) == f.id


def test_duplicates_oldest_keeps_the_plain_name():
    older, newer, newest = file("r.pdf", 10), file("r.pdf", 20), file("r.pdf", 30)
    shown = shown_names([older, newer, newest])
    assert shown[older.id] == "r.pdf"
    assert shown[newer.id] == f"r ({newer.id}).pdf"
    assert shown[newest.id] == f"r ({newest.id}).pdf"
    assert decorated_name("README", newer.id) == f"README ({newer.id})"


def test_a_plain_name_wins_over_a_decorated_one():
    older, newer = file("r.pdf", 10), file("r.pdf", 20)
    literal = file(f"r ({newer.id}).pdf", 30)  # someone named a file like a decorated duplicate
    shown = shown_names([older, newer, literal])
    assert shown[literal.id] == literal.filename and shown[newer.id] == newer.id


# --- the namespace on a real store --------------------------------------------------------------


def _namespace(tmp_path, metadata_db):
    from s3filesfs.files import open_service
    from s3filesfs.fs.namespace import Namespace

    settings = config.load(flags={"data_dir": str(tmp_path / "data"), **metadata_db.settings_values()})
    service = open_service(settings)
    return service, Namespace(service, refresh_seconds=0.2, scratch_dir=str(tmp_path))


def _create(service, name, purpose="assistants"):
    return service.create(io.BytesIO(name.encode()), name, purpose)


def test_lookups_and_listings_follow_the_duplicate_rule(tmp_path, metadata_db):
    service, namespace = _namespace(tmp_path, metadata_db)
    first, second = sorted([_create(service, "r.pdf"), _create(service, "r.pdf")], key=lambda f: (f.created_at, f.id))
    odd = _create(service, "a/b")
    plain = _create(service, "plain.txt")
    listed = dict(namespace.names("assistants"))
    assert set(listed) == {"r.pdf", f"r ({second.id}).pdf", "a\uff0fb", "plain.txt"}
    for name, file in listed.items():
        assert namespace.lookup("assistants", name).id == file.id
    assert namespace.find("assistants", f"r ({first.id}).pdf") is None  # the oldest is never decorated
    assert namespace.find("batch", "plain.txt") is None
    assert namespace.find("assistants", plain.id) is None  # a bare id is only shown for names that need it
    assert listed["a\uff0fb"].id == odd.id
    service.delete(first.id)
    namespace.removed(first.id)
    assert namespace.lookup("assistants", "r.pdf").id == second.id  # the next takes the plain name
    assert namespace.find("assistants", f"r ({second.id}).pdf") is None


def test_files_of_purposes_not_shown_stay_reachable_by_id(tmp_path, metadata_db):
    service, namespace = _namespace(tmp_path, metadata_db)
    hidden = _create(service, "x", purpose="evals")
    namespace.purposes = ("assistants",)
    assert namespace.by_id(hidden.id) == hidden
    index, size = namespace.index()
    lines = os.pread(index.fileno(), size, 0).decode().splitlines()
    assert [json.loads(line)["path"] for line in lines] == [f"by-id/{hidden.id}"]


def _insert_plainly(metadata_db, row):
    """Insert ``row`` the way a Llama Stack server does: its own connection, no feed entry."""
    with metadata_db.plain() as seed:
        seed.execute("INSERT INTO openai_files (id, filename, purpose, bytes, created_at, expires_at, "
                     "access_attributes, owner_principal) VALUES (?, ?, ?, ?, ?, ?, 'null', '')",
                     [row[k] for k in ("id", "filename", "purpose", "bytes", "created_at", "expires_at")])


def test_a_missing_name_is_kept_only_while_nobody_commits(tmp_path, metadata_db):
    """``cp`` makes the kernel ask for a new file's name two or three times. On SQLite the first
    answer is kept until anyone commits anything (another program's row shows at the very next
    lookup, before any round of the feed); PostgreSQL cannot tell, so each lookup asks."""
    service, namespace = _namespace(tmp_path, metadata_db)
    asked = []
    named = service.named

    def counted(*args, **kwargs):
        asked.append(args)
        return named(*args, **kwargs)

    service.named = counted
    for _ in range(3):
        assert namespace.find("assistants", "soon.txt") is None
    assert len(asked) == (1 if metadata_db.engine == "sqlite" else 3)

    theirs = file("soon.txt", created_at=int(time.time()))
    _insert_plainly(metadata_db, theirs.to_row())
    assert namespace.lookup("assistants", "soon.txt").id == theirs.id

    assert namespace.find("batch", "ours.txt") is None
    ours = file("ours.txt", created_at=int(time.time()), purpose="batch")
    service.metadata.insert(ours.to_row())  # this process's own writer, the namespace not told
    assert namespace.lookup("batch", "ours.txt").id == ours.id


def test_a_prepared_lookup_gives_what_the_statement_gives(metadata_db):
    """Name lookups run on SQLite without SQLAlchemy's per-call work when it has nothing to convert;
    every viewer, shape and engine gets the rows the statement itself gives, and a driver's error
    is a StorageError like any other."""
    from s3filesfs.access import ANONYMOUS, Identity
    from s3filesfs.metadata import MetadataStore
    from s3filesfs.metadata.engines import Engine

    store = MetadataStore(metadata_db.location)
    team = Identity.of("ana", {"teams": ["ml"]})
    rows = [file("a/b").to_row(), file("a\uff0fb", created_at=1001).to_row(), file("c.txt", created_at=1002).to_row()]
    for row, writer in zip(rows, (ANONYMOUS, team, OPERATOR), strict=True):
        store.insert(row, writer=writer)
    for viewer in (ANONYMOUS, team, OPERATOR):
        for shape in ({"names": 1}, {"names": 2, "slashed": True}, {"names": 3, "by_id": True}, {"by_id": True}):
            query = store._lookup_query(viewer, in_purpose=True, **shape)
            prepared = query.sql is not None
            assert prepared is (metadata_db.engine == "sqlite" and shape["names"] <= 2 if "names" in shape
                                else metadata_db.engine == "sqlite"), (viewer, shape)
        found = store.named("assistants", ["a/b", "a\uff0fb"], rows[2]["id"], 2000, "a\uff0fb", viewer=viewer)
        by_sqlalchemy = Engine.rows(store._engine, store._lookup_query(viewer, names=2, by_id=True, slashed=True,
                                                                        in_purpose=True).statement,
                                    {"now": 2000, "purpose": "assistants", "name0": "a/b", "name1": "a\uff0fb",
                                     "file_id": rows[2]["id"], "slash_form": "a\uff0fb"})
        assert sorted(found, key=lambda r: r["id"]) == sorted(by_sqlalchemy, key=lambda r: r["id"])
        assert {r["id"] for r in found} == {r["id"] for r in rows if viewer is not ANONYMOUS or r is not rows[1]}
        assert (store.live(rows[0]["id"], 2000, viewer=viewer) or {}).get("filename") == "a/b"
    if metadata_db.engine == "sqlite":
        store.close()
        Path(metadata_db.location).write_bytes(b"not a database, " * 512)
        with pytest.raises(StorageError, match="look up name"):
            store.named("assistants", ["c.txt"], None, 2000, viewer=OPERATOR)
    store.close()


def test_a_change_made_elsewhere_reaches_a_cached_lookup_through_the_feed(tmp_path, metadata_db):
    """Another process renames and deletes: one round of the feed names the file, and the
    namespace forgets what it had cached (and says which paths the kernel must forget)."""
    service, namespace = _namespace(tmp_path, metadata_db)
    _, elsewhere = _namespace(tmp_path, metadata_db)
    feed = service.follow_changes(0.2)
    file = _create(elsewhere.service, "moving.txt")
    assert namespace.lookup("assistants", "moving.txt").id == file.id  # cached now
    elsewhere.service.rename(file.id, "moved.txt", "batch")
    found = feed.next_round()
    assert file.id in found.file_ids
    paths = namespace.apply(found.file_ids, found.everything)
    assert {"assistants/moving.txt", "batch/moved.txt", f"by-id/{file.id}"} <= set(paths)
    assert namespace.find("assistants", "moving.txt") is None
    assert namespace.lookup("batch", "moved.txt").id == file.id
    elsewhere.service.delete(file.id)
    found = feed.next_round()
    assert found.file_ids == {file.id}
    namespace.apply(found.file_ids, found.everything)
    assert namespace.find("batch", "moved.txt") is None


# --- the change feed ---------------------------------------------------------------------------


def test_the_feed_names_every_change_in_order_once(metadata_db):
    from s3filesfs.metadata import ChangeFeed, MetadataStore

    ours, theirs = MetadataStore(metadata_db.location), MetadataStore(metadata_db.location)
    feed = ChangeFeed(ours)
    assert not feed.next_round()
    a, b = file("a.txt").to_row(), file("b.txt").to_row()
    theirs.insert(a)
    ours.insert(b)
    theirs.update(a["id"], filename="c.txt", purpose="batch", viewer=OPERATOR)
    assert feed.next_round().file_ids == {a["id"], b["id"]}
    assert not feed.next_round()  # nothing twice
    ours.missing_add(b["id"], 0)
    ours.missing_add(b["id"], 0)  # already noted: not a change
    assert feed.next_round().file_ids == {b["id"]}
    theirs.delete(a["id"], viewer=OPERATOR)
    theirs.delete(a["id"], viewer=OPERATOR)  # already gone: not a change
    assert feed.next_round().file_ids == {a["id"]}
    positions = [position for position, _ in ours.feed_since(0)]
    assert positions == sorted(positions) and len(positions) == len(set(positions)) == 5
    ours.close()
    theirs.close()


def test_the_feed_finds_rows_of_a_writer_that_does_not_write_it(metadata_db):
    """A Llama Stack server inserts through its own connection and writes no feed entry: the
    round finds its row by created_at; on SQLite a delete of its own is reported as 'everything'."""
    from s3filesfs.metadata import ChangeFeed, MetadataStore

    ours = MetadataStore(metadata_db.location)
    feed = ChangeFeed(ours, catch_up_seconds=0)
    row = file("seed.txt", created_at=int(time.time()) - 60).to_row()  # stamped before its upload
    _insert_plainly(metadata_db, row)
    assert row["id"] in feed.next_round().file_ids
    assert row["id"] not in feed.next_round().file_ids
    with metadata_db.plain() as seed:
        assert seed.execute("DELETE FROM openai_files WHERE id = ?", [row["id"]]) == 1
    assert feed.next_round().everything is (metadata_db.engine == "sqlite")
    ours.close()


def test_a_reader_is_woken_by_another_writer(metadata_db):
    from s3filesfs.metadata import ChangeFeed, MetadataStore

    ours, theirs = MetadataStore(metadata_db.location), MetadataStore(metadata_db.location)
    feed = ChangeFeed(ours, catch_up_seconds=30)
    feed.next_round()
    row = file("wake.txt").to_row()
    timer = threading.Timer(0.5, theirs.insert, [row])
    timer.start()
    started = time.monotonic()
    feed.wait()
    waited = time.monotonic() - started
    timer.join()
    assert 0.3 < waited < 5, waited
    assert row["id"] in feed.next_round().file_ids
    ours.close()
    theirs.close()


def test_a_reader_behind_the_trimmed_feed_is_told_to_forget_everything(metadata_db):
    from s3filesfs.metadata import ChangeFeed, MetadataStore

    ours = MetadataStore(metadata_db.location)
    ours.insert(file("one").to_row())
    feed = ChangeFeed(ours)
    ours.insert(file("two").to_row())
    ours.insert(file("three").to_row())
    assert ours.feed_trim(int(time.time()) + 10) == 2  # the newest entry always stays
    found = feed.next_round()
    assert found.everything
    ours.close()


# --- the listing ------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["the mount itself", "another process"])
def test_the_mounts_listing_drops_a_file_whose_object_a_read_found_missing(tmp_path, metadata_db, reader):
    """A read that finds no object hides the young row from the mount's next listing, whether the
    mount read it (its own write moves the change counter all the same) or another process did."""
    from s3filesfs.files import open_service
    from s3filesfs.fs.namespace import Namespace

    settings = config.load(flags={"data_dir": str(tmp_path / "data"), **metadata_db.settings_values()})
    mount_service, other_service = open_service(settings), open_service(settings)
    kept = mount_service.create(io.BytesIO(b"kept"), "kept.txt", "assistants")
    gone = mount_service.create(io.BytesIO(b"gone"), "gone.txt", "assistants")
    namespace = Namespace(mount_service, refresh_seconds=0)
    assert sorted(name for name, _ in namespace.names("assistants")) == ["gone.txt", "kept.txt"]
    (settings.local_store_dir / "objects" / gone.id).unlink()
    with pytest.raises(NotFound):
        (mount_service if reader == "the mount itself" else other_service).content(gone.id)
    assert [name for name, _ in namespace.names("assistants")] == ["kept.txt"]
    assert [f.id for f in namespace.ids()] == [kept.id]
