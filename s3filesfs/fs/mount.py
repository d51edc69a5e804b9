"""Mounting and unmounting: the mountpoint's checks, the FUSE options, background and shutdown.

``run`` mounts in the calling process and returns when the filesystem is unmounted (SIGTERM,
SIGINT, ``umount``): libfuse's own signal handlers end the loop after the requests in flight, so an
upload running in ``close()`` finishes first. Whatever is still open then is kept for ``retry``.

``start_background`` runs the same command with ``--foreground`` as a detached child writing to a
log file, and returns once the mountpoint is live, or with the child's error if it never gets there.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import metrics, sdnotify
from ..errors import S3FilesError, StorageError, UserError
from ..files import FileService
from ..upkeep import start_expiry_timer

log = logging.getLogger(__name__)

FSNAME = "s3filesfs"
START_TIMEOUT = 60.0
STOP_GRACE = 60.0  # how long SIGTERM waits for files still being written to be closed
MAX_IDLE_THREADS = 32
M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
# A request thread that let go of the GIL for a system call waits to get it back behind the upload
# threads (botocore's Python between hashing and sending). At CPython's default 5 ms that wait shows
# up in one write in ten of a large copy; at 0.5 ms it rarely exceeds 1 ms.
GIL_SWITCH_INTERVAL = 0.0005
LOOP_ENDED = 8  # fuse_main's status when its loop ended on an error, an aborted connection included


class MountError(UserError):
    """The mountpoint cannot be used as asked."""


def _fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        found = shutil.which(name)
        if found:
            return found
    raise MountError("fusermount3 not found: install the fuse3 package (apt-get install fuse3)")


def mounted_here(mountpoint: Path) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint`` (from /proc/self/mountinfo), or None."""
    target = str(mountpoint)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
            found = line.split(" - ", 1)[1].split()[0] if " - " in line else "unknown"
    return found


def prepare(mountpoint: Path) -> Path:
    """Check (and create) the mountpoint; clean a dead mount a crash left behind."""
    mountpoint = Path(os.path.abspath(os.path.expanduser(mountpoint)))
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        mountpoint.mkdir(parents=True)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountError(f"cannot use {mountpoint}: {exc.strerror}") from None
        # "Transport endpoint is not connected": the process behind an old mount died.
        subprocess.run([_fusermount(), "-u", "-z", str(mountpoint)], capture_output=True)
        log.warning("cleaned a dead mount at %s", mountpoint)
        if mounted_here(mountpoint):
            raise MountError(f"a dead mount at {mountpoint} could not be removed; "
                             f"try: fusermount3 -u -z {mountpoint}") from None
    kind = mounted_here(mountpoint)
    if kind is not None:
        raise MountError(f"{mountpoint} is already mounted ({kind})")
    if not mountpoint.is_dir():
        raise MountError(f"{mountpoint} is not a folder")
    if any(mountpoint.iterdir()):
        raise MountError(f"{mountpoint} is not empty; mount on an empty folder")
    return mountpoint


def pid_file(runtime_dir: Path, mountpoint: Path) -> Path:
    digest = hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir / "mounts" / f"{digest}.pid"


def run(service: FileService, settings, mountpoint: Path, allow_other: bool = False, read_only: bool = False) -> None:
    """Mount in this process until unmounted."""
    from . import reader, records
    from .core import MountCore
    from .ops import FUSE, S3FilesOperations  # loads libfuse
    from .staging import Staging
    from .writeback import resume

    _tune_process()
    mountpoint = prepare(mountpoint)
    _ = service.blobs  # a missing bucket or bad credentials fail here, before anything is mounted
    staging = Staging(settings.staging_dir, settings.mount_staging_max_mb * 1024 * 1024)
    staging.claim(service)
    records.remember(settings.data_dir, staging.folder)
    reader.configure(settings.mount_read_ahead_mb * 1024 * 1024)
    core = MountCore(service, staging, settings.mount_refresh_seconds, read_only, settings.mount_write_back)
    operations = S3FilesOperations(core)
    pid_path = pid_file(settings.api_socket_path.parent, mountpoint)
    pid_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_path.write_text(str(os.getpid()))
    # Idle FUSE threads are kept (libfuse3 otherwise ends and starts them as load moves, a thread
    # start per burst of requests).
    options = {"fsname": FSNAME, "subtype": FSNAME, "auto_unmount": True, "max_idle_threads": MAX_IDLE_THREADS}
    if read_only:
        options["ro"] = True
    if allow_other:
        options["allow_other"] = True
    log.info("mounting %s at %s (staging %s)", service.blobs.location, mountpoint, settings.staging_dir)
    _stop_gracefully_on_signals(core, mountpoint)
    # Started after the signals are blocked: a thread that could take SIGTERM would let libfuse
    # end the mount at once, without waiting for the files being written.
    service.keep_clean(settings.stall_timeout_seconds)
    start_expiry_timer(service, 0 if read_only else settings.expiry_interval_seconds)  # stopped at exit
    # Changes made elsewhere (another mount, a daemon, another host) reach the kernel as they land.
    core.namespace.on_change = operations.invalidate
    core.namespace.follow()
    control = _serve_control(core, staging, settings, mountpoint, pid_path)
    if settings.mount_write_back:  # what an earlier mount closed but had not uploaded yet
        threading.Thread(target=resume, args=(service, staging.folder), name="resume", daemon=True).start()
    # Under systemd (Type=notify): ready once libfuse has called init, and a watchdog ping for as
    # long as the mountpoint answers statfs (which always reaches this process).
    sdnotify.ready_when(lambda: operations.started_serving,
                        lambda: f"serving {service.location} at {mountpoint}",
                        healthy=lambda: os.statvfs(mountpoint) is not None)
    try:
        FUSE(operations, str(mountpoint), foreground=True, nothreads=False, raw_fi=True, **options)
    except RuntimeError as exc:
        # 8 after serving: the loop ended because the stop aborted a connection a reader still held.
        if str(exc) != str(LOOP_ENDED) or not operations.started_serving:
            raise StorageError(f"mounting {mountpoint} failed (libfuse error {exc}); see the log above") from None
    finally:
        core.namespace.stop()
        control.stop()
        pid_path.unlink(missing_ok=True)
    sdnotify.stopping(f"unmounted {mountpoint}")
    log.info("unmounted %s", mountpoint)


