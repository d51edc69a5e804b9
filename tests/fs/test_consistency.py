"""Changes made by others (the CLI in another process, a row and object written directly, a rename
or delete behind the mount's back) show in the mount within about a second."""

import errno
import io
import json
import os
import time

import pytest

from tests.fs.mounting import unique, wait_for

WINDOW = 1.5  # the documented window is "about 1 s": the listing is refreshed every second
ENTRY_WINDOW = 2.0  # a name the kernel looked up just before may be kept one more second (entry timeout)


def shows_within(predicate, what, window=WINDOW):
    """Poll until ``predicate()``; fail if it took longer than ``window`` seconds."""
    start = time.monotonic()
    wait_for(predicate, window, what)
    return time.monotonic() - start


def names(mount, folder):
    return os.listdir(mount / folder)


def index_ids(mount):
    return {json.loads(line)["id"] for line in (mount / "index.jsonl").read_text().splitlines()}


@pytest.fixture(scope="module")
def existing(mount):
    """Files that exist (and are listed) before a test changes them behind the mount's back."""
    files = {key: mount.plant(unique(key), purpose, body) for key, purpose, body in
             [("before", "assistants", b"r"), ("mover", "assistants", b"m"), ("doomed", "batch", b"d")]}
    name = unique("promoted", ".txt")
    files["first"] = mount.plant(name, "evals", b"first", created_at=1_700_000_000)
    files["second"] = mount.plant(name, "evals", b"second", created_at=1_700_000_001)
    decorated = f"{name[:-4]} ({files['second'].id}).txt"
    wait_for(lambda: all(f.filename in names(mount, f.purpose) for f in files.values())
             and decorated in names(mount, "evals"), 3.0, "the planted files")
    return files


def test_cli_upload_in_another_process_shows(mount, tmp_path):
    source = tmp_path / unique("from-cli", ".csv")
    source.write_bytes(b"a,b\n1,2\n")
    names(mount, "user_data")  # the listing is cached now
    out = mount.cli("upload", "--purpose", "user_data", "--json", str(source)).stdout
    file_id = json.loads(out)["id"]
    shows_within(lambda: source.name in names(mount, "user_data"), "the uploaded file in user_data/")
    path = mount / "user_data" / source.name
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert os.getxattr(path, "user.openai.file_id").decode() == file_id
    shows_within(lambda: file_id in index_ids(mount), "the uploaded file in index.jsonl")


def test_planted_row_and_object_show(mount):
    names(mount, "vision")
    planted = mount.plant(unique("planted", ".png"), "vision", b"\x89PNG")
    shows_within(lambda: planted.filename in names(mount, "vision"), "the planted file")
    shows_within(lambda: planted.id in names(mount, "by-id"), "the planted id in by-id/")
    assert (mount / "vision" / planted.filename).read_bytes() == b"\x89PNG"


def test_file_created_through_the_service_shows(mount):
    names(mount, "evals")
    created = mount.service().create(io.BytesIO(b"service"), unique("svc"), "evals")
    shows_within(lambda: created.filename in names(mount, "evals"), "the created file")
    assert (mount / "evals" / created.filename).read_bytes() == b"service"


def test_rename_behind_the_back_shows(mount, existing):
    planted = existing["before"]
    old = mount / "assistants" / planted.filename
    assert os.stat(old).st_size == 1  # the kernel now caches this entry
    new_name = unique("after")
    mount.service().metadata.update(planted.id, filename=new_name)
    shows_within(lambda: new_name in names(mount, "assistants") and planted.filename not in names(mount, "assistants"),
                 "the new name replacing the old")
    shows_within(lambda: not os.path.exists(old), "the old name gone for stat", ENTRY_WINDOW)
    assert (mount / "assistants" / new_name).read_bytes() == b"r"


def test_purpose_change_behind_the_back_moves_the_file(mount, existing):
    planted = existing["mover"]
    mount.service().metadata.update(planted.id, purpose="fine-tune")
    shows_within(lambda: planted.filename in names(mount, "fine-tune")
                 and planted.filename not in names(mount, "assistants"), "the file in fine-tune/")
    assert os.getxattr(mount / "fine-tune" / planted.filename, "user.openai.purpose") == b"fine-tune"


def test_cli_delete_in_another_process_shows(mount, existing):
    planted = existing["doomed"]
    path = mount / "batch" / planted.filename
    assert os.stat(path).st_size == 1
    mount.cli("rm", planted.id)
    shows_within(lambda: planted.filename not in names(mount, "batch"), "the file gone from batch/")
    shows_within(lambda: not os.path.exists(path), "stat answering ENOENT", ENTRY_WINDOW)
    with pytest.raises(OSError) as info:
        os.stat(mount / "by-id" / planted.id)
    assert info.value.errno == errno.ENOENT
    shows_within(lambda: planted.id not in index_ids(mount), "the id gone from index.jsonl")


def test_duplicate_deleted_behind_the_back_promotes_the_next(mount, existing):
    first, second = existing["first"], existing["second"]
    name = first.filename
    decorated = f"{name[:-4]} ({second.id}).txt"
    mount.service().delete(first.id)
    shows_within(lambda: name in names(mount, "evals") and decorated not in names(mount, "evals"),
                 "the younger file under the plain name")
    assert (mount / "evals" / name).read_bytes() == b"second"


def test_same_name_created_elsewhere_shows_decorated(mount):
    twin = mount.plant(unique("twin"), "vision", b"twin")
    again = mount.plant(twin.filename, "vision", b"younger", created_at=twin.created_at + 1)
    stem, ext = os.path.splitext(twin.filename)
    decorated = f"{stem} ({again.id}){ext}"
    shows_within(lambda: {twin.filename, decorated} <= set(names(mount, "vision")), "both files in vision/")
    assert (mount / "vision" / decorated).read_bytes() == b"younger"


@pytest.mark.xfail(strict=True, reason=(
    "a file that expires while nothing else changes in the store stays listed and stat-able "
    "indefinitely (observed: still in batch/ and index.jsonl 5 s after expires_at; reading it then "
    "gives ENOENT and removes row and object): the listing is reloaded only when the database's "
    "data_version moves, and the cached listing is not filtered by expires_at"))
def test_file_that_expires_while_mounted_disappears(mount):
    now = int(time.time())
    planted = mount.plant(unique("short-lived"), "batch", b"soon gone", created_at=now - 3600, expires_at=now + 2)
    wait_for(lambda: planted.filename in names(mount, "batch"), 3.0, "the planted file")
    path = mount / "batch" / planted.filename
    assert path.read_bytes() == b"soon gone"
    while time.time() < now + 2:
        time.sleep(0.05)
    # Nothing else changes in the store: expiry alone must hide it.
    shows_within(lambda: planted.filename not in names(mount, "batch"), "the expired file gone from batch/")
    shows_within(lambda: not os.path.exists(path), "the expired file gone for stat", ENTRY_WINDOW)
    assert planted.id not in index_ids(mount)


def test_name_looked_up_before_it_existed_shows(mount):
    """A script polling for a file: the earlier "no such file" answers must not stick."""
    name = unique("awaited")
    path = mount / "assistants" / name
    assert not path.exists()
    mount.service().create(io.BytesIO(b"arrived"), name, "assistants")
    shows_within(path.exists, "the awaited file for stat", ENTRY_WINDOW)
    assert path.read_bytes() == b"arrived"
