"""A real PostgreSQL server for tests: a private cluster in a temp folder, on a free loopback port.

``initdb`` and ``pg_ctl`` refuse to run as root, so under root the cluster belongs to ``nobody``
(commands run through ``runuser``); under any other user it is that user's. It listens on 127.0.0.1
only, with no Unix socket, and takes password logins (scram-sha-256). Durability is switched off:
the data is thrown away at the end.

Tests isolate themselves by role: ``new_role()`` makes a login role with a schema of its own name,
which PostgreSQL's default ``search_path`` ("$user", public) puts first, so everything that role
creates lands in its own schema while the store is configured with nothing but the seed's keys.
"""

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from s3filesfs.metadata import PostgresLocation
from tests.helpers import free_port

ADMIN = "s3filesfs_admin"
UNPRIVILEGED = "nobody"


def find_bindir() -> Path | None:
    """The newest PostgreSQL server programs installed (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="s3filesfs-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        self._admin: Any = None  # the admin's connection that new_role uses, opened once
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", UNPRIVILEGED, "--"]

    def _run(self, *command: str, timeout: float = 120) -> None:
        result = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def start(self) -> "PostgresServer":
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._as:
            os.chown(password_file, pwd.getpwnam(UNPRIVILEGED).pw_uid, -1)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", ADMIN, f"--pwfile={password_file}",
                  "--auth-host=scram-sha-256", "--auth-local=reject", "--encoding=UTF8", "--locale=C.UTF-8",
                  "--no-sync")
        password_file.unlink()
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-c port={self.port}", "-c unix_socket_directories=''",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=300", "-c shared_buffers=32MB",
        ])
        self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", options)
        self.running = True
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.running:
            with contextlib.suppress(Exception):
                self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def tail_of_log(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    # --- what tests use ------------------------------------------------------------------------

    def location(self, user: str = ADMIN, password: str | None = None, **pool) -> PostgresLocation:
        return PostgresLocation(host="127.0.0.1", port=self.port, db="postgres", user=user,
                                password=password or self.password, **pool)

    def connect(self, location: PostgresLocation | None = None):
        """A plain psycopg connection (autocommit), as another program would open one."""
        import psycopg

        location = location or self.location()
        return psycopg.connect(host=location.host, port=location.port, dbname=location.db, user=location.user,
                               password=location.password, autocommit=True, connect_timeout=10)

    def new_role(self) -> PostgresLocation:
        """A login role with a schema of its own, and where to reach it: a database of its own, in effect."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        password = secrets.token_hex(12)
        if self._admin is None or self._admin.closed:
            self._admin = self.connect()
        admin = self._admin
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
        return self.location(user=name, password=password)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
