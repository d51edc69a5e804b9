"""The mount's rules that need no kernel: its config section, path parsing and the names it shows.

The behaviour through a real mount is in ``tests/fs``; these pin the rules themselves.
"""

import errno
import io
from pathlib import Path

import pytest

from s3filesfs import config
from s3filesfs.access import OPERATOR
from s3filesfs.errors import ConfigError, NameTooLong, NotFound, errno_of
from s3filesfs.fs.namespace import Listing, decorated_name, parse, safe_name
from s3filesfs.model import PURPOSES, FileObject, new_file_id
from tests.helpers import wait_for


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
    listing = Listing([newest, older, newer], PURPOSES)
    folder = listing.folders["assistants"]
    assert folder["r.pdf"] == older
    assert folder[f"r ({newer.id}).pdf"] == newer
    assert folder[f"r ({newest.id}).pdf"] == newest
    assert decorated_name("README", newer.id) == f"README ({newer.id})"


def test_same_second_duplicates_are_ordered_by_id():
    a, b = file("x", 5, file_id="file-" + "0" * 32), file("x", 5, file_id="file-" + "f" * 32)
    assert Listing([b, a], PURPOSES).folders["assistants"]["x"] == a


def test_removing_the_plain_name_asks_for_a_rebuild_that_promotes_the_next():
    older, newer = file("r.pdf", 10), file("r.pdf", 20)
    listing = Listing([older, newer], PURPOSES)
    assert listing.remove(older.id) is False  # a duplicate may move up: rebuild
    rebuilt = Listing(listing.files(), PURPOSES)
    assert rebuilt.folders["assistants"] == {"r.pdf": newer}
    lone = file("solo", 1)
    assert Listing([lone], PURPOSES).remove(lone.id) is True


def test_files_of_purposes_not_shown_stay_reachable_by_id():
    hidden = file("x", purpose="evals")
    listing = Listing([hidden], ("assistants",))
    assert listing.by_id[hidden.id] == hidden and hidden.id not in listing.path_of


# --- change detection ------------------------------------------------------------------------


def test_data_version_moves_for_other_writers_only(metadata_db):
    """The mount reloads its listing when others change the table, not after its own writes."""
    from s3filesfs.metadata import MetadataStore

    ours, theirs = MetadataStore(metadata_db.location), MetadataStore(metadata_db.location)
    row = file("a.txt").to_row()
    start = ours.data_version()
    ours.insert(row)
    ours.update(row["id"], viewer=OPERATOR, filename="b.txt", purpose="batch")
    ours.delete(row["id"], viewer=OPERATOR)
    assert ours.data_version() == start
    other = file("c.txt").to_row()
    theirs.insert(other)
    moved = ours.data_version()
    assert moved != start
    theirs.update(other["id"], viewer=OPERATOR, filename="d.txt", purpose="batch")
    assert ours.data_version() != moved
    ours.close()
    theirs.close()


def test_data_version_moves_for_a_change_by_another_program(metadata_db):
    """A Llama Stack server writes the table through its own connections: the token moves for its
    rows too (on PostgreSQL once the server publishes their statistics, within seconds)."""
    from s3filesfs.metadata import MetadataStore

    ours = MetadataStore(metadata_db.location)
    start = ours.data_version()
    row = file("seed.txt").to_row()
    with metadata_db.plain() as seed:
        seed.execute("INSERT INTO openai_files (id, filename, purpose, bytes, created_at, expires_at, "
                     "access_attributes, owner_principal) VALUES (?, ?, ?, ?, ?, ?, 'null', '')",
                     [row[k] for k in ("id", "filename", "purpose", "bytes", "created_at", "expires_at")])
    wait_for(lambda: ours.data_version() != start, timeout=20, what="data_version to move")
    moved = ours.data_version()
    with metadata_db.plain() as seed:
        assert seed.execute("DELETE FROM openai_files WHERE id = ?", [row["id"]]) == 1
    wait_for(lambda: ours.data_version() != moved, timeout=20, what="data_version to move again")
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
