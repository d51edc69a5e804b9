"""A real S3 server for tests: moto's server in its own process on a free loopback port.

Tests can stop and start it to play an S3 outage; its data lives in memory, so a restart empties it.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import boto3

from tests.helpers import free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


class MotoServer:
    def __init__(self, port: int | None = None, require_auth: bool = False):
        self.port = port or free_port()
        # moto checks credentials against its own IAM once this many requests have been served.
        self.extra_env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if require_auth else {}
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)

    def start(self, timeout: float = 30.0) -> "MotoServer":
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}; see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def new_bucket_name(self) -> str:
        return f"test-{uuid.uuid4().hex[:12]}"

    def settings_values(self, bucket: str, **extra) -> dict:
        """Config values (as a config file would hold them) for a bucket on this server."""
        return {"bucket_name": bucket, "endpoint_url": self.endpoint_url, "region": "us-east-1",
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
                "auto_create_bucket": True, **extra}
