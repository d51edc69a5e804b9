"""Writes through a real mount: cp, cp -a, rsync -a, dd conv=notrunc, O_APPEND, editor saves,
concurrent writers, the staging cap, unlink.

Each test checks the outcome the way a user would (the xattr, ``s3filesfs ls --json``, reading the
file back) and behind the mount's back (rows, objects, staging); the ``_store_agrees`` fixture ends
every test on the shared mount by checking that bucket and table agree.
"""

import ctypes
import errno
import json
import mmap
import os
import random
import re
import shutil
import stat
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

MiB = 1024 * 1024
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


# --- helpers shared with the other write-side modules (no test_ names here) ----------------------

def payload(size: int, seed: object = None) -> bytes:
    return random.Random(str(seed) if seed is not None else os.urandom(8)).randbytes(size)


def run(*command, check=True, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{command} exited {result.returncode}: {result.stderr}"
    return result


def file_id(path) -> str:
    value = os.getxattr(str(path), "user.openai.file_id").decode()
    assert FILE_ID.match(value), value
    return value


def listed(m: Mount) -> dict[str, dict]:
    """``s3filesfs ls --json`` in another process, by id."""
    return {f["id"]: f for f in json.loads(m.cli("ls", "--json").stdout)["data"]}


def rows_named(m: Mount, filename: str, purpose: str | None = None) -> list[dict]:
    return [r for r in m.rows().values() if r["filename"] == filename and purpose in (None, r["purpose"])]


def body(m: Mount, fid: str) -> bytes:
    _, chunks = m.service().content(fid)
    return b"".join(chunks)


def uploaded_name(m: Mount, fid: str) -> str:
    """The filename the object was uploaded under (its x-amz-meta-filename / local metadata)."""
    info = m.service().blobs.head(fid)
    assert info is not None, f"no object for {fid}"
    return urllib.parse.unquote(info.metadata.get("filename", ""))


def is_gone(m: Mount, fid: str) -> bool:
    return fid not in m.rows() and fid not in m.object_keys()


def assert_gone(m: Mount, fid: str) -> None:
    wait_for(lambda: is_gone(m, fid), 5, f"{fid} deleted (row and object)")


def settled_snapshot(m: Mount) -> dict:
    """A snapshot once the files closed before it have left staging (release follows close)."""
    wait_for(lambda: not [p for p in m.staged_files() if not p.rsplit("/", 1)[-1].startswith(".")],
             5, "staging emptied of closed files")
    return m.snapshot()


def assert_registered(m: Mount, path, data: bytes, purpose: str) -> str:
    """The file at ``path`` has an id whose row, object, listing and content all match ``data``."""
    fid = file_id(path)
    row = m.rows()[fid]
    assert (row["filename"], row["purpose"], row["bytes"]) == (path.name, purpose, len(data))
    assert len(rows_named(m, path.name, purpose)) == 1, rows_named(m, path.name, purpose)
    assert body(m, fid) == data
    assert os.stat(path).st_size == len(data)
    assert path.read_bytes() == data
    return fid


@pytest.fixture(autouse=True)
def _settle_staging(request):
    """After each test, give the last release a moment to clear staging before the store is checked."""
    yield
    for name in ("mount", "fresh_mount"):
        if name in request.fixturenames:
            m = request.getfixturevalue(name)
            if m.process is not None:
                try:
                    settled_snapshot(m)
                except AssertionError:
                    pass  # the store check that follows reports what is left


# --- create -----------------------------------------------------------------------------------

def test_cp_small_file(mount, tmp_path):
    data = b"hello, mount\n" * 100
    src = tmp_path / "small.txt"
    src.write_bytes(data)
    dest = mount / "assistants" / unique("small")
    run("cp", src, dest)
    fid = assert_registered(mount, dest, data, "assistants")
    shown = listed(mount)[fid]
    assert (shown["filename"], shown["purpose"], shown["bytes"]) == (dest.name, "assistants", len(data))
    assert uploaded_name(mount, fid) == dest.name


def test_cp_multi_mib_file(mount, tmp_path):
    data = payload(20 * MiB + 12345, "big")
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    dest = mount / "batch" / unique("big", ".bin")
    run("cp", src, dest)
    fid = assert_registered(mount, dest, data, "batch")
    assert listed(mount)[fid]["bytes"] == len(data)
    assert mount.pending_uploads() == []


def test_empty_file_is_registered(mount):
    dest = mount / "assistants" / unique("empty")
    run("touch", dest)
    fid = assert_registered(mount, dest, b"", "assistants")
    assert listed(mount)[fid]["bytes"] == 0


def test_python_write_then_close(mount):
    data = payload(300_000, 1)
    dest = mount / "evals" / unique("plain", ".jsonl")
    with open(dest, "wb") as f:
        for start in range(0, len(data), 65536):
            f.write(data[start:start + 65536])
    assert_registered(mount, dest, data, "evals")


# --- overwrite and copy-on-write --------------------------------------------------------------

def test_cp_onto_existing_name_gives_new_id(mount, tmp_path):
    first, second = payload(50_000, 2), payload(70_000, 3)
    dest = mount / "assistants" / unique("over")
    (tmp_path / "a").write_bytes(first)
    (tmp_path / "b").write_bytes(second)
    run("cp", tmp_path / "a", dest)
    old = assert_registered(mount, dest, first, "assistants")
    run("cp", tmp_path / "b", dest)
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, second, "assistants")
    assert old not in listed(mount)


