"""Two hosts on one store: one PostgreSQL database and one bucket, shared by two real mounts and two
sync daemons that differ in everything a host owns (home, config file, staging folder, watch folder,
socket, host id).

Everything is observed as a user would: through the mount paths, the daemons' sockets and their
watch folders. A change made on one host shows on the other once the other has reloaded its
listing, so every such check polls against a deadline instead of assuming how that happens.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from s3filesfs import config
from s3filesfs.files import open_service
from s3filesfs.metadata import MetadataStore
from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

PROPAGATION = 15.0  # deadline for a change on one host to show on the other (about a second, normally)


class HostMount(Mount):
    """A mount configured by its host's config file alone (``S3FILESFS_CONFIG``), no flags."""

    def __init__(self, server, bucket: str, root: Path):
        super().__init__("s3", server, root=root)
        self.bucket = bucket
        self.extra_env: dict[str, str] = {}

    @property
    def env(self) -> dict:
        return {**super().env, **self.extra_env}

    @property
    def global_args(self) -> list[str]:
        return []


class Host:
    """One host: a mount and a sync daemon with a home of their own and one config file."""

    def __init__(self, name: str, server, bucket: str, pg, socket_dir: Path):
        self.name = name
        self.mount = HostMount(server, bucket, Path(tempfile.mkdtemp(prefix=f"s3h-{name}-", dir="/tmp")))
        root = self.mount.root
        self.watch = root / "S3Files"
        self.socket = socket_dir / f"{name}.sock"
        self.config_path = root / "config" / "s3filesfs" / "config.yaml"
        self.config_path.parent.mkdir(parents=True)
        # As docs/configuration.md shows it: the database's password from the environment.
        document = {
            "host_id": name,
            **server.settings_values(bucket),
            "metadata_store": {"type": "postgres", "host": pg.host, "port": pg.port, "db": pg.db,
                               "user": pg.user, "password": "${env.PGPASSWORD}"},
            "data_dir": str(root / "data"),
            "mount": {"staging_dir": str(self.mount.staging)},
            "sync": {"watch_dir": str(self.watch), "settle_seconds": 0.3},
            "api": {"socket": str(self.socket)},
        }
        self.config_path.write_text(yaml.safe_dump(document))
        self.mount.extra_env = {"S3FILESFS_CONFIG": str(self.config_path), "PGPASSWORD": pg.password}
        self.env = self.mount.env  # the daemon's: the same home, config file and secrets
        self.daemon: subprocess.Popen | None = None
        self.client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://daemon",
                                   timeout=30)

    def start_daemon(self) -> None:
        with open(self.mount.root / "daemon.log", "ab") as log:
            self.daemon = subprocess.Popen([sys.executable, "-m", "s3filesfs", "daemon"], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_daemon(self) -> None:
        assert self.daemon is not None
        wait_for(lambda: self.daemon.poll() is not None or self.client.get("/v1/status").status_code == 200,
                 30, f"the daemon of {self.name} to answer")
        assert self.daemon.poll() is None, (self.mount.root / "daemon.log").read_text()

    def listed(self) -> list[dict]:
        response = self.client.get("/v1/files", params={"order": "asc"})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def drop(self, purpose: str, name: str, body: bytes) -> None:
        """Put a finished file into the watch folder the way a program should: written aside, moved in."""
        aside = self.mount.root / f".{name}.part"
        aside.write_bytes(body)
        (self.watch / purpose).mkdir(parents=True, exist_ok=True)
        aside.rename(self.watch / purpose / name)

    def stop(self) -> None:
        self.client.close()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.mount.stop()


@pytest.fixture
def hosts(fuse, s3_server, postgres_server, monkeypatch):
    pg = postgres_server.new_role()
    monkeypatch.setenv("PGPASSWORD", pg.password)  # for this process's own look behind the hosts' backs
    bucket = s3_server.new_bucket_name()
    socket_dir = Path(tempfile.mkdtemp(prefix="s3h-", dir="/tmp"))
    made = [Host(name, s3_server, bucket, pg, socket_dir) for name in ("host-a", "host-b")]
    try:
        for host in made:
            host.start_daemon()  # they start while the mounts do
        for host in made:
            host.mount.start()
        for host in made:
            host.wait_daemon()
        yield made
    finally:
        for host in made:
            host.stop()
        for host in made:
            shutil.rmtree(host.mount.root, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def xattr(path: Path, name: str = "user.openai.file_id") -> str:
    return os.getxattr(path, name).decode()


def reads(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def test_two_hosts_share_one_store(hosts):
    a, b = hosts
    A, B = a.mount, b.mount

    # Written on A, read on B: the same bytes.
    name = unique("from-a")
    body = os.urandom(300_000)
    (A / "assistants" / name).write_bytes(body)
    assert wait_for(lambda: reads(B / "assistants" / name) == body, PROPAGATION, "A's file on B")
    assert xattr(B / "assistants" / name) == xattr(A / "assistants" / name)

    # B's daemon lists A's file over its socket, and serves its bytes.
    file_id = xattr(A / "assistants" / name)
    assert wait_for(lambda: [f for f in b.listed() if f["id"] == file_id], PROPAGATION,
                    "A's file in the listing of B's daemon")[0]["filename"] == name
    assert b.client.get(f"/v1/files/{file_id}/content").content == body

    # Renamed on B, shown renamed on A.
    renamed = unique("renamed-on-b")
    os.rename(B / "assistants" / name, B / "batch" / renamed)
    wait_for(lambda: reads(A / "batch" / renamed) == body and name not in os.listdir(A / "assistants"),
             PROPAGATION, "B's rename on A")
    assert xattr(A / "batch" / renamed) == file_id

    # The same name written on both at once: both kept, under the duplicate rule, alike on both hosts.
    same = unique("same", ".txt")
    stem = same[:-4]
    handles = {host: os.open(host / "evals" / same, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) for host in (A, B)}
    bodies = {A: b"written on host-a\n", B: b"written on host-b\n"}
    def write_and_close(host) -> None:
        os.write(handles[host], bodies[host])
        os.close(handles[host])  # registers it: both close at once, each before seeing the other's

    writers = [threading.Thread(target=write_and_close, args=(host,)) for host in (A, B)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    def both_shown(host):
        shown = sorted(n for n in os.listdir(host / "evals") if n.startswith(stem))
        return shown if len(shown) == 2 else None

    shown = wait_for(lambda: both_shown(A) == both_shown(B) and both_shown(A), PROPAGATION,
                     "both writes of one name on both hosts")
    files = {}
    for shown_name in shown:
        path = A / "evals" / shown_name
        files[xattr(path)] = (int(xattr(path, "user.openai.created_at")), shown_name, path.read_bytes())
    older, younger = sorted(files, key=lambda fid: (files[fid][0], fid))
    assert files[older][1] == same
    assert files[younger][1] == f"{stem} ({younger}).txt"
    assert sorted(body for _, _, body in files.values()) == sorted(bodies.values())
    for shown_name in shown:  # B shows each name with the same file and bytes
        assert (B / "evals" / shown_name).read_bytes() == (A / "evals" / shown_name).read_bytes()
        assert xattr(B / "evals" / shown_name) == xattr(A / "evals" / shown_name)

    # Deleted on A, gone on B.
    os.unlink(A / "batch" / renamed)
    wait_for(lambda: renamed not in os.listdir(B / "batch"), PROPAGATION, "A's delete on B")
    assert reads(B / "batch" / renamed) is None
    assert b.client.get(f"/v1/files/{file_id}").status_code == 404

    # The two daemons' drop folders hold the same name: both uploaded, each journal has its own.
    dropped = unique("dropped", ".txt")
    a.drop("assistants", dropped, b"dropped on host-a\n")
    b.drop("assistants", dropped, b"dropped on host-b\n")

    def both_uploaded():
        found = [f for f in b.listed() if f["filename"] == dropped]
        return found if len(found) == 2 else None

    found = wait_for(both_uploaded, PROPAGATION, "both dropped files registered")
    contents = {f["id"]: b.client.get(f"/v1/files/{f['id']}/content").content for f in found}
    assert sorted(contents.values()) == [b"dropped on host-a\n", b"dropped on host-b\n"]
    for host in (a, b):
        wait_for(lambda h=host: h.client.get("/v1/status").json()["counts"]["journal"] == {"done": 1},
                 PROPAGATION, f"the journal of {host.name} to hold its one upload")
    store = MetadataStore(config.load(a.config_path).metadata_location)
    try:
        for host in (a, b):
            entry = store.journal_get(host.name, f"assistants/{dropped}")
            assert entry is not None and contents[entry["file_id"]] == f"dropped on {host.name}\n".encode()
    finally:
        store.close()

    # Bucket and table agree, and no upload is left recorded as under way.
    service = open_service(config.load(a.config_path))
    try:
        report = service.check()
        assert report.clean, report.to_dict()
        wait_for(lambda: service.metadata.intents() == [], PROPAGATION, "no upload left recorded as under way")
    finally:
        service.metadata.close()
