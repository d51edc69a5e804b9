"""What the mount shows: folders, modes, sizes, times, xattrs, by-id/, index.jsonl and the naming
rules (duplicates, names a filesystem cannot hold, expired files).

Files are planted behind the mount's back (object and row written directly), so each test controls
``created_at`` and names the API allows but a filesystem does not. They are all planted at once by
the ``world`` fixture, so one listing refresh (about a second) shows them all.
"""

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import time
from types import SimpleNamespace

import pytest

from s3filesfs.errors import StorageError
from s3filesfs.model import EXPIRES_AFTER_MAX, PURPOSES, new_file_id
from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

SHOWN = 3.0  # seconds a planted file may take to show (the listing cache is about 1 s)
OLD = 1_700_000_000  # a created_at in the past, for files that never expire

SAFE_NAMES = [("a/b.txt", "a\uff0fb.txt"), ("reports/2024/q1.csv", "reports\uff0f2024\uff0fq1.csv"),
              ("nul\0byte", "nul\u2400byte")]
BARE_NAMES = ["", ".", "..", "x" * 256, "é" * 128]
DECORATIONS = [("README", "{p}README ({id})"), ("data.tar.gz", "{p}data.tar ({id}).gz")]


def errno_of(call, *args):
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def read_index(mount):
    return [json.loads(line) for line in (mount / "index.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def world(mount):
    """Every file the tests below look at, planted behind the mount's back, then shown."""
    w = SimpleNamespace()
    plant = mount.plant
    now = int(time.time())
    shown = []  # (purpose, name) that must be listed before the tests start

    w.attrs_body = os.urandom(12345)
    w.attrs = plant(unique("attrs"), "vision", w.attrs_body, created_at=OLD)
    w.never = plant(unique("xattr"), "assistants", b"abc", created_at=OLD)
    w.batch = plant(unique("batch", ".jsonl"), "batch", b"{}\n", created_at=now - 10)
    w.ro_xattr = plant(unique("ro-xattr"), "assistants", b"x", created_at=OLD)
    w.by_id = plant(unique("byid"), "evals", b"one", created_at=OLD)
    w.indexed = plant(unique("indexed", ".pdf"), "assistants", b"%PDF", created_at=OLD)
    shown += [("vision", w.attrs.filename), ("assistants", w.never.filename), ("batch", w.batch.filename),
              ("assistants", w.ro_xattr.filename), ("evals", w.by_id.filename),
              ("assistants", w.indexed.filename)]

    # Duplicates: the newer one planted first, so the order cannot come from insertion.
    name = unique("report", ".pdf")
    w.dup_name = name
    w.dup_newer = plant(name, "assistants", b"newer", created_at=OLD + 10)
    w.dup_older = plant(name, "assistants", b"older", created_at=OLD)
    w.dup_decorated = f"{name[:-4]} ({w.dup_newer.id}).pdf"
    shown += [("assistants", name), ("assistants", w.dup_decorated)]

    w.same_name = unique("same")
    w.same_ids = sorted(new_file_id() for _ in range(3))
    for file_id in reversed(w.same_ids):
        plant(w.same_name, "evals", file_id.encode(), created_at=OLD, file_id=file_id)
    stem, ext = os.path.splitext(w.same_name)
    w.same_shown = [w.same_name] + [f"{stem} ({i}){ext}" for i in w.same_ids[1:]]
    shown += [("evals", n) for n in w.same_shown]

    w.decorations = {}
    for base, template in DECORATIONS:
        prefix = unique("dup", "-")
        plant(prefix + base, "vision", b"a", created_at=OLD)
        second = plant(prefix + base, "vision", b"b", created_at=OLD + 1)
        w.decorations[base] = (prefix + base, template.format(p=prefix, id=second.id))
        shown += [("vision", prefix + base), ("vision", w.decorations[base][1])]

    name = unique("twin", ".csv")
    w.twin_name = name
    w.twins = [plant(name, "user_data", body, created_at=OLD + i) for i, body in
               enumerate([b"first", b"second", b"third"])]
    w.twin_decorated = [f"{name[:-4]} ({t.id}).csv" for t in w.twins[1:]]
    shown += [("user_data", n) for n in [name, *w.twin_decorated]]

    w.safe = {}
    for api_name, safe in SAFE_NAMES:
        if "\0" in api_name and mount.postgres is not None:
            continue  # PostgreSQL text cannot hold NUL: no file there has such a name (see the test)
        prefix = unique("safe", "-")
        w.safe[api_name] = (plant(prefix + api_name, "assistants", b"safe", created_at=OLD), prefix + safe)
        shown.append(("assistants", prefix + safe))

    prefix = unique("clash", "-")
    w.clash_older = plant(prefix + "a\uff0fb", "assistants", b"literal", created_at=OLD)
    w.clash_newer = plant(prefix + "a/b", "assistants", b"slash", created_at=OLD + 1)
    w.clash_plain, w.clash_decorated = prefix + "a\uff0fb", f"{prefix}a\uff0fb ({w.clash_newer.id})"
    shown += [("assistants", w.clash_plain), ("assistants", w.clash_decorated)]

    w.bare = {}
    for api_name in BARE_NAMES:
        w.bare[api_name] = plant(api_name, "fine-tune", b"bare", created_at=OLD)
        shown.append(("fine-tune", w.bare[api_name].id))

    w.dotted = [plant(unique(".env-", ""), "user_data", b"SECRET=1\n", created_at=OLD),
                plant(unique("notes", ".txt~"), "user_data", b"backup\n", created_at=OLD)]
    shown += [("user_data", f.filename) for f in w.dotted]

    w.expired = plant(unique("expired"), "batch", b"old", created_at=now - 7200, expires_at=now - 60)
    w.alive = plant(unique("alive"), "batch", b"new", created_at=now - 7200)
    shown.append(("batch", w.alive.filename))

    def all_shown():
        listings = {p: set(os.listdir(mount / p)) for p in {p for p, _ in shown}}
        return all(n in listings[p] for p, n in shown)

    wait_for(all_shown, SHOWN, "every planted file in the listing")
    return w


def test_root_lists_purposes_by_id_and_index(mount):
    assert sorted(os.listdir(mount.mountpoint)) == sorted([*PURPOSES, "by-id", "index.jsonl"])
    output = subprocess.run(["ls", "-l", str(mount.mountpoint)], capture_output=True, text=True, check=True).stdout
    for name in (*PURPOSES, "by-id", "index.jsonl"):
        assert name in output


def test_folder_modes(mount):
    root = os.stat(mount.mountpoint)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o555
    by_id = os.stat(mount / "by-id")
    assert stat.S_ISDIR(by_id.st_mode) and stat.S_IMODE(by_id.st_mode) == 0o555
    for purpose in PURPOSES:
        st = os.stat(mount / purpose)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755, purpose
        assert st.st_uid == os.getuid()
    index = os.stat(mount / "index.jsonl")
    assert stat.S_ISREG(index.st_mode) and stat.S_IMODE(index.st_mode) == 0o444


def test_file_attributes_from_the_row(mount, world):
    planted, body = world.attrs, world.attrs_body
    st = os.stat(mount / "vision" / planted.filename)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_size == len(body)
    assert st.st_mtime == st.st_ctime == st.st_atime == OLD
    assert st.st_nlink == 1
    assert st.st_uid == os.getuid()
    # The same through the tools people use.
    out = subprocess.run(["stat", "-c", "%s %Y %a", str(mount / "vision" / planted.filename)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(body)), str(OLD), "644"]
    ls = subprocess.run(["ls", "-l", str(mount / "vision")], capture_output=True, text=True, check=True).stdout
    line = next(line for line in ls.splitlines() if line.endswith(planted.filename))
    assert line.startswith("-rw-r--r--") and f" {len(body)} " in line
    by_id = os.stat(mount / "by-id" / planted.id)
    assert stat.S_IMODE(by_id.st_mode) == 0o444 and by_id.st_size == len(body) and by_id.st_mtime == OLD


def test_xattrs_of_a_file_that_never_expires(mount, world):
    planted = world.never
    path = mount / "assistants" / planted.filename
    expected = {"user.openai.file_id": planted.id.encode(), "user.openai.purpose": b"assistants",
                "user.openai.created_at": str(OLD).encode(), "user.openai.expires_at": b"null"}
    for target in (path, mount / "by-id" / planted.id):
        assert set(os.listxattr(target)) == set(expected)
        for name, value in expected.items():
            assert os.getxattr(target, name) == value, name
    dump = subprocess.run(["getfattr", "-d", "-m", "user.openai", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert f'user.openai.file_id="{planted.id}"' in dump
    assert 'user.openai.purpose="assistants"' in dump
    assert f'user.openai.created_at="{OLD}"' in dump
    assert 'user.openai.expires_at="null"' in dump


def test_xattrs_of_a_file_that_expires(mount, world):
    path = mount / "batch" / world.batch.filename
    assert os.getxattr(path, "user.openai.expires_at") == str(world.batch.created_at + EXPIRES_AFTER_MAX).encode()
    assert os.getxattr(path, "user.openai.created_at") == str(world.batch.created_at).encode()
    assert os.getxattr(path, "user.openai.purpose") == b"batch"


def test_xattrs_cannot_be_set_or_removed(mount, world):
    planted = world.ro_xattr
    path = mount / "assistants" / planted.filename
    assert errno_of(os.setxattr, path, "user.openai.file_id", b"file-" + b"0" * 32) == errno.ENOTSUP
    assert errno_of(os.setxattr, path, "user.other", b"1") == errno.ENOTSUP
    assert errno_of(os.removexattr, path, "user.openai.file_id") == errno.ENOTSUP
    assert os.getxattr(path, "user.openai.file_id") == planted.id.encode()
    assert errno_of(os.getxattr, path, "user.other") == errno.ENODATA


def test_file_being_written_has_no_id_yet(mount):
    path = mount / "assistants" / unique("in-progress")
    with open(path, "wb", buffering=0) as f:
        f.write(b"x" * 1000)
        assert path.name in os.listdir(mount / "assistants")
        assert os.stat(path).st_size == 1000
        assert errno_of(os.getxattr, path, "user.openai.file_id") == errno.ENODATA
        assert f"assistants/{path.name}" not in [e["path"] for e in read_index(mount)]
        f.write(b"y" * 500)
        assert os.stat(path).st_size == 1500
    file_id = os.getxattr(path, "user.openai.file_id").decode()
    assert mount.rows()[file_id]["bytes"] == 1500
    assert file_id in os.listdir(mount / "by-id")
    assert file_id in [e["id"] for e in read_index(mount)]


def test_copied_in_file_carries_its_new_id(mount, tmp_path):
    source = tmp_path / unique("copied")
    source.write_bytes(os.urandom(3000))
    target = mount / "user_data" / source.name
    subprocess.run(["cp", str(source), str(target)], check=True)
    file_id = os.getxattr(target, "user.openai.file_id").decode()
    row = mount.rows()[file_id]
    assert (row["filename"], row["purpose"], row["bytes"]) == (source.name, "user_data", 3000)
    assert (mount / "by-id" / file_id).read_bytes() == source.read_bytes()
    listing = json.loads(mount.cli("ls", "--json", "--purpose", "user_data").stdout)
    assert file_id in [f["id"] for f in listing["data"]]


def test_by_id_lists_every_file_and_opens_one_not_yet_listed(mount, world):
    assert world.by_id.id in os.listdir(mount / "by-id")
    # An id planted just now opens at once, before any listing shows it.
    second = mount.plant(unique("byid"), "fine-tune", b"two", created_at=OLD)
    assert (mount / "by-id" / second.id).read_bytes() == b"two"
    assert errno_of(os.stat, mount / "by-id" / new_file_id()) == errno.ENOENT
    assert errno_of(os.stat, mount / "by-id" / "not-an-id") == errno.ENOENT


def test_index_jsonl_holds_file_objects_with_their_path(mount, world):
    planted = world.indexed
    entries = read_index(mount)
    found = next(e for e in entries if e["id"] == planted.id)
    assert found == {"id": planted.id, "object": "file", "bytes": 4, "created_at": OLD, "expires_at": None,
                     "filename": planted.filename, "purpose": "assistants",
                     "path": f"assistants/{planted.filename}"}
    batch = next(e for e in entries if e["id"] == world.batch.id)
    assert batch["expires_at"] == world.batch.created_at + EXPIRES_AFTER_MAX and batch["purpose"] == "batch"
    assert [(e["created_at"], e["id"]) for e in entries] == sorted((e["created_at"], e["id"]) for e in entries)
    # Every entry's path is a real path in the mount.
    for e in entries:
        assert os.getxattr(mount / e["path"], "user.openai.file_id") == e["id"].encode()
    assert os.stat(mount / "index.jsonl").st_size == len((mount / "index.jsonl").read_bytes())


def test_duplicate_names_oldest_plain_others_decorated(mount, world):
    name, stem = world.dup_name, world.dup_name[:-4]
    names = [n for n in os.listdir(mount / "assistants") if n.startswith(stem)]
    assert sorted(names) == sorted([name, world.dup_decorated])
    assert (mount / "assistants" / name).read_bytes() == b"older"
    assert (mount / "assistants" / world.dup_decorated).read_bytes() == b"newer"
    assert os.getxattr(mount / "assistants" / world.dup_decorated, "user.openai.file_id") == world.dup_newer.id.encode()
    paths = {e["id"]: e["path"] for e in read_index(mount)}
    assert paths[world.dup_older.id] == f"assistants/{name}"
    assert paths[world.dup_newer.id] == f"assistants/{world.dup_decorated}"


def test_duplicate_names_same_second_ordered_by_id(mount, world):
    for shown, file_id in zip(world.same_shown, world.same_ids, strict=True):
        assert (mount / "evals" / shown).read_bytes() == file_id.encode()


@pytest.mark.parametrize("base", [base for base, _ in DECORATIONS])
def test_duplicate_decoration_uses_the_last_suffix(mount, world, base):
    plain, decorated = world.decorations[base]
    assert (mount / "vision" / decorated).read_bytes() == b"b"
    assert (mount / "vision" / plain).read_bytes() == b"a"


def test_decorated_name_is_a_real_path(mount, world):
    first, second, third = world.twins
    decorated2, decorated3 = (mount / "user_data" / n for n in world.twin_decorated)
    renamed = mount / "user_data" / unique("renamed", ".csv")
    os.rename(decorated2, renamed)
    assert os.getxattr(renamed, "user.openai.file_id") == second.id.encode()
    assert mount.rows()[second.id]["filename"] == renamed.name
    os.unlink(decorated3)
    assert third.id not in mount.rows()
    assert third.id not in mount.object_keys()
    assert (mount / "user_data" / world.twin_name).read_bytes() == b"first"


@pytest.mark.parametrize("api_name", [api for api, _ in SAFE_NAMES])
def test_names_with_slash_or_nul_are_shown_safely(mount, world, api_name):
    if api_name not in world.safe:
        # PostgreSQL text cannot hold NUL: such a name is refused whole, and nothing is left of it.
        with pytest.raises(StorageError, match="NUL"):
            mount.service().create(io.BytesIO(b"safe"), api_name, "assistants")
        return
    planted, shown = world.safe[api_name]
    path = mount / "assistants" / shown
    assert path.read_bytes() == b"safe"
    assert os.getxattr(path, "user.openai.file_id") == planted.id.encode()
    entry = next(e for e in read_index(mount) if e["id"] == planted.id)
    assert entry["filename"] == planted.filename and entry["path"] == f"assistants/{shown}"


def test_safe_form_clashing_with_a_real_name_follows_the_duplicate_rule(mount, world):
    assert (mount / "assistants" / world.clash_plain).read_bytes() == b"literal"
    assert (mount / "assistants" / world.clash_decorated).read_bytes() == b"slash"


@pytest.mark.parametrize("api_name", BARE_NAMES)
def test_unshowable_names_become_the_bare_id(mount, world, api_name):
    planted = world.bare[api_name]
    path = mount / "fine-tune" / planted.id
    assert path.read_bytes() == b"bare"
    assert os.getxattr(path, "user.openai.file_id") == planted.id.encode()
    entry = next(e for e in read_index(mount) if e["id"] == planted.id)
    assert entry["path"] == f"fine-tune/{planted.id}" and entry["filename"] == api_name


def test_files_with_temporary_looking_names_from_the_api_are_shown(mount, world):
    """Only files written through the mount under a temporary name stay local; a registered file
    whose name looks temporary is shown like any other."""
    for planted in world.dotted:
        path = mount / "user_data" / planted.filename
        assert path.read_bytes() == mount.service().read(planted.id, 0, 100)
        assert os.getxattr(path, "user.openai.file_id") == planted.id.encode()
        assert next(e for e in read_index(mount) if e["id"] == planted.id)["path"] == f"user_data/{planted.filename}"


def test_expired_files_are_not_shown(mount, world):
    expired = world.expired
    assert world.alive.filename in os.listdir(mount / "batch")
    assert expired.filename not in os.listdir(mount / "batch")
    assert errno_of(os.stat, mount / "batch" / expired.filename) == errno.ENOENT
    assert errno_of(os.stat, mount / "by-id" / expired.id) == errno.ENOENT
    assert expired.id not in os.listdir(mount / "by-id")
    assert expired.id not in [e["id"] for e in read_index(mount)]


def copy_preserving(mount, tmp_path):
    source = tmp_path / unique("preserved")
    source.write_bytes(b"keep me")
    os.chmod(source, 0o600)
    os.utime(source, (1_600_000_000, 1_600_000_000))
    target = mount / "evals" / source.name
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return source, target


def test_cp_a_keeps_working_and_attributes_stay(mount, tmp_path):
    """chmod, chown and utimens are accepted and ignored."""
    source, target = copy_preserving(mount, tmp_path)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    file_id = os.getxattr(target, "user.openai.file_id").decode()
    created_at = mount.rows()[file_id]["created_at"]
    os.chmod(target, 0o600)
    os.chown(target, os.getuid(), os.getgid())
    os.utime(target, (1, 1))
    st = os.stat(target)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o644, created_at)
    assert os.getxattr(target, "user.openai.file_id").decode() == file_id
    shutil.copystat(source, target)  # what cp -p and shutil.copy2 do
    assert target.read_bytes() == b"keep me"
    assert mount.rows()[file_id]["created_at"] == created_at


def test_mtime_right_after_cp_a_is_created_at(mount, tmp_path):
    _, target = copy_preserving(mount, tmp_path)
    st = os.stat(target)
    file_id = os.getxattr(target, "user.openai.file_id").decode()
    assert st.st_mtime == mount.rows()[file_id]["created_at"]


def test_statfs(mount):
    st = os.statvfs(mount.mountpoint)
    assert st.f_bsize == 4096
    assert st.f_namemax == 255
    assert st.f_blocks * st.f_frsize == 10240 * 1024 * 1024  # the staging cap, staging_max_mb
    assert 0 <= st.f_bfree <= st.f_blocks
    free = st.f_bfree
    with open(mount / "assistants" / unique("statfs"), "wb") as f:
        f.write(b"s" * (4 * 1024 * 1024))
        f.flush()
        during = os.statvfs(mount.mountpoint).f_bfree
        assert free - during >= 4 * 1024 * 1024 // st.f_frsize, (free, during)
    wait_for(lambda: os.statvfs(mount.mountpoint).f_bfree == free, 3.0, "the staged space given back")


def test_temporary_file_stays_local_and_is_discarded_at_unmount(fuse):
    m = Mount("local").start()
    try:
        baseline = m.snapshot()
        temp = m / "assistants" / ".draft.txt.swp"
        temp.write_bytes(b"not yet")
        assert temp.name in os.listdir(m / "assistants")
        assert temp.read_bytes() == b"not yet"
        assert errno_of(os.getxattr, temp, "user.openai.file_id") == errno.ENODATA
        assert not [r for r in m.rows().values() if r["filename"] == temp.name]
        m.assert_unchanged({**baseline, "staged": m.staged_files()})
        assert m.stop() is not None
        assert m.staged_files() <= {".mount.lock"}, m.staged_files()
        m.start()
        assert temp.name not in os.listdir(m / "assistants")
        m.assert_consistent()
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def test_staging_folder_from_the_environment_and_the_default(fuse, tmp_path):
    """``S3FILESFS_MOUNT_STAGING_DIR`` (like ``mount.staging_dir``) places staging; the default is
    ``<data_dir>/staging``."""
    chosen = Mount("local")
    default = Mount("local")
    env_staging = chosen.root / "from-env"
    processes = []
    try:
        for m, env in ((chosen, {**chosen.env, "S3FILESFS_MOUNT_STAGING_DIR": str(env_staging)}),
                       (default, default.env)):
            m.mountpoint.mkdir(parents=True)
            processes.append(subprocess.Popen(m.command("mount", str(m.mountpoint), "--foreground"), env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for m in (chosen, default):
            wait_for(lambda: os.path.ismount(m.mountpoint), 20, f"{m.mountpoint} mounted")
        for m, staging in ((chosen, env_staging), (default, default.data_dir / "staging")):
            path = m / "assistants" / unique("staged")
            with open(path, "wb") as f:
                f.write(b"being written")
                f.flush()
                assert [p for p in staging.iterdir() if p.name != ".mount.lock"], list(staging.iterdir())
            assert os.getxattr(path, "user.openai.file_id")
    finally:
        for m, process in zip((chosen, default), processes, strict=False):
            process.terminate()
            process.wait(20)
            if os.path.ismount(m.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(m.mountpoint)], capture_output=True)
            shutil.rmtree(m.root, ignore_errors=True)
