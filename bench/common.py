"""Shared helpers for the benchmarks: an S3 server, test files, measured child processes, tables.

Benchmarks are not tests. Each one runs the tool under test and a plain-boto3 baseline as separate
processes against the same S3 server, and reports the ratio between them together with the peak
resident memory of the tool's process tree. This module owns the parts every benchmark shares:

* ``add_server_options()`` / ``server_from_args()``: ``--server moto|localstack`` and ``--link
  LATENCY,RATE``, the S3 server to run on and the simulated link every tool goes through
  (``servers.py``, ``link.py``);
* ``make_test_file()``: a large file of incompressible-looking bytes, written quickly;
* ``upload_command()``: the boto3 ``upload_file`` baseline, as a command of its own;
* ``run_measured()``: run a command, sample the resident memory of it and its children every
  ~20 ms with psutil, and read the kernel's own ``ru_maxrss`` for that one child via ``wait4``;
* ``median()``, ``print_table()``, ``write_results()``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MIB = 1024 * 1024

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from link import LinkSpec  # noqa: E402
from servers import SERVERS, s3_server  # noqa: E402  (needs the repository root on sys.path)


def add_server_options(parser) -> None:
    """``--server`` and ``--link``: the same for every benchmark."""
    parser.add_argument("--server", choices=SERVERS, default="moto",
                        help="S3 server: moto (the tests' server) or localstack (ranged GETs read only the range, "
                             "as on S3; needs bench/setup-localstack.sh) (default moto)")
    parser.add_argument("--link", type=_link_spec, metavar="LATENCY,RATE",
                        help="run every tool (boto3 too) through one simulated link (bench/link.py), e.g. "
                             "30ms,25MBps: that time to first byte on every response and that rate cap per "
                             "connection and direction (MB = 10^6 bytes)")


def _link_spec(text: str) -> LinkSpec:
    import argparse

    try:
        return LinkSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def server_from_args(args, scratch_dir: Path | None = None):
    """The context manager of the server (and link) the options ask for; yields a ``servers.Served``."""
    return s3_server(args.server, link=args.link, scratch_dir=scratch_dir)


def upload_command(file: Path, endpoint_url: str, bucket: str, key: str) -> list[str]:
    """The plain-boto3 baseline of every upload measure: ``upload_file`` in a process of its own."""
    return [sys.executable, str(BENCH_DIR / "baseline_boto3.py"), "upload", str(file),
            "--endpoint-url", endpoint_url, "--bucket", bucket, "--key", key]


def console_script(name: str) -> str:
    """The installed console script that sits next to this interpreter (the venv's ``bin/``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{path} not found: install the project into this environment (pip install -e .)")
    return str(path)


def make_test_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` bytes that neither compress nor repeat at any block boundary; returns the sha256.

    One MiB of ``os.urandom`` is reused for every block, with the block number written over its first
    eight bytes, so no two MiB are equal (a store that deduplicated or compressed would be caught)
    while writing a GiB costs a second, not the minute that a GiB of urandom takes.
    """
    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        written = 0
        number = seed << 40
        while written < size:
            block[:8] = number.to_bytes(8, "little")
            chunk = memoryview(block)[: min(MIB, size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            number += 1
    return digest.hexdigest()


@dataclass
class Measured:
    """One measured run of a child process."""

    command: list[str]
    returncode: int
    seconds: float
    peak_rss: int  # bytes: the largest sum of RSS over the process and its children (psutil samples)
    ru_maxrss: int  # bytes: the kernel's high-water mark for the child (wait4), exact but per-process
    samples: int
    cpu_seconds: float = 0.0  # user + system time of the child (wait4), to tell CPU-bound from waiting
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def peak(self) -> int:
        """The figure to judge: the larger of the two readings (sampling can miss a short spike)."""
        return max(self.peak_rss, self.ru_maxrss)


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        total += process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total


def run_measured(command: list[str], *, env: dict | None = None, interval: float = 0.02,
                 timeout: float | None = None) -> Measured:
    """Run ``command`` to completion; time it and track the peak RSS of its process tree.

    Wall time runs from just before the fork to the child's exit. The sampler thread reads the
    tree's RSS every ``interval`` seconds; the main thread reaps the child with ``os.wait4``, whose
    rusage belongs to that child alone (unlike ``RUSAGE_CHILDREN``, which would mix in every other
    process this benchmark has reaped). Output is collected in temporary files, not pipes, so a
    chatty child cannot block.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        peak = 0
        samples = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak, samples
            try:
                process = psutil.Process(child.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                peak = max(peak, _tree_rss(process))
                samples += 1
                stop.wait(interval)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        killer = None
        if timeout is not None:
            def kill_if_running() -> None:
                if child.poll() is None:
                    child.kill()

            killer = threading.Timer(timeout, kill_if_running)
            killer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            if killer:
                killer.cancel()
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            command=command,
            returncode=child.returncode,
            seconds=seconds,
            peak_rss=peak,
            ru_maxrss=usage.ru_maxrss * 1024,  # kilobytes on Linux
            samples=samples,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def median(values):
    return statistics.median(values) if values else float("nan")


def print_table(header: list[str], rows: list[list], out=None) -> None:
    """A plain, aligned text table (numbers right-aligned)."""
    out = out or sys.stdout
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))]
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(parts).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def source_state() -> str:
    """The commit the mount runs from, and whether s3filesfs/ has uncommitted changes (it runs the tree)."""
    repo = str(BENCH_DIR.parent)
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "s3filesfs"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changes = f" + uncommitted changes in {len(dirty.splitlines())} file(s) under s3filesfs/" if dirty else ""
    return f"{head}{changes}"


def machine() -> dict:
    """What the numbers depend on, recorded beside them."""
    memory = psutil.virtual_memory()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mib": memory.total // MIB,
        "boto3": _version("boto3"),
        "botocore": _version("botocore"),
        "moto": _version("moto"),
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_results(name: str, payload: dict) -> Path:
    """Save ``payload`` as ``bench/results/<name>-<UTC timestamp>.json`` (the folder is gitignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"benchmark": name, "when": stamp, "machine": machine(), **payload},
                               indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
