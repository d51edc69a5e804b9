"""The S3 servers the benchmarks run on, and the simulated link in front of them.

* ``moto``: ``tests/s3server.py``'s moto server (the project's test server). It reads the whole
  object for every GET, ranged or not, so readers that fetch ranges look far slower than on S3.
* ``localstack``: LocalStack's S3 (``localstack-core`` from PyPI) in its own virtualenv,
  ``bench/.venv-localstack``, made by ``bench/setup-localstack.sh`` and never part of the project's
  install. Its ranged GETs read only the range, as S3's do. It listens on loopback only, keeps its
  objects in temporary files under a scratch folder, and is stopped with the benchmark.

``s3_server(kind, link=...)`` starts one and, with a ``LinkSpec``, a ``bench/link.py`` process in
front of it, and yields a ``Served``: ``endpoint_url`` is what every tool under test is given (the
link's address, if there is one), while ``client()`` talks to the server directly, so that planting
objects and checking what was stored cost the measured tools nothing and add no delay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import psutil
from link import LinkProcess, LinkSpec

from tests.helpers import free_port
from tests.s3server import ACCESS_KEY, SECRET_KEY, MotoServer

BENCH_DIR = Path(__file__).resolve().parent
LOCALSTACK_VENV = BENCH_DIR / ".venv-localstack"
SERVERS = ("moto", "localstack")


class LocalStackServer:
    """LocalStack's S3 alone, on a free loopback port, its files under ``scratch``."""

    def __init__(self, scratch: Path, port: int | None = None):
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.scratch = scratch
        self.log_path = scratch / "localstack.log"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def python() -> Path:
        python = LOCALSTACK_VENV / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{python} not found: run bench/setup-localstack.sh first (LocalStack's own venv)")
        return python

    def environment(self) -> dict:
        """Only what LocalStack needs: nothing of the user's AWS settings, no writes outside scratch."""
        tmp, root = self.scratch / "tmp", self.scratch / "root"
        tmp.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.scratch),  # plugin caches go to ~/.cache
            "SERVICES": "s3",
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",  # the default binds every address
            "DNS_ADDRESS": "0",  # no DNS server of its own
            "TMPDIR": str(tmp),  # the objects' temporary files
            "FILESYSTEM_ROOT": str(root),
            "OVERRIDE_IN_DOCKER": "0",  # in a container it would use /var/lib/localstack, not FILESYSTEM_ROOT
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",  # no analytics
            "LS_LOG": "warn",  # a log line per request costs the server CPU
        }

    def start(self, timeout: float = 120.0) -> LocalStackServer:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([str(self.python()), "-m", "localstack.runtime.main"], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=self.environment(), cwd=self.scratch)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LocalStack exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.endpoint_url}/_localstack/health", timeout=2) as answer:
                    if json.load(answer).get("services", {}).get("s3") in ("available", "running"):
                        return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"LocalStack's S3 was not ready within {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    @staticmethod
    def version() -> str:
        try:
            out = subprocess.run([str(LocalStackServer.python()), "-c",
                                  "from importlib.metadata import version; print(version('localstack-core'))"],
                                 capture_output=True, text=True, timeout=30)
            return out.stdout.strip() or "unknown"
        except (OSError, SystemExit, subprocess.SubprocessError):
            return "not installed"


class Served:
    """A running server as the benchmarks see it: the tools' address (through the link, if any) and
    direct access for the harness."""

    def __init__(self, kind: str, server, link: LinkProcess | None):
        self.kind, self.server, self.link = kind, server, link
        self.port = server.port
        self.direct_url = server.endpoint_url
        self.endpoint_url = link.url if link else server.endpoint_url

    @property
    def process(self) -> subprocess.Popen:
        return self.server.process

    @property
    def link_spec(self) -> LinkSpec | None:
        return self.link.spec if self.link else None

    def describe(self) -> str:
        name = f"moto at {self.direct_url}" if self.kind == "moto" else \
            f"LocalStack {LocalStackServer.version()} (S3 only) at {self.direct_url}"
        through = f"; tools go through the link at {self.endpoint_url}: {self.link.spec}" if self.link else \
            "; tools connect to it directly (loopback, no link)"
        return name + through

    def client(self, **config):
        """A boto3 client straight to the server (not through the link)."""
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.direct_url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(**config) if config else None)

    def new_bucket_name(self) -> str:
        return f"test-{uuid.uuid4().hex[:12]}"

    def settings_values(self, bucket: str, **extra) -> dict:
        """Config values for a tool under test: the tools' address."""
        return {"bucket_name": bucket, "endpoint_url": self.endpoint_url, "region": "us-east-1",
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
                "auto_create_bucket": True, **extra}

    def cpu_seconds(self) -> float:
        """User + system CPU the server's process tree has used so far."""
        return _tree_cpu(self.process.pid)

    def link_cpu_seconds(self) -> float | None:
        if self.link is None or self.link.process is None:
            return None
        return _tree_cpu(self.link.process.pid)


def _tree_cpu(pid: int) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


@contextlib.contextmanager
def s3_server(kind: str = "moto", link: LinkSpec | None = None, scratch_dir: Path | None = None):
    """A running S3 server of ``kind`` (and the link in front of it), stopped and cleaned up on exit."""
    if kind not in SERVERS:
        raise ValueError(f"unknown server {kind!r}; choose from {', '.join(SERVERS)}")
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=scratch_dir))
    server = MotoServer() if kind == "moto" else LocalStackServer(scratch)
    proxy = None
    try:
        server.start()
        if link is not None:
            proxy = LinkProcess(("127.0.0.1", server.port), link).start()
        yield Served(kind, server, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
