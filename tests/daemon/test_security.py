"""The daemon's secrets: no credential in its log, at any level."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

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
    started = []
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
