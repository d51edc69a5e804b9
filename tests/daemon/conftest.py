"""Fixtures for daemon tests: a real daemon (in-process or as a subprocess) on a real Unix socket,
watching a real folder with a real watchdog observer, uploading to a real moto server.

Every wait polls a condition against a deadline; nothing relies on a fixed sleep.
"""

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from s3filesfs import config
from s3filesfs.daemon.service import DaemonService
from tests.helpers import wait_for


def socket_client(path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://daemon", timeout=30)


class Env:
    """One test's world: a bucket, a database, a watch folder, a socket and a config file."""

    def __init__(self, server, tmp_path: Path, short: Path, **options):
        self.server = server
        self.bucket = server.new_bucket_name()
        self.watch = tmp_path / "S3Files"
        self.db = tmp_path / "meta.db"
        self.socket = short / "api.sock"
        sync = {"watch_dir": str(self.watch), "settle_seconds": 0.3, "workers": 4, "max_retries": 8}
        sync.update(options.pop("sync", {}))
        api = {"socket": str(self.socket), **options.pop("api", {})}
        document = {**server.settings_values(self.bucket),
                    "metadata_store": {"type": "sqlite", "db_path": str(self.db)},
                    "data_dir": str(tmp_path / "data"), "sync": sync, "api": api, **options}
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(document))
        self.daemon: Daemon | None = None

    def settings(self):
        return config.load(self.config_path)

    def start(self, **kwargs) -> "Daemon":
        self.daemon = Daemon(self, **kwargs).start()
        return self.daemon

    # --- looking behind the daemon's back ------------------------------------------------------

    def objects(self) -> dict[str, bytes]:
        s3 = self.server.client()
        keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                for item in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in keys}

    def object_keys(self) -> list[str]:
        s3 = self.server.client()
        return [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                for item in page.get("Contents", [])]


class Daemon:
    """An in-process DaemonService with an HTTP client on its socket."""

    def __init__(self, env: Env, **kwargs):
        self.env = env
        kwargs.setdefault("retry_base", 0.2)
        kwargs.setdefault("retry_cap", 1.0)
        self.service = DaemonService(env.settings(), **kwargs)
        self.client = socket_client(env.socket)

    def start(self) -> "Daemon":
        self.service.start()
        wait_for(lambda: self.client.get("/v1/status").status_code == 200, 10, "the socket to answer")
        return self

    def stop(self) -> None:
        self.client.close()
        assert self.service.stop(), "uploads did not stop in time"

    @property
    def files(self):
        return self.service.service

    def listed(self, **params) -> list[dict]:
        response = self.client.get("/v1/files", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def entry(self, path):
        return self.service.journal.get(path)

    def settle(self, timeout=30.0) -> None:
        """Wait until the uploader has been idle for several polls in a row."""
        streak = [0]

        def quiet():
            streak[0] = streak[0] + 1 if self.service.idle() else 0
            return streak[0] >= 6

        try:
            wait_for(quiet, timeout, "the uploader to go idle", interval=0.1)
        except AssertionError:
            pytest.fail(f"the uploader never went idle: {self.service.uploader.snapshot()}")

    def status(self) -> dict:
        return self.client.get("/v1/status").json()


@pytest.fixture
def short_dir():
    """A short folder for sockets: tmp_path is too long for AF_UNIX's 108 bytes."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="s3fd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(s3_server, tmp_path, short_dir):
    made = []

    def make(server=None, **options) -> Env:
        world = Env(server or s3_server, tmp_path, short_dir, **options)
        made.append(world)
        return world

    yield make
    for world in made:
        if world.daemon is not None and world.daemon.service.started_at and not world.daemon.service._stop.is_set():
            world.daemon.stop()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class DaemonProcess:
    """``s3filesfs daemon`` as a real subprocess."""

    def __init__(self, env: Env, log_path: Path, args=()):
        self.env = env
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "s3filesfs"), "--config", str(env.config_path), "daemon", *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.client = socket_client(env.socket)
        wait_for(lambda: self.process.poll() is not None or self.client.get("/v1/status").status_code == 200,
                 20, "the daemon subprocess to answer")
        assert self.process.poll() is None, f"daemon exited with {self.process.returncode}"

    def status(self) -> dict:
        return self.client.get("/v1/status").json()

    def kill(self, sig=signal.SIGKILL, timeout=20) -> int:
        self.client.close()
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.log.close()
        return code


@pytest.fixture
def daemon_process():
    started = []

    def start(env: Env, log_path: Path, args=()) -> DaemonProcess:
        proc = DaemonProcess(env, log_path, args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()