def test_redirect_truncate_gives_new_id(mount):
    dest = mount / "user_data" / unique("redir")
    dest.write_bytes(b"one\n")
    old = file_id(dest)
    run("sh", "-c", f"printf 'two\\n' > '{dest}'")
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b"two\n", "user_data")


def test_dd_notrunc_patches_middle(mount, tmp_path):
    original = payload(3 * MiB, 4)
    patch = payload(8192, 5)
    dest = mount / "vision" / unique("patch", ".bin")
    dest.write_bytes(original)
    old = file_id(dest)
    (tmp_path / "patch").write_bytes(patch)
    run("dd", f"if={tmp_path / 'patch'}", f"of={dest}", "bs=4096", "seek=100", "conv=notrunc", "status=none")
    expected = original[:409600] + patch + original[409600 + len(patch):]
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, expected, "vision")


def test_open_for_write_and_close_keeps_id(mount):
    data = b"untouched\n"
    dest = mount / "assistants" / unique("keep")
    dest.write_bytes(data)
    fid = file_id(dest)
    before = settled_snapshot(mount)
    os.close(os.open(dest, os.O_WRONLY))
    with open(dest, "r+b"):
        pass
    run("touch", dest)  # utimens: accepted and ignored
    assert file_id(dest) == fid
    held = os.open(dest, os.O_WRONLY | os.O_APPEND)  # a log file kept open, nothing written yet
    try:
        assert file_id(dest) == fid
    finally:
        os.close(held)
    mount.assert_unchanged(before)
    assert_registered(mount, dest, data, "assistants")


def test_append(mount):
    dest = mount / "fine-tune" / unique("append", ".jsonl")
    dest.write_bytes(b'{"a": 1}\n')
    old = file_id(dest)
    with open(dest, "ab") as f:
        f.write(b'{"b": 2}\n')
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b'{"a": 1}\n{"b": 2}\n', "fine-tune")
    # Appending again through the shell's >>.
    run("sh", "-c", f"printf '{{\"c\": 3}}\\n' >> '{dest}'")
    assert file_id(dest) != new
    assert_gone(mount, new)
    assert_registered(mount, dest, b'{"a": 1}\n{"b": 2}\n{"c": 3}\n', "fine-tune")


@pytest.mark.parametrize("before, size, after", [
    (b"0123456789", 4, b"0123"),  # shorter: cut
    (b"abc", 100000, b"abc" + bytes(100000 - 3)),  # longer: padded with zeros
], ids=["shorter", "longer"])
def test_truncate_existing_file(mount, before, size, after):
    dest = mount / "assistants" / unique("trunc")
    dest.write_bytes(before)
    old = file_id(dest)
    run("truncate", "-s", str(size), dest)
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, after, "assistants")


def test_write_past_the_end_leaves_a_hole_of_zeros(mount):
    dest = mount / "user_data" / unique("sparse", ".bin")
    with open(dest, "wb") as f:
        f.write(b"head")
        f.seek(1_000_000)
        f.write(b"tail")
    assert_registered(mount, dest, b"head" + bytes(1_000_000 - 4) + b"tail", "user_data")


def test_read_back_through_the_same_descriptor_before_close(mount):
    dest = mount / "evals" / unique("rw", ".jsonl")
    data = payload(150_000, "rw")
    with open(dest, "w+b") as f:
        f.write(data)
        f.flush()
        f.seek(0)
        assert f.read() == data
        f.seek(10)
        f.write(b"XYZ")
        f.seek(0)
        assert f.read(20) == data[:10] + b"XYZ" + data[13:20]
    assert_registered(mount, dest, data[:10] + b"XYZ" + data[13:], "evals")


def test_read_then_patch_an_existing_file_through_one_descriptor(mount):
    """Copy-on-write with reads before and after the first change, through the same descriptor."""
    original = payload(2 * MiB + 100, "rplus")
    dest = mount / "assistants" / unique("rplus", ".bin")
    dest.write_bytes(original)
    old = file_id(dest)
    with open(dest, "r+b") as f:
        assert f.read(4096) == original[:4096]
        f.seek(MiB + 7)
        assert f.read(10) == original[MiB + 7:MiB + 17]
        f.seek(MiB)
        f.write(b"PATCHED")
        f.seek(MiB - 3)
        assert f.read(13) == original[MiB - 3:MiB] + b"PATCHED" + original[MiB + 7:MiB + 10]
        f.seek(0)
        expected = original[:MiB] + b"PATCHED" + original[MiB + 7:]
        assert f.read() == expected
        # Another descriptor opened meanwhile sees the change too.
        with open(dest, "rb") as other:
            other.seek(MiB)
            assert other.read(7) == b"PATCHED"
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, expected, "assistants")


