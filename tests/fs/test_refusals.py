"""What the mount refuses, with which errno, and that a refusal leaves nothing behind: no row, no
object, no staging file, no open multipart upload."""

import errno
import os
import time

import pytest

from tests.helpers import unique, wait_for

SHOWN = 3.0
OLD = 1_700_000_000


@pytest.fixture
def refused(mount):
    """``refused(call, *args) -> errno``, checking that the store did not change."""

    def check(call, *args):
        before = mount.snapshot()
        with pytest.raises(OSError) as info:
            call(*args)
        mount.assert_unchanged(before)
        return info.value.errno

    return check


@pytest.fixture(scope="module")
def planted(mount):
    file = mount.plant(unique("existing"), "assistants", b"existing\n", created_at=OLD)
    wait_for(lambda: file.filename in os.listdir(mount / "assistants"), SHOWN, "the planted file")
    return file


def create(path):
    with open(path, "w") as f:
        f.write("x")


def open_for_write(path, flags=os.O_WRONLY):
    os.close(os.open(path, flags))


@pytest.mark.parametrize("where", ["", "assistants", "by-id"])
def test_mkdir_is_refused(mount, refused, where):
    name = unique("dir", "")
    assert refused(os.mkdir, mount / where / name) == errno.EPERM
    assert name not in os.listdir(mount / where)


def test_rmdir_is_refused(mount, refused):
    assert refused(os.rmdir, mount / "vision") == errno.EPERM
    assert refused(os.rmdir, mount / "by-id") == errno.EPERM
    assert os.path.isdir(mount / "vision")


def test_refusals_are_logged_once(mount, refused, planted):
    existing = mount / "assistants" / planted.filename
    attempts = [
        (os.mkdir, mount / "assistants" / unique("logged-dir", "")),
        (create, mount / unique("logged-root")),
        (os.symlink, existing, mount / "vision" / unique("logged-link")),
        (os.rename, mount / "evals", mount / unique("logged-folder", "")),
        (create, mount / "by-id" / unique("logged-by-id")),
    ]
    for call, *args in attempts:
        before = len(mount.log().splitlines())
        code = errno.errorcode[refused(call, *args)]
        wait_for(lambda: mount.log().splitlines()[before:], 2.0, f"a log line for {call.__name__}")
        time.sleep(0.1)  # a second line, if any, would come now
        new = mount.log().splitlines()[before:]
        assert len(new) == 1 and code in new[0], (call.__name__, new)


def test_create_at_the_root_is_refused(mount, refused):
    name = unique("at-root")
    assert refused(create, mount / name) == errno.EPERM
    assert name not in os.listdir(mount.mountpoint)


def test_create_in_by_id_is_refused(mount, refused):
    assert refused(create, mount / "by-id" / unique("x")) == errno.EPERM
    assert refused(create, mount / "by-id" / "file-0123456789abcdef0123456789abcdef") == errno.EPERM


def test_by_id_files_and_index_are_read_only(mount, refused, planted):
    for path in (mount / "by-id" / planted.id, mount / "index.jsonl"):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
            assert refused(open_for_write, path, flags) == errno.EPERM, (path, flags)
    assert refused(os.truncate, mount / "by-id" / planted.id, 0) == errno.EPERM
    assert (mount / "by-id" / planted.id).read_bytes() == b"existing\n"


def test_rm_in_by_id_and_at_the_root_is_refused(mount, refused, planted):
    assert refused(os.unlink, mount / "by-id" / planted.id) == errno.EPERM
    assert refused(os.unlink, mount / "index.jsonl") == errno.EPERM
    assert (mount / "assistants" / planted.filename).read_bytes() == b"existing\n"


def test_name_over_255_bytes(mount, refused, planted):
    assert refused(create, mount / "assistants" / ("a" * 256)) == errno.ENAMETOOLONG
    assert refused(create, mount / "assistants" / ("é" * 128)) == errno.ENAMETOOLONG
    assert refused(os.stat, mount / "assistants" / ("b" * 300)) == errno.ENAMETOOLONG
    source = mount / "assistants" / planted.filename
    assert refused(os.rename, source, mount / "assistants" / ("c" * 256)) == errno.ENAMETOOLONG
    assert mount.rows()[planted.id]["filename"] == planted.filename


