"""The daemon's secrets and its socket: no credential in its log at any level, no socket in a folder
someone else controls, and no start without its bucket."""

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from s3filesfs.daemon.service import DaemonService
from tests.daemon.conftest import socket_client, wait_for, write
from tests.s3server import SECRET_KEY, free_port

SCRIPT = Path(sys.executable).parent / "s3filesfs"
SESSION_TOKEN = "daemon-session-token-31415"
API_KEY = "daemon-api-key-27182-never-logged"


def start_daemon(world, log_path: Path, *global_flags, env=None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([str(SCRIPT), "--config", str(world.config_path), *global_flags, "daemon"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
    finally:
        log.close()


@pytest.fixture
def processes():
    started: list = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("http_debug", [False, True], ids=["debug", "debug-http"])
def test_daemon_log_never_shows_a_secret(env, tmp_path, processes, http_debug):
    port = free_port()
    world = env(aws_session_token=SESSION_TOKEN, api={"listen": f"127.0.0.1:{port}",
                                                      "api_key_env": "S3FILESFS_TEST_API_KEY"})
    log_path = tmp_path / "daemon.log"
    flags = ["--debug", *(["--debug-http"] if http_debug else [])]
    process = start_daemon(world, log_path, *flags, env={"S3FILESFS_TEST_API_KEY": API_KEY})
    processes.append(process)
    local = socket_client(world.socket)
    wait_for(lambda: process.poll() is not None or local.get("/v1/status").status_code == 200, 20,
             "the daemon to answer")
    assert process.poll() is None, log_path.read_text()
    # Work that signs S3 requests with the session token, and requests carrying the API key.
    write(world.watch / "batch" / "dropped.txt", b"dropped")
    wait_for(lambda: local.get("/v1/status").json()["counts"]["journal"].get("done") == 1, 20, "the upload")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as tcp:
        keyed = {"Authorization": f"Bearer {API_KEY}"}
        assert tcp.get("/v1/files", headers=keyed).status_code == 200
        made = tcp.post("/v1/files", headers=keyed, data={"purpose": "assistants"}, files={"file": ("t.txt", b"t")})
        assert made.status_code == 200, made.text
        assert tcp.get(f"/v1/files/{made.json()['id']}/content", headers=keyed).content == b"t"
        assert tcp.get("/v1/files", headers={"Authorization": f"Bearer {API_KEY}x"}).status_code == 401
    local.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    log = log_path.read_text()
    for secret in (SECRET_KEY, SESSION_TOKEN, API_KEY):
        assert secret not in log
    assert "DEBUG s3filesfs.cli: settings from" in log and "INFO s3filesfs.daemon.uploader: uploaded" in log
    if http_debug:
        assert "'X-Amz-Security-Token': b'****'" in log and "'Authorization': b'****'" in log
    else:
        assert "DEBUG botocore" not in log and "DEBUG urllib3" not in log


def unsafe_folders(short_dir: Path):
    """A folder others can write to, and one that belongs to someone else."""
    open_to_all = short_dir / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    if os.getuid() == 0:
        someone_elses = short_dir / "nobodys"
        someone_elses.mkdir(mode=0o700)
        os.chown(someone_elses, 65534, 65534)
    else:
        someone_elses = Path("/usr")  # root's; nothing is written there: the check refuses first
    return [(open_to_all, "can be written by other users (mode 0777)"),
            (someone_elses, f"belongs to {'nobody (uid 65534)' if os.getuid() == 0 else 'root (uid 0)'}, not to you")]


def test_a_socket_folder_others_control_is_refused(env, tmp_path, short_dir, processes):
    for number, (folder, complaint) in enumerate(unsafe_folders(short_dir)):
        before = sorted(os.listdir(folder))
        world = env(api={"socket": str(folder / "api.sock")})
        log_path = tmp_path / f"refused-{number}.log"
        process = start_daemon(world, log_path)
        processes.append(process)
        assert process.wait(30) == 1, log_path.read_text()
        log = log_path.read_text()
        assert f"error: {folder} {complaint}" in log, log
        assert f"rm -r {folder}" in log and "XDG_RUNTIME_DIR" in log
        assert sorted(os.listdir(folder)) == before  # no socket was made there
    # Made private again, the same folder is accepted.
    folder = short_dir / "open"
    os.chmod(folder, 0o700)
    world = env(api={"socket": str(folder / "api.sock")})
    process = start_daemon(world, tmp_path / "accepted.log")
    processes.append(process)
    client = socket_client(folder / "api.sock")
    wait_for(lambda: process.poll() is not None or client.get("/v1/status").status_code == 200, 20,
             "the daemon on the private folder")
    assert process.poll() is None
    client.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_the_socket_folder_is_created_private(env, short_dir):
    world = env(api={"socket": str(short_dir / "new" / "api.sock")})
    daemon = DaemonService(world.settings())
    daemon.start()
    try:
        assert stat.S_IMODE(os.stat(short_dir / "new").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(short_dir / "new" / "api.sock").st_mode) == 0o600
    finally:
        assert daemon.stop()


def test_a_missing_bucket_stops_the_daemon_at_start(env, tmp_path, processes):
    world = env(auto_create_bucket=False)
    log_path = tmp_path / "daemon.log"
    process = start_daemon(world, log_path)
    processes.append(process)
    assert process.wait(30) == 1
    assert (f"error: S3 bucket '{world.bucket}' does not exist. Either create the bucket manually or set "
            "'auto_create_bucket: true' in your configuration.") in log_path.read_text()
    assert not world.socket.exists()
    assert not world.watch.exists()  # nothing was watched, nothing half-started