def test_two_descriptors_patch_one_existing_file(mount):
    """Both opened before either changes anything: both changes land in the one new id."""
    original = payload(300_000, "two-fds")
    dest = mount / "evals" / unique("shared", ".bin")
    dest.write_bytes(original)
    old = file_id(dest)
    first = os.open(dest, os.O_WRONLY)
    second = os.open(dest, os.O_RDWR)
    try:
        os.pwrite(first, b"AAAA", 10)
        os.pwrite(second, b"BBBB", 200_000)
        assert os.pread(second, 4, 10) == b"AAAA"
    finally:
        os.close(first)
        os.close(second)
    expected = original[:10] + b"AAAA" + original[14:200_000] + b"BBBB" + original[200_004:]
    wait_for(lambda: len(rows_named(mount, dest.name, "evals")) == 1 and file_id(dest) != old, 5, "one new id")
    assert_gone(mount, old)
    assert_registered(mount, dest, expected, "evals")


def resident_pages(fd: int, size: int) -> list[bool]:
    """Which pages of the file behind ``fd`` sit in the kernel's page cache (mmap + mincore;
    mapping a file reads none of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        vector = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        return [bool(v & 1) for v in vector]
    finally:
        libc.munmap(address, size)


def test_write_only_descriptor_leaves_no_pages_in_the_cache(mount):
    """W11: what a write-only descriptor (as `cp` opens) writes is not also kept as cached pages."""
    dest = mount / "user_data" / unique("uncached", ".bin")
    size = 16 * 4096
    writer = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        reader = os.open(dest, os.O_RDONLY)  # opened first: its open empties the file's cache
        try:
            os.write(writer, payload(size, "uncached"))
            assert os.fstat(reader).st_size == size
            assert not any(resident_pages(reader, size))
        finally:
            os.close(reader)
    finally:
        os.close(writer)
    assert_registered(mount, dest, payload(size, "uncached"), "user_data")


def test_a_reader_sees_what_a_write_only_descriptor_writes(mount):
    """Write-only descriptors bypass the page cache (W11): a reader's cached pages must not hide
    their writes, whether they grow the file or change bytes already read."""
    dest = mount / "assistants" / unique("direct", ".bin")
    writer = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(writer, b"A" * 100)
        reader = os.open(dest, os.O_RDONLY)
        try:
            assert os.pread(reader, 300, 0) == b"A" * 100  # the page is now in the kernel's cache
            os.write(writer, b"B" * 100)
            assert os.pread(reader, 300, 0) == b"A" * 100 + b"B" * 100
            os.pwrite(writer, b"C" * 10, 0)  # same size: only the write itself can drop the page
            assert os.pread(reader, 300, 0) == b"C" * 10 + b"A" * 90 + b"B" * 100
        finally:
            os.close(reader)
    finally:
        os.close(writer)
    assert_registered(mount, dest, b"C" * 10 + b"A" * 90 + b"B" * 100, "assistants")


def test_a_child_process_closing_its_copy_uploads_nothing(mount):
    """A process that writes and meanwhile starts others (subprocess, fork): the children's
    copies of the descriptor are closed at exec or exit, and that registers nothing partial."""
    dest = mount / "batch" / unique("forking", ".jsonl")
    with open(dest, "wb") as f:
        f.write(b"first half\n")
        f.flush()
        subprocess.run(["true"], check=True)  # its exec closes the inherited close-on-exec copy
        child = os.fork()
        if child == 0:  # a child that closes its copy itself
            os.close(f.fileno())
            os._exit(0)
        os.waitpid(child, 0)
        assert rows_named(mount, dest.name, "batch") == []
        f.write(b"second half\n")
    assert_registered(mount, dest, b"first half\nsecond half\n", "batch")


def test_a_child_that_outlives_the_opener_is_uploaded_at_the_last_close(mount):
    """`Popen(stdout=f)` and the parent closes f at once: the child's output is registered once
    the child is done with it."""
    dest = mount / "evals" / unique("child-output", ".txt")
    with open(dest, "wb") as f:
        child = subprocess.Popen(["sh", "-c", "sleep 0.3; echo done"], stdout=f)
    assert child.wait(10) == 0
    wait_for(lambda: [r["bytes"] for r in rows_named(mount, dest.name, "evals")] == [5], 5,
             "the child's output registered, and only that")
    assert_registered(mount, dest, b"done\n", "evals")


def test_fsync_does_not_register_early(mount):
    dest = mount / "assistants" / unique("synced")
    with open(dest, "wb") as f:
        f.write(b"part one\n")
        f.flush()
        os.fsync(f.fileno())
        with pytest.raises(OSError) as no_id:
            os.getxattr(str(dest), "user.openai.file_id")
        assert no_id.value.errno == errno.ENODATA
        assert not rows_named(mount, dest.name)
        f.write(b"part two\n")
    assert_registered(mount, dest, b"part one\npart two\n", "assistants")


def test_shell_script_output_with_forked_writers(mount):
    """Each child that inherits the descriptor flushes it when it exits; the last close decides."""
    dest = mount / "batch" / unique("script", ".log")
    run("sh", "-c", f"exec > '{dest}'; echo one; /bin/echo two; printf 'three\\n'; /bin/echo four")
    wait_for(lambda: len(rows_named(mount, dest.name, "batch")) == 1, 5, "one row for the script's output")
    assert_registered(mount, dest, b"one\ntwo\nthree\nfour\n", "batch")


@pytest.mark.parametrize("name", ["résumé final.txt", "数据 集.jsonl", "emoji 🎉 (1).md", "semi;colon & quote'.txt"])
def test_unusual_names_are_kept_exactly(mount, tmp_path, name):
    name = f"{uuid_prefix()}-{name}"
    src = tmp_path / "src.bin"
    src.write_bytes(name.encode())
    dest = mount / "assistants" / name
    run("cp", src, dest)
    fid = assert_registered(mount, dest, name.encode(), "assistants")
    assert listed(mount)[fid]["filename"] == name
    assert name in os.listdir(mount / "assistants")


def test_name_that_looks_decorated_is_kept_literally(mount):
    """A new file named like a decorated duplicate (an id nobody has) is just a file with that name."""
    import uuid

    name = f"{unique('looks', '')} (file-{uuid.uuid4().hex}).txt"
    dest = mount / "assistants" / name
    dest.write_bytes(b"literal\n")
    fid = assert_registered(mount, dest, b"literal\n", "assistants")
    assert fid not in name
    assert name in os.listdir(mount / "assistants")


def uuid_prefix() -> str:
    return unique("u", "")


def test_empty_redirect_onto_existing_file(mount):
    dest = mount / "assistants" / unique("emptied")
    dest.write_bytes(b"something\n")
    old = file_id(dest)
    run("sh", "-c", f": > '{dest}'")
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b"", "assistants")


def test_unlink_while_being_written(mount):
    """A new file removed before it is closed is never uploaded."""
    before = settled_snapshot(mount)
    dest = mount / "user_data" / unique("vanishing")
    with open(dest, "wb") as f:
        f.write(b"x" * 100_000)
        f.flush()
        os.unlink(dest)
        assert not os.path.exists(dest)
        f.write(b"y" * 1000)
    assert not rows_named(mount, dest.name)
    assert dest.name not in os.listdir(mount / "user_data")
    settled_snapshot(mount)
    mount.assert_unchanged(before)


def test_install_command(mount, tmp_path):
    src = tmp_path / "tool.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    dest = mount / "assistants" / unique("tool", ".sh")
    run("install", "-m", "0755", src, dest)
    assert_registered(mount, dest, b"#!/bin/sh\necho hi\n", "assistants")
    run("install", "-m", "0644", src, dest)  # again, over the existing name
    assert len(rows_named(mount, dest.name, "assistants")) == 1


def test_tar_extract_into_purpose(mount, tmp_path):
    files = _folder(tmp_path, "tar")
    archive = tmp_path / "files.tar"
    run("tar", "-cf", archive, "-C", tmp_path / "src", *files)
    run("tar", "-xf", archive, "-C", mount / "fine-tune")
    _assert_folder(mount, "fine-tune", files)


def test_sed_in_place(mount):
    """sed -i writes a new file under a name of its own and renames it over the original."""
    dest = mount / "evals" / unique("config", ".yaml")
    dest.write_bytes(b"model: small\nseed: 1\n")
    old = file_id(dest)
    run("sed", "-i", "s/small/large/", dest)
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b"model: large\nseed: 1\n", "evals")
    assert not [r for r in mount.rows().values() if r["filename"].startswith("sed")]
    assert not [n for n in os.listdir(mount / "evals") if n.startswith("sed")]


def test_shutil_copy2_into_purpose(mount, tmp_path):
    src = tmp_path / "copy2.bin"
    data = payload(70_000, "copy2")
    src.write_bytes(data)
    dest = mount / "vision" / unique("copy2", ".bin")
    shutil.copy2(src, dest)
    assert_registered(mount, dest, data, "vision")


def test_cp_a_within_the_mount_makes_a_new_file(mount):
    src = mount / "assistants" / unique("original")
    src.write_bytes(b"copy me\n")
    first = file_id(src)
    dest = mount / "vision" / unique("copy")
    result = run("cp", "-a", src, dest)
    assert result.stderr == "", result.stderr
    second = file_id(dest)
    assert second != first
    assert_registered(mount, src, b"copy me\n", "assistants")
    assert_registered(mount, dest, b"copy me\n", "vision")


def test_truncate_by_path_without_an_open_file(mount):
    dest = mount / "assistants" / unique("cut")
    dest.write_bytes(b"0123456789")
    old = file_id(dest)
    os.truncate(dest, 3)
    wait_for(lambda: file_id(dest) != old, 5, "a new id after truncate(2)")
    assert_gone(mount, old)
    assert_registered(mount, dest, b"012", "assistants")


def _old_file(m: Mount, purpose: str = "user_data"):
    """A file created an hour ago (planted), once the mount lists it: its mtime is far from now."""
    created = int(time.time()) - 3600
    planted = m.plant(unique("old"), purpose, b"attrs\n", created_at=created)
    path = m / purpose / planted.filename
    wait_for(lambda: path.exists(), 5, "the planted file listed")
    return planted, path


def test_chmod_chown_and_touch_change_nothing(mount):
    planted, dest = _old_file(mount)
    before = settled_snapshot(mount)
    run("chmod", "600", dest)
    run("chown", f"{os.getuid()}:{os.getgid()}", dest)
    st = os.stat(dest)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime, st.st_size) == (0o644, planted.created_at, 6)
    run("touch", "-d", "2001-01-01", dest)
    run("touch", dest)
    st = os.stat(dest)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime, st.st_size) == (0o644, planted.created_at, 6)
    assert file_id(dest) == planted.id
    settled_snapshot(mount)
    mount.assert_unchanged(before)


def test_mtime_is_created_at_right_after_touch(mount):
    planted, dest = _old_file(mount)
    run("touch", dest)
    assert os.stat(dest).st_mtime == planted.created_at
    os.close(os.open(dest, os.O_WRONLY))
    assert os.stat(dest).st_mtime == planted.created_at


@pytest.mark.parametrize("existing", [True, False], ids=["r+", "w+"])
def test_memmap_pattern_descriptor_closed_before_the_writes(mount, existing):
    """numpy.memmap: map the file, close the descriptor at once, write through the map, flush, unmap."""
    import mmap

    dest = mount / "user_data" / unique("memmap", ".bin")
    old = None
    if existing:
        dest.write_bytes(bytes(8192))
        old = file_id(dest)
        fd = os.open(dest, os.O_RDWR)
    else:
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.ftruncate(fd, 8192)
    mapped = mmap.mmap(fd, 8192)
    os.close(fd)
    mapped[0:5] = b"HELLO"
    mapped[8000:8005] = b"WORLD"
    mapped.flush()
    mapped.close()
    expected = b"HELLO" + bytes(7995) + b"WORLD" + bytes(187)

    def uploaded():
        matches = rows_named(mount, dest.name, "user_data")
        return len(matches) == 1 and matches[0]["id"] != old and body(mount, matches[0]["id"]) == expected

    wait_for(uploaded, 5, "the mapped writes registered")
    if old:
        assert_gone(mount, old)
    assert_registered(mount, dest, expected, "user_data")


def test_cp_onto_itself_is_refused_and_harmless(mount):
    dest = mount / "assistants" / unique("self")
    dest.write_bytes(b"myself\n")
    fid = file_id(dest)
    result = run("cp", dest, dest, check=False)
    assert result.returncode != 0
    assert file_id(dest) == fid
    assert_registered(mount, dest, b"myself\n", "assistants")


def test_write_through_shared_mmap(mount):
    import mmap

    dest = mount / "user_data" / unique("mapped", ".bin")
    dest.write_bytes(bytes(10000))
    old = file_id(dest)
    with open(dest, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
        mapped[100:105] = b"HELLO"
        mapped.flush()
        mapped.close()
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, bytes(100) + b"HELLO" + bytes(10000 - 105), "user_data")


# --- folders of files -------------------------------------------------------------------------

def _folder(tmp_path, tag: str) -> dict[str, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    prefix = unique(tag, "")
    files = {f"{prefix}-{i}.dat": payload(size, (tag, i)) for i, size in enumerate([10, 4096, 200_000, 1_500_000])}
    for name, data in files.items():
        (src / name).write_bytes(data)
    return files


def _assert_folder(m: Mount, purpose: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert_registered(m, m / purpose / name, data, purpose)
    ids = [file_id(m / purpose / name) for name in files]
    assert len(set(ids)) == len(files)
    for fid in ids:
        assert not uploaded_name(m, fid).startswith("."), uploaded_name(m, fid)
    assert not [r for r in m.rows().values() if r["filename"].startswith(".")]


def test_cp_a_folder_into_purpose(mount, tmp_path):
    files = _folder(tmp_path, "cpa")
    run("cp", "-a", *[tmp_path / "src" / name for name in files], mount / "vision")
    _assert_folder(mount, "vision", files)


def test_cp_r_folder_contents_into_purpose(mount, tmp_path):
    files = _folder(tmp_path, "cpr")
    run("cp", "-r", "-T", tmp_path / "src", mount / "assistants")
    _assert_folder(mount, "assistants", files)


def test_rsync_a_folder_into_purpose(mount, tmp_path):
    files = _folder(tmp_path, "rsync")
    before = set(mount.rows())
    run("rsync", "-a", f"{tmp_path / 'src'}/", f"{mount / 'user_data'}/")
    _assert_folder(mount, "user_data", files)
    added = set(mount.rows()) - before
    assert len(added) == len(files), [mount.rows()[i]["filename"] for i in added]
    assert not [n for n in os.listdir(mount / "user_data") if n.startswith(".")]
    # A second rsync of the same tree changes nothing (sizes and mtimes may differ: only check no dupes).
    run("rsync", "-a", f"{tmp_path / 'src'}/", f"{mount / 'user_data'}/")
    for name, data in files.items():
        assert_registered(mount, mount / "user_data" / name, data, "user_data")


def test_rsync_inplace_updates_existing_files(mount, tmp_path):
    files = _folder(tmp_path, "inplace")
    run("rsync", "-a", f"{tmp_path / 'src'}/", f"{mount / 'user_data'}/")
    old_ids = {name: file_id(mount / "user_data" / name) for name in files}
    changed = {}
    for i, name in enumerate(files):
        # Shorter, so rsync sees a change: it truncates at the end.
        data = payload(len(files[name]) // 2 + 1, ("inplace-2", i))
        (tmp_path / "src" / name).write_bytes(data)
        changed[name] = data
    run("rsync", "-a", "--inplace", "--no-whole-file", f"{tmp_path / 'src'}/", f"{mount / 'user_data'}/")
    for name, data in changed.items():
        path = mount / "user_data" / name
        assert file_id(path) != old_ids[name]
        assert_gone(mount, old_ids[name])
        assert_registered(mount, path, data, "user_data")


def test_editor_style_save(mount):
    name = unique("notes")
    dest = mount / "assistants" / name
    dest.write_bytes(b"draft 1\n")
    old = file_id(dest)
    swap = mount / "assistants" / f".{name}.swp"
    seen_swap: list[str] = []
    stop = threading.Event()

    def watch_rows():
        while not stop.is_set():
            seen_swap.extend(r["filename"] for r in mount.rows().values() if r["filename"].startswith("."))
            stop.wait(0.01)

    watcher = threading.Thread(target=watch_rows)
    watcher.start()
    try:
        with open(swap, "wb") as f:
            f.write(b"draft 2\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(swap, dest)
    finally:
        stop.set()
        watcher.join()
    assert not seen_swap, f"a temporary name reached the table: {seen_swap}"
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b"draft 2\n", "assistants")
    assert uploaded_name(mount, new) == name
    assert not os.path.exists(swap)


@pytest.mark.parametrize("tool", ["vim", "ed"])
def test_real_editor_save(mount, tool, tmp_path):
    """vim (swap file, write-backup) and ed (rewrite in place) saving an edit into the mount."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed")
    dest = mount / "assistants" / unique(tool, ".md")
    dest.write_bytes(b"status: draft\nbody\n")
    old = file_id(dest)
    env = {**os.environ, "HOME": str(tmp_path)}
    if tool == "vim":
        command = ["vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c", "set writebackup swapfile",
                   "-c", "%s/draft/final/", "-c", "wq", str(dest)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    else:
        result = subprocess.run(["ed", "-s", str(dest)], input=",s/draft/final/\nw\nq\n", capture_output=True,
                                text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    new = file_id(dest)
    assert new != old
    assert_gone(mount, old)
    assert_registered(mount, dest, b"status: final\nbody\n", "assistants")
    leftovers = [r["filename"] for r in mount.rows().values()
                 if dest.name in r["filename"] and r["filename"] != dest.name]
    assert not leftovers, leftovers
    assert sorted(n for n in os.listdir(mount / "assistants") if dest.stem in n) == [dest.name]


def test_unlink_temp_file_discards_it(mount):
    before = settled_snapshot(mount)
    temp = mount / "assistants" / unique("scratch", ".tmp")
    temp.write_bytes(b"scratch data")
    assert not rows_named(mount, temp.name)
    os.unlink(temp)
    assert not os.path.exists(temp)
    mount.assert_unchanged(before)


# --- many writers -------------------------------------------------------------------------------

def test_concurrent_writers(mount):
    prefix = unique("conc", "")
    jobs = {f"{prefix}-{t}-{i}.bin": payload(random.randint(1, 100_000), (t, i)) for t in range(16) for i in range(5)}
    purposes = ["assistants", "batch", "user_data", "evals"]

    def purpose_of(name):
        return purposes[sum(name.encode()) % len(purposes)]

    def writer(t):
        for i in range(5):
            name = f"{prefix}-{t}-{i}.bin"
            with open(mount / purpose_of(name) / name, "wb") as f:
                f.write(jobs[name])

    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(writer, t) for t in range(16)]:
            future.result()
    rows = [r for r in mount.rows().values() if r["filename"].startswith(prefix)]
    assert sorted(r["filename"] for r in rows) == sorted(jobs)
    shown = [f for f in listed(mount).values() if f["filename"].startswith(prefix)]
    assert len(shown) == len(jobs)
    for name, data in jobs.items():
        assert_registered(mount, mount / purpose_of(name) / name, data, purpose_of(name))


def test_concurrent_overwrites_of_one_name(mount):
    """Eight writers race to replace one name: one id survives, every other one is deleted."""
    dest = mount / "assistants" / unique("contested")
    dest.write_bytes(b"first\n")
    first = file_id(dest)
    versions = [payload(50_000 + i, ("contested", i)) for i in range(8)]
    barrier = threading.Barrier(len(versions))

    def overwrite(data):
        barrier.wait()
        with open(dest, "wb") as f:
            f.write(data)

    with ThreadPoolExecutor(len(versions)) as pool:
        for future in [pool.submit(overwrite, v) for v in versions]:
            future.result()
    matches = wait_for(lambda: len(rows_named(mount, dest.name, "assistants")) == 1 and rows_named(mount, dest.name),
                       5, "one row left for the name")
    assert matches[0]["id"] != first
    assert_gone(mount, first)
    # The writers share one file, as on a local disk: the bytes may mix, but one file holds them.
    assert_registered(mount, dest, body(mount, matches[0]["id"]), "assistants")


def test_written_file_readable_by_id(mount):
    data = payload(200_000, "by-id")
    dest = mount / "vision" / unique("image", ".png")
    dest.write_bytes(data)
    fid = file_id(dest)
    assert (mount / "by-id" / fid).read_bytes() == data
    assert os.getxattr(str(mount / "by-id" / fid), "user.openai.file_id").decode() == fid


def test_append_to_multi_mib_file(mount):
    original = payload(9 * MiB + 1, "append-big")
    dest = mount / "batch" / unique("grow", ".jsonl")
    dest.write_bytes(original)
    old = file_id(dest)
    with open(dest, "ab") as f:
        f.write(b"tail\n")
    assert file_id(dest) != old
    assert_gone(mount, old)
    assert_registered(mount, dest, original + b"tail\n", "batch")


@pytest.mark.parametrize("mount", ["s3"], indirect=True)
def test_sequential_write_uploads_parts_before_close(mount):
    """A big sequential write is streamed as a multipart upload while the data arrives."""
    dest = mount / "batch" / unique("streamed", ".bin")
    data = payload(18 * MiB, "streamed")
    with open(dest, "wb") as f:
        for start in range(0, len(data), MiB):
            f.write(data[start:start + MiB])
        f.flush()
        wait_for(lambda: mount.pending_uploads(), 10, "a multipart upload under way before close")
        assert not rows_named(mount, dest.name)
    assert mount.pending_uploads() == []
    assert_registered(mount, dest, data, "batch")


@pytest.fixture
def twin_mount(mount, fuse):
    """A second mount on the same store and database as ``mount`` (its own staging folder)."""
    twin = Mount(mount.backend, mount.server, postgres=mount.postgres)
    twin.data_dir, twin.bucket = mount.data_dir, mount.bucket
    try:
        twin.start()
        yield twin
    finally:
        twin.stop()
        shutil.rmtree(twin.root, ignore_errors=True)


def test_second_mount_on_the_same_store_follows_writes(mount, twin_mount):
    name = unique("shared")
    here, there = mount / "assistants" / name, twin_mount / "assistants" / name
    here.write_bytes(b"version 1\n")
    first = file_id(here)
    wait_for(lambda: there.exists() and file_id(there) == first, 5, "the write shown in the other mount")
    assert there.read_bytes() == b"version 1\n"
    there.write_bytes(b"version 2, longer\n")
    second = file_id(there)
    assert second != first
    wait_for(lambda: file_id(here) == second, 5, "the overwrite shown in the first mount")
    assert here.read_bytes() == b"version 2, longer\n"
    assert_gone(mount, first)
    os.unlink(here)
    wait_for(lambda: not there.exists(), 5, "the unlink shown in the other mount")
    assert_gone(mount, second)


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


@pytest.mark.parametrize("mount", ["s3"], indirect=True)
def test_big_sequential_write_keeps_memory_bounded(mount):
    """256 MiB written in order: the mount's memory grows by a few parts, not by the file."""
    pid = mount.process.pid
    start = _rss_mib(pid)
    peak, stop = [start], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib(pid))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    dest = mount / "batch" / unique("huge", ".bin")
    chunk = payload(MiB, "huge")
    try:
        with open(dest, "wb") as f:
            for _ in range(256):
                f.write(chunk)
    finally:
        stop.set()
        sampler.join()
    fid = file_id(dest)
    assert mount.rows()[fid]["bytes"] == 256 * MiB
    assert peak[0] - start < 160, f"the mount grew from {start} MiB to {peak[0]} MiB for a 256 MiB write"
    os.unlink(dest)  # give the session's in-memory S3 server its memory back
    assert_gone(mount, fid)


