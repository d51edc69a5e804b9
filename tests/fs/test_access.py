"""A real mount acting as one identity (``--principal alice --attribute teams=ml``): another's files are
not in its folders, ``by-id/`` or ``index.jsonl``, and their paths answer ENOENT; what it writes is
owned by it. The CLI with the same flags shows the same, and ``--all`` shows everything."""

import errno
import io
import json
import os
import shutil

import pytest

from s3filesfs.access import ANONYMOUS, Identity
from tests.fs.conftest import BACKENDS
from tests.fs.mounting import Mount
from tests.helpers import wait_for

ALICE = Identity.of("alice", {"teams": ["ml"]})
CAROL = Identity.of("carol", {"teams": ["ml", "infra"]})  # shares a team with alice
BOB = Identity.of("bob", {"teams": ["web"]})


class AliceMount(Mount):
    @property
    def global_args(self) -> list[str]:
        return [*super().global_args, "--principal", "alice", "--attribute", "teams=ml"]


@pytest.fixture(params=BACKENDS)
def alice_mount(request, fuse):
    m = AliceMount(request.param, request.getfixturevalue("s3_server") if request.param == "s3" else None)
    try:
        m.start()
        yield m
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def test_a_mount_shows_only_what_its_identity_may_see(alice_mount):
    m = alice_mount
    baseline = m.snapshot()
    service = m.service()
    made = {who: service.acting_as(identity).create(io.BytesIO(f"{who}\n".encode()), f"{who}.txt", "assistants")
            for who, identity in (("alice", ALICE), ("carol", CAROL), ("bob", BOB), ("public", ANONYMOUS))}
    visible = {made[who].id for who in ("alice", "carol", "public")}
    hidden = made["bob"]

    folder = m.mountpoint / "assistants"
    wait_for(lambda: "public.txt" in os.listdir(folder), 10, "the mount to reload")
    assert sorted(os.listdir(folder)) == ["alice.txt", "carol.txt", "public.txt"]
    assert set(os.listdir(m.mountpoint / "by-id")) == visible
    index = [json.loads(line) for line in (m.mountpoint / "index.jsonl").read_text().splitlines()]
    assert {entry["id"] for entry in index} == visible
    assert (folder / "carol.txt").read_bytes() == b"carol\n"
    for path in (m.mountpoint / "by-id" / hidden.id, folder / "bob.txt"):
        with pytest.raises(FileNotFoundError):
            os.stat(path)
        with pytest.raises(FileNotFoundError):
            open(path, "rb")
    with pytest.raises(OSError) as removing:
        os.unlink(m.mountpoint / "by-id" / hidden.id)
    assert removing.value.errno == errno.ENOENT
    assert service.retrieve(hidden.id).filename == "bob.txt"  # untouched

    # Written through the mount: owned by alice, as Llama Stack would record her upload.
    (folder / "notes.txt").write_bytes(b"mine\n")
    written = next(f for f in service.list().data if f.filename == "notes.txt")
    assert {f.id for f in service.acting_as(BOB).list().data} == {hidden.id, made["public"].id}
    assert service.acting_as(CAROL).retrieve(written.id).filename == "notes.txt"

    # The CLI with the same identity, and the operator's view.
    shown = json.loads(m.cli("ls", "--json").stdout)
    assert {f["id"] for f in shown["data"]} == visible | {written.id}
    everything = json.loads(m.cli("ls", "--all", "--json").stdout)
    assert {f["id"] for f in everything["data"]} == visible | {written.id, hidden.id}
    refused = m.cli("info", hidden.id, check=False)
    missing = m.cli("info", "file-" + "0" * 32, check=False)
    assert refused.returncode == missing.returncode == 1
    assert refused.stderr == missing.stderr.replace("file-" + "0" * 32, hidden.id)
    assert m.cli("cat", hidden.id, check=False).returncode == 1
    assert m.cli("cat", "--all", hidden.id).stdout == "bob\n"
    assert m.cli("rm", hidden.id, check=False).returncode == 1
    assert service.has_row(hidden.id)
    m.assert_consistent(baseline)