def _serve_control(core, staging, settings, mountpoint: Path, pid_path: Path):
    """The mount's control socket (``control.py``), its gauges read from the core and staging."""
    from .control import ControlSocket, socket_path

    metrics.watch_queue(lambda: len(core.write_back_queue()))
    metrics.watch_staging(lambda: staging.used)

    def status() -> dict:
        return {
            "object": "s3filesfs.mount_status",
            "pid": os.getpid(),
            "mountpoint": str(mountpoint),
            "data_dir": str(settings.data_dir),
            "files_being_written": core.files_being_written(),
            "write_back": core.write_back_queue(),
            "staging_bytes": staging.used,
            "staging_max_bytes": staging.max_bytes,
            "last_errors": metrics.last_errors(),
        }

    return ControlSocket(socket_path(pid_path), status).start()


def _tune_process() -> None:
    """Settings a long-running mount wants, made before any thread starts.

    Two glibc malloc arenas instead of one per thread: upload parts and read-ahead chunks are
    megabytes allocated in one thread and freed in another, and with an arena per thread the freed
    memory is rarely reused (about 220 MB resident after a 1 GiB copy, 130 MB with two arenas).
    And a shorter GIL switch interval (see GIL_SWITCH_INTERVAL).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def _stop_gracefully_on_signals(core, mountpoint: Path) -> None:
    """SIGTERM/SIGINT: let files being written be closed and uploaded, then unmount.

    libfuse's own handlers would end the loop at once, cutting off a writer mid-file. Instead the
    signals are blocked in every thread (libfuse's threads inherit the mask) and one thread waits
    for them with ``sigwait``.
    """
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def wait_and_stop() -> None:
        received = signal.sigwait(signals)
        deadline = time.monotonic() + STOP_GRACE
        waiting = core.files_being_written()
        sdnotify.stopping(f"stopping: waiting for {len(waiting)} file(s) being written" if waiting else "stopping")
        if waiting:
            log.info("%s: waiting up to %.0f s for %d file(s) being written: %s", signal.Signals(received).name,
                     STOP_GRACE, len(waiting), ", ".join(waiting[:5]))
        while waiting and time.monotonic() < deadline:
            time.sleep(0.1)
            waiting = core.files_being_written()
        if waiting:
            log.warning("stopping with %d file(s) still open for writing; they are kept for `s3filesfs retry`",
                        len(waiting))
        _detach(mountpoint)

    threading.Thread(target=wait_and_stop, name="stop-on-signal", daemon=True).start()


def _detach(mountpoint: Path) -> None:
    """End the mount even if a reader (a shell inside it) still holds it open."""
    try:
        connection = os.minor(os.stat(mountpoint).st_dev)
    except OSError:
        connection = None
    subprocess.run([_fusermount(), "-u", "-z", str(mountpoint)], capture_output=True)
    time.sleep(1.0)  # an idle mount ends by itself right away
    if connection is not None:
        abort = Path(f"/sys/fs/fuse/connections/{connection}/abort")
        if abort.exists():
            try:
                abort.write_text("1")
            except OSError:
                pass


def start_background(argv: list[str], mountpoint: Path, log_path: Path) -> int:
    """Run ``argv`` (this command plus ``--foreground``) detached; wait until it has mounted."""
    mountpoint = Path(os.path.abspath(os.path.expanduser(mountpoint)))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        start = log_file.tell()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            tail = _read_from(log_path, start).strip().splitlines()
            message = next((line for line in reversed(tail) if line.startswith("error:")), None)
            raise _ChildFailed(message or f"the mount process exited with status {code}; see {log_path}", code)
        if mounted_here(mountpoint) == f"fuse.{FSNAME}":
            return child.pid
        time.sleep(0.05)
    child.terminate()
    raise StorageError(f"the mount did not come up within {START_TIMEOUT:.0f} s; see {log_path}")


class _ChildFailed(S3FilesError):
    def __init__(self, message: str, code: int):
        super().__init__(message.removeprefix("error: "))
        self.exit_code = code if code in (1, 3, 4) else 3


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def unmount(mountpoint: Path, runtime_dir: Path, timeout: float = 120.0) -> None:
    """Unmount and wait for the mount process to finish its shutdown."""
    mountpoint = Path(os.path.abspath(os.path.expanduser(mountpoint)))
    if mounted_here(mountpoint) is None:
        raise MountError(f"{mountpoint} is not mounted")
    try:  # read before unmounting: the process removes it as it ends
        pid = int(pid_file(runtime_dir, mountpoint).read_text())
    except (OSError, ValueError):
        pid = None
    result = subprocess.run([_fusermount(), "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount3 failed"
        if "busy" in detail.lower():
            raise MountError(f"{mountpoint} is busy: a file or folder in it is still open ({detail})")
        raise MountError(f"cannot unmount {mountpoint}: {detail}")
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.05)
    raise StorageError(f"the mount process {pid} is still finishing after {timeout:.0f} s")


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def argv_for_foreground() -> list[str]:
    """This very command, run again in the foreground: for the background child."""
    return [sys.executable, "-m", "s3filesfs", *sys.argv[1:], "--foreground"]