# --- staging cap --------------------------------------------------------------------------------

@pytest.fixture(params=["local", "s3"])
def capped_mount(request, fuse):
    server = request.getfixturevalue("s3_server") if request.param == "s3" else None
    m = Mount(request.param, server, extra_args=["--staging-max-mb", "1"])
    try:
        m.start()
        m.baseline = m.snapshot()
        yield m
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def test_staging_cap_gives_enospc(capped_mount):
    m = capped_mount
    dest = m / "assistants" / unique("toobig", ".bin")
    chunk = payload(128 * 1024, 6)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    written, failure = 0, None
    try:
        while written < 3 * MiB:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                failure = exc
                break
    finally:
        try:
            os.close(fd)
            closed = None
        except OSError as exc:
            closed = exc
    assert failure is not None, f"wrote {written} bytes past a 1 MiB staging cap"
    assert failure.errno == errno.ENOSPC, failure
    assert closed is not None and closed.errno == errno.ENOSPC, "close() must report the failed write too"
    assert written <= 1 * MiB + len(chunk)
    assert not m.rows() and not m.object_keys()
    wait_for(lambda: m.staged_files() == m.baseline["staged"], 5, "staging emptied")
    wait_for(lambda: dest.name not in os.listdir(m / "assistants"), 3, "the partial file gone")
    assert not listed(m)
    # cp reports it too, and leaves nothing behind.
    src = m.root / "big-source.bin"
    src.write_bytes(payload(2 * MiB, 7))
    result = run("cp", src, m / "assistants" / "copied.bin", check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr, result.stderr
    assert not m.rows() and not m.object_keys()
    wait_for(lambda: m.staged_files() == m.baseline["staged"], 5, "staging emptied after cp")
    # The space is given back: a small file still goes through.
    small = m / "assistants" / unique("small")
    try:
        small.write_bytes(b"fits\n")
    except OSError as exc:
        raise AssertionError(f"a 5-byte file after the refused ones failed: {exc!r}; staged now: "
                             f"{sorted(m.staged_files())}; log: {m.log_tail(10)}") from exc
    assert_registered(m, small, b"fits\n", "assistants")
    settled_snapshot(m)
    m.assert_consistent(m.baseline)


def test_staging_cap_counts_every_open_file(capped_mount):
    """Two files open at once share the cap: the second one past it gets ENOSPC, the first is uploaded."""
    m = capped_mount
    first = m / "assistants" / unique("first", ".bin")
    second = m / "assistants" / unique("second", ".bin")
    a, b = payload(600 * 1024, 9), payload(600 * 1024, 10)
    with open(first, "wb") as f1:
        f1.write(a)
        f1.flush()
        fd = os.open(second, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            with pytest.raises(OSError) as full:
                for start in range(0, len(b), 128 * 1024):
                    os.write(fd, b[start:start + 128 * 1024])
            assert full.value.errno == errno.ENOSPC
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
    assert_registered(m, first, a, "assistants")
    assert not rows_named(m, second.name)
    settled_snapshot(m)
    m.assert_consistent(m.baseline)


def test_statfs_reflects_the_staging_cap(capped_mount):
    m = capped_mount
    idle = os.statvfs(m.mountpoint)
    assert idle.f_bsize == 4096 and idle.f_namemax == 255
    assert idle.f_blocks * idle.f_bsize == 1 * MiB
    assert idle.f_bfree == idle.f_blocks
    dest = m / "assistants" / unique("half", ".bin")
    data = payload(512 * 1024, 8)
    with open(dest, "wb") as f:
        f.write(data)
        f.flush()
        busy = os.statvfs(m.mountpoint)
        assert busy.f_bfree * busy.f_bsize <= 1 * MiB - len(data), (busy.f_bfree, busy.f_blocks)
    assert_registered(m, dest, data, "assistants")
    wait_for(lambda: os.statvfs(m.mountpoint).f_bfree == idle.f_bfree, 5, "the staged space given back")
    settled_snapshot(m)
    m.assert_consistent(m.baseline)


# --- unlink -------------------------------------------------------------------------------------

def test_rm_deletes_row_and_object(mount, tmp_path):
    dest = mount / "batch" / unique("doomed", ".jsonl")
    dest.write_bytes(b'{"x": 1}\n')
    fid = file_id(dest)
    run("rm", dest)
    assert is_gone(mount, fid)
    assert not os.path.exists(dest)
    assert dest.name not in os.listdir(mount / "batch")
    assert fid not in listed(mount)


def test_rm_by_id_is_refused(mount):
    dest = mount / "assistants" / unique("kept")
    dest.write_bytes(b"kept\n")
    fid = file_id(dest)
    with pytest.raises(PermissionError):
        os.unlink(mount / "by-id" / fid)
    assert fid in mount.rows()
    assert dest.read_bytes() == b"kept\n"
