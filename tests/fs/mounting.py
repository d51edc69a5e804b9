"""A real s3filesfs mount in a subprocess, for the mount tests.

``Mount`` starts ``python -m s3filesfs ... mount MP --foreground`` on the embedded local store or on
a bucket of the test S3 server, waits until the kernel shows the mountpoint, and stops it with
SIGTERM (falling back to ``fusermount3 -u -z``). A mount whose process was killed is not leaked:
``stop`` lazily unmounts whatever the kernel still lists at the mountpoint, and ``start`` first
clears a dead mount (one that answers ENOTCONN) left there. Tests look behind the mount's back through
``service()`` (a FileService on the same database and store) and ``plant()``, and end with
``assert_consistent()``: bucket and table agree, no half-written upload and no staging file is left.
"""

import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from s3filesfs import config
from s3filesfs.files import FileService, object_metadata, open_service
from s3filesfs.metadata import PostgresLocation
from s3filesfs.model import FileObject, expires_at_for, new_file_id
from tests.helpers import LEAKY_ENV
from tests.s3server import ACCESS_KEY, SECRET_KEY

MOUNT_TIMEOUT = 20.0
UNMOUNT_ATTEMPTS = 5  # mounts can be stacked at one path; each lazy unmount removes the top one
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mounted_at(path: Path) -> bool:
    """Whether the kernel lists a mount at ``path``, from /proc/self/mountinfo.

    Unlike ``os.path.ismount`` this never touches the path, so a dead FUSE mount (its process was
    killed: every call on it fails with ENOTCONN, and ``ismount`` answers False) is seen too.
    """
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            # The mount point is the fifth field, with space, tab, newline and backslash in octal.
            if len(fields) > 4 and _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4]) == target:
                return True
    return False


def dead_mount_at(path: Path) -> bool:
    """A mount is listed at ``path`` but no process serves it any more.

    ``statfs`` always goes to the filesystem (``stat`` may still be answered from the attribute
    cache for a moment after the process died), so a dead connection answers ENOTCONN at once.
    """
    if not mounted_at(path):
        return False
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


