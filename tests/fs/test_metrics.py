"""The mount's control socket: ``/metrics`` and ``/status`` over a private Unix socket of its own."""

import http.client
import json
import os
import socket
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fs.mounting import Mount
from tests.helpers import wait_for


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def get(path, url: str) -> tuple[int, str, bytes]:
    conn = UnixConnection(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def s3_mount(fuse, s3_server):
    m = Mount("s3", s3_server)
    try:
        yield m.start()
    finally:
        m.stop()


def control_socket(m: Mount):
    found = list((m.root / "run").glob("**/mounts/*.sock"))
    assert len(found) == 1, found
    return found[0]


def test_control_socket_serves_metrics_and_status_and_goes_with_the_mount(s3_mount):
    path = control_socket(s3_mount)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.with_suffix(".pid").read_text() == str(s3_mount.process.pid)

    code, content_type, body = get(path, "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=")
    before = samples(body.decode())
    assert value(before, "s3filesfs_files_uploaded_total") == 0

    data = os.urandom(300_000)
    (s3_mount / "batch" / "one.bin").write_bytes(data)
    assert (s3_mount / "batch" / "one.bin").read_bytes() == data
    with pytest.raises(OSError):  # files live in purpose folders: one at the top is refused
        (s3_mount / "stray.txt").write_bytes(b"x")

    def uploaded():
        return value(samples(get(path, "/metrics")[2].decode()), "s3filesfs_files_uploaded_total") == 1

    wait_for(uploaded, 20, "the upload to be counted")
    after = samples(get(path, "/metrics")[2].decode())
    assert value(after, "s3filesfs_uploaded_bytes_total") == len(data)
    assert sum(v for (name, labels), v in after.items() if name == "s3filesfs_s3_request_seconds_count") >= 2
    assert sum(v for (name, _), v in after.items() if name == "s3filesfs_errors_total") >= 1
    assert value(after, "s3filesfs_upload_queue") == 0
    assert ("s3filesfs_staging_bytes", ()) in after

    code, content_type, body = get(path, "/status")
    assert code == 200 and content_type == "application/json"
    status = json.loads(body)
    assert status["pid"] == s3_mount.process.pid
    assert status["mountpoint"] == str(s3_mount.mountpoint)
    assert status["files_being_written"] == [] and status["write_back"] == []
    assert status["staging_bytes"] == 0 and status["staging_max_bytes"] > 0
    assert [error["where"] for error in status["last_errors"]] == ["create"], status
    assert get(path, "/nothing")[0] == 404

    # `s3filesfs status` shows the mount (no daemon runs: exit 1, the mount's section still there).
    shown = s3_mount.cli("status", "--json", check=False)
    assert shown.returncode == 1, shown.stderr
    mounts = json.loads(shown.stdout)["mounts"]
    assert [m["mountpoint"] for m in mounts] == [str(s3_mount.mountpoint)]
    text = s3_mount.cli("status", check=False).stdout
    assert f"mount {s3_mount.mountpoint} (pid {s3_mount.process.pid}): 0 being written, 0 waiting" in text

    assert s3_mount.stop() == 0
    assert not path.exists() and not path.is_symlink()
    assert "mount " not in s3_mount.cli("status", check=False).stdout
