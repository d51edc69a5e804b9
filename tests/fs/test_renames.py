"""Renames through a real mount: metadata only (same id, same object, no copy), rename over an
existing name, renames of decorated duplicate names, and temporary names uploaded when renamed.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fs.test_writes import (
    _settle_staging,  # noqa: F401  (autouse fixture)
    assert_gone,
    assert_registered,
    body,
    file_id,
    listed,
    rows_named,
    run,
    uploaded_name,
)
from tests.helpers import unique, wait_for


def test_mv_within_purpose_keeps_id(mount):
    src = mount / "assistants" / unique("before")
    src.write_bytes(b"same bytes\n")
    fid = file_id(src)
    objects = mount.object_keys()
    dest = mount / "assistants" / unique("after")
    run("mv", src, dest)
    assert file_id(dest) == fid
    assert not os.path.exists(src)
    assert mount.object_keys() == objects, "a rename must not copy or add objects"
    row = mount.rows()[fid]
    assert (row["filename"], row["purpose"]) == (dest.name, "assistants")
    assert listed(mount)[fid]["filename"] == dest.name
    assert_registered(mount, dest, b"same bytes\n", "assistants")
    assert uploaded_name(mount, fid) == src.name  # the object itself was not rewritten


def test_mv_between_purposes_keeps_id(mount):
    src = mount / "assistants" / unique("moving", ".jsonl")
    src.write_bytes(b'{"q": 1}\n')
    fid = file_id(src)
    objects = mount.object_keys()
    dest = mount / "evals" / src.name
    run("mv", src, dest)
    assert file_id(dest) == fid
    assert os.getxattr(str(dest), "user.openai.purpose") == b"evals"
    assert mount.object_keys() == objects
    assert src.name not in os.listdir(mount / "assistants")
    shown = listed(mount)[fid]
    assert (shown["filename"], shown["purpose"]) == (src.name, "evals")
    assert_registered(mount, dest, b'{"q": 1}\n', "evals")


def test_mv_between_purposes_with_new_name(mount):
    src = mount / "user_data" / unique("orig")
    src.write_bytes(b"x" * 10000)
    fid = file_id(src)
    dest = mount / "vision" / unique("renamed")
    os.rename(src, dest)
    assert file_id(dest) == fid
    assert_registered(mount, dest, b"x" * 10000, "vision")


def test_mv_over_existing_name_replaces_it(mount):
    target = mount / "assistants" / unique("target")
    target.write_bytes(b"old target\n")
    replaced = file_id(target)
    src = mount / "assistants" / unique("incoming")
    src.write_bytes(b"new content\n")
    moved = file_id(src)
    objects = mount.object_keys()
    run("mv", "-f", src, target)
    assert file_id(target) == moved
    assert_gone(mount, replaced)
    assert mount.object_keys() == objects - {replaced}
    assert not os.path.exists(src)
    assert replaced not in listed(mount)
    assert_registered(mount, target, b"new content\n", "assistants")


def test_mv_over_existing_name_in_other_purpose(mount):
    target = mount / "batch" / unique("slot", ".jsonl")
    target.write_bytes(b"{}\n")
    replaced = file_id(target)
    src = mount / "assistants" / unique("comer", ".jsonl")
    src.write_bytes(b'{"new": true}\n')
    moved = file_id(src)
    os.rename(src, target)
    assert file_id(target) == moved
    assert_gone(mount, replaced)
    assert_registered(mount, target, b'{"new": true}\n', "batch")


def plant_duplicates(mount, purpose: str, stem: str, ext: str):
    """Two files of one name planted in ``purpose``, an older and a newer, once both are listed.

    Returns (name, older, newer, decorated): the newer one shows as ``<stem> (<id>)<ext>``.
    """
    name = unique(stem, ext)
    now = int(time.time())
    older = mount.plant(name, purpose, b"older\n", created_at=now - 20)
    newer = mount.plant(name, purpose, b"newer\n", created_at=now - 10)
    decorated = f"{name[:-len(ext)]} ({newer.id}){ext}"
    wait_for(lambda: {name, decorated} <= set(os.listdir(mount / purpose)), 5, "both duplicates listed")
    return name, older, newer, decorated


def test_rename_decorated_duplicate(mount):
    name, older, newer, decorated = plant_duplicates(mount, "assistants", "dup", ".txt")
    folder = mount / "assistants"
    assert file_id(folder / name) == older.id
    assert file_id(folder / decorated) == newer.id
    assert (folder / decorated).read_bytes() == b"newer\n"
    dest = folder / unique("undup", ".txt")
    run("mv", folder / decorated, dest)
    assert file_id(dest) == newer.id
    assert decorated not in os.listdir(folder)
    assert file_id(folder / name) == older.id
    assert_registered(mount, dest, b"newer\n", "assistants")
    assert_registered(mount, folder / name, b"older\n", "assistants")
    # The decorated name is a real path for rm too.
    again = mount.plant(name, "assistants", b"third\n", created_at=int(time.time()))
    third = f"{name[:-4]} ({again.id}).txt"
    wait_for(lambda: third in os.listdir(folder), 5, "the third duplicate listed")
    os.unlink(folder / third)
    assert_gone(mount, again.id)
    assert file_id(folder / name) == older.id


@pytest.mark.parametrize("temp_name", [".{}.a1B2c3", "{}.part", "{}~"])
def test_temp_name_uploaded_when_renamed(mount, temp_name):
    real = unique("download", ".bin")
    temp = mount / "user_data" / temp_name.format(real)
    data = os.urandom(100_000)
    with open(temp, "wb") as f:
        f.write(data)
    assert not rows_named(mount, temp.name), "a temporary name was uploaded"
    assert not [r for r in mount.rows().values() if r["filename"] in (temp.name, real)]
    assert temp.read_bytes() == data
    dest = mount / "user_data" / real
    os.rename(temp, dest)
    fid = assert_registered(mount, dest, data, "user_data")
    assert uploaded_name(mount, fid) == real
    assert body(mount, fid) == data
    assert not os.path.exists(temp)
    assert fid in listed(mount)


def test_real_name_renamed_to_temp_name_and_back(mount):
    """A registered file moved to a temporary name keeps existing; moved back, it is one id again."""
    dest = mount / "assistants" / unique("roundtrip")
    dest.write_bytes(b"round trip\n")
    os.rename(dest, dest.with_name(dest.name + ".tmp"))
    os.rename(dest.with_name(dest.name + ".tmp"), dest)
    assert len(rows_named(mount, dest.name, "assistants")) == 1
    assert_registered(mount, dest, b"round trip\n", "assistants")
    assert not rows_named(mount, dest.name + ".tmp")


def test_rename_while_open_then_close(mount):
    """A download manager: write under a temporary name, rename while still open, finish, close."""
    real = unique("movie", ".bin")
    temp = mount / "user_data" / f"{real}.part"
    dest = mount / "user_data" / real
    first, rest = os.urandom(300_000), os.urandom(200_000)
    with open(temp, "wb") as f:
        f.write(first)
        f.flush()
        os.rename(temp, dest)
        f.write(rest)
    wait_for(lambda: len(rows_named(mount, real, "user_data")) == 1, 5, "one row for the final name")
    assert not rows_named(mount, temp.name)
    assert_registered(mount, dest, first + rest, "user_data")


def test_rename_real_name_while_open_then_close(mount):
    first_name = mount / "assistants" / unique("early")
    final = mount / "vision" / unique("late")
    with open(first_name, "wb") as f:
        f.write(b"early bytes\n")
        f.flush()
        os.rename(first_name, final)
        f.write(b"late bytes\n")
    wait_for(lambda: len(rows_named(mount, final.name, "vision")) == 1, 5, "one row for the final name")
    assert not rows_named(mount, first_name.name)
    assert_registered(mount, final, b"early bytes\nlate bytes\n", "vision")


def test_rename_while_open_over_an_existing_name(mount):
    target = mount / "assistants" / unique("occupied")
    target.write_bytes(b"old occupant\n")
    replaced = file_id(target)
    temp = mount / "assistants" / f".{target.name}.XXXXXX"
    with open(temp, "wb") as f:
        f.write(b"new ")
        f.flush()
        os.rename(temp, target)
        f.write(b"occupant\n")
    wait_for(lambda: len(rows_named(mount, target.name, "assistants")) == 1, 5, "one row for the name")
    assert_gone(mount, replaced)
    assert_registered(mount, target, b"new occupant\n", "assistants")


def test_mv_from_local_disk_into_mount(mount, tmp_path):
    src = tmp_path / unique("local", ".csv")
    data = b"a,b\n1,2\n" * 1000
    src.write_bytes(data)
    run("mv", src, mount / "assistants")
    assert not src.exists()
    assert_registered(mount, mount / "assistants" / src.name, data, "assistants")


def test_mv_from_mount_to_local_disk(mount, tmp_path):
    path = mount / "evals" / unique("leaving", ".jsonl")
    path.write_bytes(b'{"bye": 1}\n')
    fid = file_id(path)
    run("mv", path, tmp_path)
    assert (tmp_path / path.name).read_bytes() == b'{"bye": 1}\n'
    assert not os.path.exists(path)
    assert_gone(mount, fid)


def test_moving_the_plain_duplicate_promotes_the_next(mount):
    name, older, newer, decorated = plant_duplicates(mount, "vision", "twin", ".md")
    folder = mount / "vision"
    away = folder / unique("away", ".md")
    os.rename(folder / name, away)
    assert file_id(away) == older.id
    wait_for(lambda: decorated not in os.listdir(folder) and name in os.listdir(folder), 5,
             "the newer twin shown under the plain name")
    assert file_id(folder / name) == newer.id
    assert (folder / name).read_bytes() == b"newer\n"
    assert_registered(mount, away, b"older\n", "vision")


def test_rename_onto_itself_changes_nothing(mount):
    path = mount / "assistants" / unique("same")
    path.write_bytes(b"stay\n")
    fid = file_id(path)
    objects = mount.object_keys()
    os.rename(path, path)
    assert file_id(path) == fid
    assert fid in mount.rows() and mount.object_keys() == objects
    assert_registered(mount, path, b"stay\n", "assistants")


def test_decorated_duplicate_renamed_onto_the_plain_name(mount):
    """Rename over an existing name replaces it, even when both carry the same filename."""
    name, older, newer, decorated = plant_duplicates(mount, "assistants", "pair", ".txt")
    folder = mount / "assistants"
    os.rename(folder / decorated, folder / name)
    assert file_id(folder / name) == newer.id
    assert_gone(mount, older.id)
    assert decorated not in os.listdir(folder)
    assert_registered(mount, folder / name, b"newer\n", "assistants")


def test_concurrent_renames_keep_every_id(mount):
    prefix = unique("spin", "")
    sources = {}
    for i in range(24):
        path = mount / "assistants" / f"{prefix}-{i}.txt"
        path.write_bytes(f"file {i}\n".encode())
        sources[i] = (path, file_id(path))
    objects = mount.object_keys()
    targets = ["vision", "evals", "user_data"]

    def move(i):
        path, _ = sources[i]
        os.rename(path, mount / targets[i % 3] / f"{prefix}-moved-{i}.txt")

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(move, i) for i in sources]:
            future.result()
    assert mount.object_keys() == objects
    for i, (_, fid) in sources.items():
        dest = mount / targets[i % 3] / f"{prefix}-moved-{i}.txt"
        assert file_id(dest) == fid
        row = mount.rows()[fid]
        assert (row["filename"], row["purpose"]) == (dest.name, targets[i % 3])
    assert not [n for n in os.listdir(mount / "assistants") if n.startswith(prefix)]