def test_name_of_exactly_255_bytes_is_accepted(mount):
    name = unique("n", "")
    name += "x" * (255 - len(name))
    path = mount / "assistants" / name
    create(path)
    file_id = os.getxattr(path, "user.openai.file_id").decode()
    assert mount.rows()[file_id]["filename"] == name
    os.unlink(path)
    assert file_id not in mount.rows()


def test_unknown_purpose_folder_and_names(mount, refused):
    assert refused(create, mount / "nope" / "x") == errno.ENOENT
    assert refused(os.stat, mount / "nope") == errno.ENOENT
    assert refused(os.listdir, mount / "nope") == errno.ENOENT
    assert refused(os.stat, mount / "assistants" / unique("missing")) == errno.ENOENT
    assert refused(open, mount / "assistants" / unique("missing")) == errno.ENOENT
    assert refused(os.stat, mount / "assistants" / "deeper" / "x") == errno.ENOENT


@pytest.mark.parametrize("relative", ["assistants/../x", "assistants/../by-id/x", "by-id/../y",
                                      "assistants/./../z"])
def test_dotdot_resolves_to_a_refused_place(mount, refused, relative):
    assert refused(create, os.path.join(str(mount.mountpoint), relative)) == errno.EPERM


def test_symlink_link_and_fifo_are_refused(mount, refused, planted):
    existing = mount / "assistants" / planted.filename
    assert refused(os.symlink, existing, mount / "assistants" / unique("link")) == errno.EPERM
    assert refused(os.symlink, "/etc/hostname", mount / "vision" / unique("link")) == errno.EPERM
    assert refused(os.link, existing, mount / "assistants" / unique("hard")) == errno.EPERM
    assert refused(os.mkfifo, mount / "assistants" / unique("fifo")) == errno.EPERM
    assert refused(os.mkfifo, mount / unique("fifo")) == errno.EPERM


def test_rename_of_folders_and_root_entries_is_refused(mount, refused):
    assert refused(os.rename, mount / "assistants", mount / "assistants2") == errno.EPERM
    assert refused(os.rename, mount / "batch", mount / "vision") == errno.EPERM
    assert refused(os.rename, mount / "by-id", mount / "ids") == errno.EPERM
    assert refused(os.rename, mount / "index.jsonl", mount / "index.json") == errno.EPERM
    assert refused(os.rename, mount / "index.jsonl", mount / "evals" / "index.jsonl") == errno.EPERM
    assert {"assistants", "batch", "vision", "by-id", "index.jsonl"} <= set(os.listdir(mount.mountpoint))
    assert "assistants2" not in os.listdir(mount.mountpoint)


def test_rename_into_the_root_or_by_id_is_refused(mount, refused, planted):
    source = mount / "assistants" / planted.filename
    assert refused(os.rename, source, mount / planted.filename) == errno.EPERM
    assert refused(os.rename, source, mount / "by-id" / planted.filename) == errno.EPERM
    assert refused(os.rename, source, mount / "nope" / planted.filename) == errno.ENOENT
    assert refused(os.rename, source, os.path.join(str(mount / "assistants"), "..", "x")) == errno.EPERM
    assert source.read_bytes() == b"existing\n"
    assert mount.rows()[planted.id]["filename"] == planted.filename



def test_a_name_that_is_not_utf8_is_refused_at_create(mount, refused):
    """The table and the API hold text: such a name cannot be stored, so it is refused at once
    (EILSEQ) instead of failing at close, and nothing is left behind."""
    folder = os.fsencode(mount / "assistants")
    bad = folder + b"/report-\xff\xfe.txt"
    assert refused(os.open, bad, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == errno.EILSEQ
    assert refused(os.rename, os.fsencode(mount / "assistants" / "nothing"), bad) in (errno.ENOENT, errno.EILSEQ)
    assert "Traceback" not in mount.log()
    assert "not valid UTF-8" in mount.log()