class Mount:
    """One mount process. ``backend`` is "local" (embedded store) or "s3" (needs ``server``); the
    metadata is a SQLite file in the data folder, or the PostgreSQL database ``postgres`` (given in
    a config file, as a user would, with the password in the environment)."""

    def __init__(self, backend: str, server=None, root: Path | None = None, extra_args=(),
                 postgres: PostgresLocation | None = None):
        self.backend = backend
        self.server = server
        self.postgres = postgres
        self.root = Path(root or tempfile.mkdtemp(prefix="s3fs-", dir="/tmp"))
        self.mountpoint = self.root / "mnt"
        self.staging = self.root / "staging"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "mount.log"
        self.bucket = server.new_bucket_name() if backend == "s3" else None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.baseline: dict | None = None  # a snapshot() that fixtures take once the mount is up
        self._service: FileService | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # --- settings shared by the mount, the CLI and the test's own service ----------------------

    @property
    def global_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.backend == "s3":
            assert self.bucket is not None
            args += ["--bucket", self.bucket, "--endpoint-url", self.server.endpoint_url]
        return args

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_ENV)}
        env.update({
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "xdg-data"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        })
        if self.backend == "s3":
            env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "S3FILESFS_AUTO_CREATE_BUCKET": "true"})
        if self.postgres is not None:
            env.update({"S3FILESFS_CONFIG": str(self._postgres_config()), "PGPASSWORD": self.postgres.password or ""})
        return env

    def _postgres_config(self) -> Path:
        path = self.root / "postgres.yaml"
        if not path.exists():
            where = self.postgres
            assert where is not None
            path.write_text(yaml.safe_dump({"metadata_store": {
                "type": "postgres", "host": where.host, "port": where.port, "db": where.db, "user": where.user,
                "password": "${env.PGPASSWORD}"}}))
        return path

    def flags(self) -> dict:
        flags: dict[str, object] = {"data_dir": str(self.data_dir)}
        if self.backend == "s3":
            flags.update(bucket_name=self.bucket, endpoint_url=self.server.endpoint_url,
                         aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                         auto_create_bucket=True)
        if self.postgres is not None:
            where = self.postgres
            flags.update(metadata_store_type="postgres", metadata_store_host=where.host,
                         metadata_store_port=where.port, metadata_store_db=where.db,
                         metadata_store_user=where.user, metadata_store_password=where.password)
        return flags

    def command(self, *args) -> list[str]:
        return [sys.executable, "-m", "s3filesfs", *self.global_args, *args]

    def cli(self, *args, timeout=60, check=True, input=None) -> subprocess.CompletedProcess:
        """Run ``s3filesfs`` on the same store as the mount, in another process."""
        result = subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"s3filesfs {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout=MOUNT_TIMEOUT) -> "Mount":
        if dead_mount_at(self.mountpoint):  # a killed mount's leftover: the new one would be refused
            self._unmount()
        self.staging.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        command = self.command("mount", str(self.mountpoint), "--foreground",
                               "--staging-dir", str(self.staging), *self.extra_args)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise AssertionError(f"the mount process exited with {self.process.returncode} before "
                                     f"mounting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.mountpoint} not mounted within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout=20.0) -> int | None:
        """SIGTERM, wait; a mount that will not go is lazily unmounted and killed. Whatever the
        process's state (running, exited, killed, forgotten), a mount still listed at the mountpoint
        afterwards, a dead one included, is lazily unmounted. Returns the exit code, if known."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
                self.process.kill()
                self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        self._unmount()
        self.process = None
        if self._service is not None:
            self._service.metadata.close()
            self._service = None
        return code

    def _unmount(self) -> None:
        """Lazily unmount everything the kernel lists at the mountpoint (``fusermount3 -u -z``)."""
        for _ in range(UNMOUNT_ATTEMPTS):
            if not mounted_at(self.mountpoint):
                return
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if mounted_at(self.mountpoint):
            raise AssertionError(f"{self.mountpoint} is still mounted after {UNMOUNT_ATTEMPTS} lazy unmounts")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __truediv__(self, name) -> Path:
        return self.mountpoint / name

    # --- behind the mount's back ---------------------------------------------------------------

    def settings(self):
        return config.load(None, self.flags())

    def service(self):
        """A FileService on the same store and database as the mount."""
        if self._service is None:
            self._service = open_service(self.settings())
        return self._service

    def plant(self, filename: str, purpose: str = "assistants", body: bytes = b"planted\n",
              created_at: int | None = None, expires_at: int | None = None, file_id: str | None = None) -> FileObject:
        """Write an object and its row directly (object first), with a chosen ``created_at``."""
        service = self.service()
        created_at = int(time.time()) if created_at is None else created_at
        if expires_at is None:
            expires_at = expires_at_for(purpose, created_at, None)
        file = FileObject(id=file_id or new_file_id(), filename=filename, purpose=purpose, bytes=len(body),
                          created_at=created_at, expires_at=expires_at)
        writer = service.blobs.writer(file.id, object_metadata(file))
        writer.write(body)
        writer.commit()
        service.metadata.insert(file.to_row())
        return file

    def rows(self) -> dict[str, dict]:
        return {row["id"]: row for row in self.service().metadata.all_files()}

    def object_keys(self) -> set[str]:
        return {info.key for info in self.service().blobs.keys()}

    def staged_files(self) -> set[str]:
        """Regular files under the staging folder, relative to it."""
        if not self.staging.exists():
            return set()
        return {str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file()}

    def pending_uploads(self) -> list:
        """Multipart uploads left open in the bucket (S3 only)."""
        if self.backend != "s3":
            return []
        client = self.server.client()
        return [u["Key"] for u in client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])]

    def snapshot(self) -> dict:
        """What the store holds now: rows, objects, staged files, problems of ``check()``."""
        report = self.service().check()
        return {"rows": set(self.rows()), "objects": self.object_keys(), "staged": self.staged_files(),
                "uploads": set(self.pending_uploads()),
                "problems": set(report.rows_without_objects) | set(report.objects_without_rows)
                | set(report.size_mismatches)}

    def assert_unchanged(self, before: dict, timeout: float = 3.0) -> None:
        """Nothing was added or removed since ``before``: no row, object, staging file or upload.

        Polled up to ``timeout``, as ``assert_consistent`` is: ``release`` follows ``close()``.
        """
        deadline = time.monotonic() + timeout
        while True:
            after = self.snapshot()
            changed = [key for key in ("rows", "objects", "staged", "uploads") if after[key] != before[key]]
            if not changed:
                return
            if time.monotonic() >= deadline:
                key = changed[0]
                raise AssertionError(f"{key} changed: added {sorted(after[key] - before[key])}, "
                                     f"removed {sorted(before[key] - after[key])}")
            time.sleep(0.05)

    def assert_consistent(self, baseline: dict | None = None, expected_staged=(".mount.lock",),
                          timeout: float = 3.0) -> None:
        """Bucket and table agree and nothing is left in staging (beyond ``baseline``, if given).

        Polled up to ``timeout``: the kernel sends ``release`` after ``close()`` has returned, so a
        handle's staging files may outlive the close by a moment.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._check_consistent(baseline, expected_staged)
                return
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def _check_consistent(self, baseline, expected_staged) -> None:
        now = self.snapshot()
        old_problems = baseline["problems"] if baseline else set()
        new_problems = now["problems"] - old_problems
        assert not new_problems, f"bucket and table disagree: {self.service().check().to_dict()}"
        old_staged = baseline["staged"] if baseline else set()
        left = {p for p in now["staged"] - old_staged if Path(p).name not in expected_staged}
        assert not left, f"staging files left behind: {sorted(left)}"
        old_uploads = baseline["uploads"] if baseline else set()
        assert not (now["uploads"] - old_uploads), f"multipart uploads left open: {now['uploads']}"
