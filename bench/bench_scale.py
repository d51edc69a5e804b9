"""The mount on a big table: listing, stat, change propagation and memory at 1,000,000 rows.

For each metadata engine (``--engines sqlite,postgres``) it fills ``openai_files`` with ``--rows``
rows by bulk SQL (the store creates the schema first), mounts the same store twice (two mount
processes, each with its own home, data folder and staging folder, sharing the metadata database and
the embedded local blob store), and measures:

* ``ls -l`` of one purpose folder holding ``--folder-files`` files, the first listing after the
  mount and a second one, on mount A; then the first one on mount B;
* ``os.stat`` of ``--stats`` different names in that folder and in a big folder, each looked up once
  (after the kernel's entry cache of the listing has lapsed), median and p95;
* change propagation from A to B: a file written through A (open, write, close), then renamed, then
  deleted, each polled for on B with ``os.stat`` every few ms; p50, p95 and max over ``--trials``;
* the peak RSS of each mount process over the whole run (psutil samples, and the kernel's high-water
  mark of the process's memory since it started the mount program, ``VmHWM``, read just before it
  is stopped; not ``ru_maxrss`` from ``wait4``, which for a forked child also counts the parent's
  memory at the fork, here the benchmark's own few hundred MB).

Run by hand; it prints one table, a column per engine. A measure that fails (a timeout, a mount
that died) says so in its cell; the others still run. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from common import BENCH_DIR, console_script, machine, print_table, source_state, write_results

from s3filesfs.metadata import FILE_COLUMNS, PUBLIC_ROW, TABLE, MetadataStore
from s3filesfs.model import EXPIRES_AFTER_MAX, NO_EXPIRY_SECONDS

ENGINES = ("sqlite", "postgres")
FOLDER = "assistants"  # the folder of --folder-files files, listed and written into
BIG_FOLDER = "batch"  # where most other rows are
# The other rows, by purpose (the rest of the weights after the first two are small folders).
SPREAD = (("batch", 0.55), ("user_data", 0.35), ("fine-tune", 0.04), ("vision", 0.03), ("evals", 0.03))
EXPIRED_SHARE = 0.03  # of the other rows: expired, still in the table (a sweep has not run)
DUPLICATE_SHARE = 0.02  # rows that reuse an older file's name in their folder
DAY = 86400

LIST_TARGET = 0.3  # seconds, every ls -l
STAT_TARGET = 0.005  # seconds, p95
PROPAGATION_TARGET = 1.0  # seconds, p95
RSS_TARGET = 250 * 1000 * 1000  # "250 MB", decimal
KERNEL_CACHE = 1.0  # the kernel's entry and attribute timeout on the mount (libfuse's default)
POLL = 0.005  # seconds between two os.stat of a propagation poll
MOUNT_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class Failed(Exception):
    """A measure that could not be taken: its message goes into the table's cell."""


# --- the rows -----------------------------------------------------------------------------------

@dataclass
class Plan:
    """What was put in the table, and the names to look up."""

    rows: int
    folder_files: int
    folder_names: list[str] = field(default_factory=list)  # shown under their plain name
    big_names: list[str] = field(default_factory=list)
    big_live: int = 0
    expired: int = 0
    duplicates: int = 0


def generate(rows: int, folder_files: int, seed: int = 12) -> tuple[Plan, list[tuple]]:
    """``rows`` rows in the store's shape: ``folder_files`` live ones in FOLDER (a few of them
    younger duplicates of a name, shown decorated), the rest spread over SPREAD, a share expired.

    Live batch files are younger than 30 days (their default expiry); other live files are up to a
    year old and never expire; expired rows expired 1 to 300 days ago.
    """
    rng = random.Random(seed)
    now = int(time.time())
    plan = Plan(rows, folder_files)
    out: list[tuple] = []
    public = tuple(PUBLIC_ROW[k] for k in PUBLIC_ROW)

    def row(name: str, purpose: str, created: int, expires: int) -> None:
        out.append((f"file-{rng.getrandbits(128):032x}", name, purpose, rng.randrange(1, 10_000_000),
                    created, expires, *public))

    def live(purpose: str) -> tuple[int, int]:
        if purpose == "batch":
            created = now - rng.randrange(60, 25 * DAY)
            return created, created + EXPIRES_AFTER_MAX
        created = now - rng.randrange(60, 365 * DAY)
        return created, created + NO_EXPIRY_SECONDS

    def fill(purpose: str, count: int, names: list[str] | None) -> None:
        originals: list[tuple[str, int]] = []
        duplicates = int(count * DUPLICATE_SHARE) if count >= 50 else 0
        for n in range(count - duplicates):
            created, expires = live(purpose)
            name = f"{purpose}-{n:07d}.jsonl"
            row(name, purpose, created, expires)
            originals.append((name, created))
        for _ in range(duplicates):  # younger than the file whose name it takes: shown decorated
            name, created = rng.choice(originals)
            younger = rng.randrange(created + 1, now + 1)
            row(name, purpose, younger, younger + (EXPIRES_AFTER_MAX if purpose == "batch" else NO_EXPIRY_SECONDS))
        plan.duplicates += duplicates
        if names is not None:
            plain = {name for name, _ in originals}
            names.extend(rng.sample(sorted(plain), min(len(plain), 5000)))

    fill(FOLDER, folder_files, plan.folder_names)
    others = rows - folder_files
    expired = int(others * EXPIRED_SHARE)
    live_others = others - expired
    counts = [int(live_others * share) for _, share in SPREAD]
    counts[0] += live_others - sum(counts)
    for (purpose, _), count in zip(SPREAD, counts, strict=True):
        fill(purpose, count, plan.big_names if purpose == BIG_FOLDER else None)
        if purpose == BIG_FOLDER:
            plan.big_live = count
    for n in range(expired):  # mostly batch files past their 30 days, some with a shorter expiry
        purpose = BIG_FOLDER if rng.random() < 0.8 else rng.choice([FOLDER, *(p for p, _ in SPREAD[1:])])
        expires = now - rng.randrange(DAY, 300 * DAY)
        row(f"expired-{n:07d}.jsonl", purpose, expires - EXPIRES_AFTER_MAX, expires)
    plan.expired = expired
    rng.shuffle(out)  # inserted in no particular order, as years of uploads would leave them
    return plan, out


COLUMNS = (*FILE_COLUMNS, *PUBLIC_ROW)


class Store:
    """One metadata engine with its big table: where it is, how mounts reach it, how rows go in."""

    def __init__(self, engine: str, work: Path):
        self.engine, self.work = engine, work
        self.server: Any = None  # a tests.pgserver.PostgresServer, for PostgreSQL
        self.location: Any = None  # a Path (SQLite) or a PostgresLocation

    def __enter__(self) -> Store:
        if self.engine == "sqlite":
            self.location = self.work / "shared" / "metadata.db"
        else:
            from tests.pgserver import PostgresServer, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise Failed("no PostgreSQL server programs installed (initdb)")
            server = self.server = PostgresServer(bindir).start()
            server.wait_ready()
            self.location = server.new_role()
        MetadataStore(self.location).close()  # the schema and our indexes, as a mount would create them
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()

    def describe(self) -> str:
        if self.server is None:
            return f"SQLite {sqlite3.sqlite_version}, {self.location}"
        with contextlib.closing(self.server.connect()) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        return f"PostgreSQL {version}, {self.location.description} (a private cluster of tests/pgserver.py)"

    def insert(self, rows: list[tuple]) -> dict:
        """All rows in one transaction; PostgreSQL then VACUUM ANALYZE, as its autovacuum would."""
        names = ", ".join(COLUMNS)
        started = time.perf_counter()
        extra = {}
        if self.engine == "sqlite":
            with contextlib.closing(sqlite3.connect(self.location, timeout=60)) as db, db:
                db.executemany(f"INSERT INTO {TABLE} ({names}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        else:
            with contextlib.closing(self.server.connect(self.location)) as conn:
                with conn.transaction(), conn.cursor().copy(f"COPY {TABLE} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                inserted = time.perf_counter()
                conn.execute(f"VACUUM ANALYZE {TABLE}")
                extra["vacuum_analyze_seconds"] = time.perf_counter() - inserted
        return {"seconds": time.perf_counter() - started, **extra}

    def config(self) -> dict:
        if self.engine == "sqlite":
            return {"type": "sqlite", "db_path": str(self.location)}
        loc = self.location
        return {"type": "postgres", "host": loc.host, "port": loc.port, "db": loc.db, "user": loc.user,
                "password": loc.password}


# --- the mounts ---------------------------------------------------------------------------------

def mounted_at(path: Path) -> bool:
    """Whether the kernel lists a mount at ``path`` (never touching it: a dead mount hangs nothing)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(len(f) > 4 and f[4] == target for f in (line.split() for line in mountinfo))


def _high_water(pid: int) -> int:
    """The process's peak resident memory since it started its program (``VmHWM``), in bytes."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return 0


class Mount:
    """One ``s3filesfs --config CFG mount MNT --foreground`` with a home of its own, its RSS sampled.

    Its data folder's ``local`` (the embedded blob store) is a link to the one both mounts share.
    """

    def __init__(self, name: str, root: Path, shared_local: Path, metadata_store: dict):
        import yaml

        self.name, self.root = name, root
        self.mountpoint = root / "mnt"
        self.log_path = root / "mount.log"
        data = root / "data"
        data.mkdir(parents=True)
        (data / "local").symlink_to(shared_local)
        self.mountpoint.mkdir()
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "host_id": f"bench-{name}",  # two hosts, as far as the store can tell
            "data_dir": str(data),
            "metadata_store": metadata_store,
            "mount": {"staging_dir": str(root / "staging"), "log_file": str(self.log_path)},
            "expiry": {"interval_seconds": 0},  # the expired rows stay for the whole run
        }))
        self.config_path.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("S3FILESFS_", "AWS_", "S3_"))}
        self.env.update(HOME=str(root / "home"), XDG_CONFIG_HOME=str(root / "home/.config"),
                        XDG_DATA_HOME=str(root / "home/.local/share"), XDG_RUNTIME_DIR=str(root / "run"),
                        FUSE_LIBRARY_NAME="fuse3", PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen | None = None
        self.exit_status: int | None = None
        self.high_water = 0  # VmHWM just before the stop, bytes
        self.peak_rss = 0
        self.samples = 0
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> float:
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [console_script("s3filesfs"), "--config", str(self.config_path), "mount", str(self.mountpoint),
                 "--foreground"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)
        self._sampler = threading.Thread(target=self._sample, name=f"rss-{self.name}", daemon=True)
        self._sampler.start()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not mounted_at(self.mountpoint):
            if self.process.poll() is not None:
                raise Failed(f"mount {self.name} exited with {self.process.returncode} before mounting: "
                             f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise Failed(f"mount {self.name} not mounted within {MOUNT_TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.02)
        return time.perf_counter() - started

    def _sample(self) -> None:
        assert self.process is not None
        try:
            process = psutil.Process(self.process.pid)
            while not self._stop_sampling.is_set():
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
                self.samples += 1
                self._stop_sampling.wait(0.02)
        except psutil.Error:
            return

    def rss(self) -> int:
        with contextlib.suppress(psutil.Error):
            if self.process is not None:
                return psutil.Process(self.process.pid).memory_info().rss
        return 0

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise Failed(f"mount {self.name} is not running ({how}; its log's tail is in the results file)")

    def stop(self) -> None:
        """``fusermount3 -u``; the process then ends on its own. SIGTERM if it does not, then SIGKILL
        and a lazy unmount."""
        process = self.process
        if process is not None and process.poll() is None:
            self.high_water = max(self.high_water, _high_water(process.pid))
        if process is not None and process.poll() is None and mounted_at(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, timeout=30)
        if process is not None:
            for how in ("wait", "SIGTERM", "SIGKILL"):
                if how == "SIGTERM":
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                elif how == "SIGKILL":
                    print(f"  mount {self.name} still running after SIGTERM: killing it", flush=True)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                if self._reap(process, STOP_TIMEOUT if how != "SIGKILL" else None):
                    break
        if mounted_at(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()

    def _reap(self, process: subprocess.Popen, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if process.returncode is not None:  # reaped already (poll)
                self.exit_status = process.returncode
                return True
            pid, status, _ = os.wait4(process.pid, os.WNOHANG if deadline else 0)
            if pid:
                process.returncode = self.exit_status = os.waitstatus_to_exitcode(status)
                return True
            time.sleep(0.05)
        return False

    @property
    def peak(self) -> int:
        return max(self.peak_rss, self.high_water)

    def log_tail(self, lines: int = 6) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty log)"
        return "(no log)"


# --- measuring ----------------------------------------------------------------------------------

def bounded(what: str, timeout: float, function, *args):
    """Run ``function`` in a thread; a call into a mount that hangs becomes a ``Failed`` after
    ``timeout`` instead of hanging the benchmark (the thread is left behind, stuck in the kernel
    until the mount is taken down)."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Failed(f"{what}: no answer within {timeout:.0f} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def list_folder(path: Path, timeout: float) -> tuple[float, int]:
    """``ls -l PATH``: seconds and the number of entries printed."""
    started = time.perf_counter()
    try:
        done = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise Failed(f"ls -l did not finish within {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise Failed(f"ls -l exited {done.returncode}: {done.stderr.strip()[:200]}")
    return seconds, sum(1 for line in done.stdout.splitlines() if not line.startswith("total "))


def stat_each(paths: list[Path]) -> list[float]:
    times = []
    for path in paths:
        started = time.perf_counter()
        os.stat(path)
        times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(len(ordered) * q / 100))) - 1]


def until(predicate, timeout: float) -> float | None:
    """Seconds until ``predicate()`` holds, polled every POLL; None if it did not within ``timeout``."""
    started = time.perf_counter()
    while True:
        if predicate():
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(POLL)


def exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


class EngineRun:
    """Everything measured on one engine: ``cells[measure]`` is a dict or a ``Failed`` message."""

    def __init__(self, engine: str, args, work: Path):
        self.engine, self.args, self.work = engine, args, work
        self.cells: dict[str, dict] = {}
        self.details: dict = {}

    def measure(self, name: str, function, *args) -> dict | None:
        try:
            value = function(*args)
        except Failed as exc:
            value = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any failure goes into the table, the rest still runs
            value = {"error": f"{type(exc).__name__}: {exc}"}
        self.cells[name] = value
        shown = value.get("error") or value.get("say", "")
        print(f"  [{self.engine}] {name}: {shown}", flush=True)
        return None if "error" in value else value

    def run(self, plan: Plan, rows: list[tuple]) -> None:
        with contextlib.ExitStack() as stack:
            try:
                store = stack.enter_context(Store(self.engine, self.work))
            except Failed as exc:
                self.cells["setup"] = {"error": str(exc)}
                print(f"  [{self.engine}] unavailable: {exc}", flush=True)
                return
            self.details["store"] = store.describe()
            print(f"  [{self.engine}] {self.details['store']}", flush=True)

            def insert():
                took = store.insert(rows)
                rate = len(rows) / took["seconds"]
                note = (f", of which VACUUM ANALYZE {took['vacuum_analyze_seconds']:.1f} s"
                        if "vacuum_analyze_seconds" in took else "")
                return {**took, "value": took["seconds"], "say": f"{took['seconds']:.1f} s ({rate:,.0f} rows/s{note})"}

            if self.measure("insert", insert) is None:
                return
            shared_local = self.work / "shared" / "local"
            shared_local.mkdir(parents=True, exist_ok=True)
            mounts = [Mount(name, self.work / name, shared_local, store.config()) for name in ("A", "B")]
            for m in mounts:
                stack.callback(m.stop)
            a, b = mounts

            def start():
                seconds = [m.start() for m in mounts]
                return {"value": max(seconds), "say": f"A {seconds[0]:.2f} s, B {seconds[1]:.2f} s"}

            if self.measure("mount", start) is not None:
                self.listings(a, b, plan)
                self.stats(a, plan)
                self.propagation(a, b)
            for m in mounts:
                m.stop()
                self.cells[f"rss {m.name}"] = {
                    "value": m.peak, "sampled": m.peak_rss, "high_water": m.high_water, "samples": m.samples,
                    "exit_status": m.exit_status, "say": f"{m.peak / 1e6:.0f} MB ({m.samples} samples, "
                                                         f"VmHWM {m.high_water / 1e6:.0f} MB)"}
                if m.exit_status not in (0, None):
                    self.cells[f"rss {m.name}"]["say"] += f"; exited {m.exit_status}"
                self.details[f"log {m.name}"] = m.log_tail(20)
                print(f"  [{self.engine}] peak RSS {m.name}: {self.cells[f'rss {m.name}']['say']}", flush=True)

    def listings(self, a: Mount, b: Mount, plan: Plan) -> None:
        expected = plan.folder_files

        def listing(mount: Mount):
            mount.check_alive()
            seconds, entries = list_folder(mount.mountpoint / FOLDER, self.args.ls_timeout)
            wrong = f"; {entries:,} entries, expected {expected:,}" if entries != expected else ""
            return {"value": seconds, "entries": entries, "rss_after": mount.rss(), "ok_entries": not wrong,
                    "say": f"{seconds:.2f} s ({entries:,} entries{wrong}; RSS after {mount.rss() / 1e6:.0f} MB)"}

        self.measure("ls first A", listing, a)
        self.measure("ls second A", listing, a)
        self.measure("ls first B", listing, b)

    def stats(self, a: Mount, plan: Plan) -> None:
        time.sleep(KERNEL_CACHE * 1.5)  # the listing's entries in the kernel's cache lapse
        count = self.args.stats
        rng = random.Random(7)
        for key, folder, names in (("stat folder", FOLDER, plan.folder_names),
                                   ("stat big", BIG_FOLDER, plan.big_names)):
            picked = rng.sample(names, min(count, len(names)))

            def timed(folder=folder, picked=picked):
                a.check_alive()
                times = bounded(f"stat of {len(picked)} names", self.args.op_timeout, stat_each,
                                [a.mountpoint / folder / name for name in picked])
                p50, p95 = percentile(times, 50), percentile(times, 95)
                return {"value": p95, "p50": p50, "p95": p95, "max": max(times), "n": len(times),
                        "say": f"p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, max {max(times) * 1e3:.1f} ms "
                               f"({len(times)} names)"}

            self.measure(key, timed)

    def propagation(self, a: Mount, b: Mount) -> None:
        """``--trials`` files written through A, each polled for on B; then each renamed, then each
        deleted. B last looked each name up more than the kernel's cache time before it changes, so
        what is measured is the mount's own delay, not the kernel's."""
        args = self.args
        tag = f"{os.getpid()}-{self.engine}"
        names = [f"prop-{tag}-{n:03d}.txt" for n in range(args.trials)]
        created: list[str] = []
        renamed: list[str] = []

        def trials(kind: str, todo: list[str], act, seen) -> dict:
            if not todo:
                raise Failed(f"no file to {kind}: the trials before it left none")
            times: list[float] = []
            failures: list[str] = []
            budget_end = time.monotonic() + args.propagation_budget
            phase = random.Random(len(todo))
            for name in todo:
                # At a random moment: a mount that looks for changes every second would otherwise be
                # caught at the same point of its cycle every time (right after the previous trial).
                time.sleep(phase.uniform(0.0, 1.0))
                if time.monotonic() > budget_end:
                    failures.append(f"stopped after {len(times) + len(failures)} of {len(todo)} trials: "
                                    f"budget of {args.propagation_budget:.0f} s spent")
                    break
                a.check_alive()
                b.check_alive()
                bounded(f"{kind} on A", args.op_timeout, act, name)
                waited = bounded(f"polling B after {kind}", args.propagation_timeout + args.op_timeout,
                                 until, lambda name=name: seen(name), args.propagation_timeout)
                if waited is None:
                    failures.append(f"{name}: not seen on B within {args.propagation_timeout:g} s")
                    if len(failures) >= 3:
                        failures.append("stopped after 3 timeouts")
                        break
                else:
                    times.append(waited)
            if not times:
                raise Failed("; ".join(failures[-2:]) or "no trial ran")
            p50, p95 = percentile(times, 50), percentile(times, 95)
            timeouts = sum(1 for f in failures if "not seen" in f)
            say = f"p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(times):.3f} s ({len(times)} trials)"
            if timeouts:
                say += f"; {timeouts} timed out"
            if failures and "stopped" in failures[-1]:
                say += f"; {failures[-1]}"
            # A trial that timed out counts as longer than any that did not.
            judged = float("inf") if timeouts and (timeouts / (len(times) + timeouts)) > 0.05 else p95
            return {"value": judged, "p50": p50, "p95": p95, "max": max(times), "n": len(times), "times": times,
                    "failures": failures, "say": say}

        def create(name: str) -> None:
            with open(a.mountpoint / FOLDER / name, "wb") as f:
                f.write(b"propagation trial\n")
            created.append(name)

        def rename(name: str) -> None:
            new = name.replace(".txt", "-renamed.txt")
            os.rename(a.mountpoint / FOLDER / name, a.mountpoint / FOLDER / new)
            renamed.append(new)

        def delete(name: str) -> None:
            os.unlink(a.mountpoint / FOLDER / name)

        on_b = b.mountpoint / FOLDER
        self.measure("create", trials, "create", names, create, lambda n: exists(on_b / n))
        time.sleep(KERNEL_CACHE * 1.5)
        self.measure("rename", trials, "rename", list(created), rename,
                     lambda n: exists(on_b / n.replace(".txt", "-renamed.txt")))
        time.sleep(KERNEL_CACHE * 1.5)
        self.measure("delete", trials, "delete", list(renamed), delete, lambda n: not exists(on_b / n))


# --- the table ----------------------------------------------------------------------------------

MEASURES = [
    # key, label, target text, passes(value) or None
    ("insert", "insert the rows (setup)", "", None),
    ("mount", "mount until live (A, B)", "", None),
    ("ls first A", "ls -l folder, first after mount (A)", f"<= {LIST_TARGET} s", lambda v: v <= LIST_TARGET),
    ("ls second A", "ls -l folder, second (A)", f"<= {LIST_TARGET} s", lambda v: v <= LIST_TARGET),
    ("ls first B", "ls -l folder, first after mount (B)", f"<= {LIST_TARGET} s", lambda v: v <= LIST_TARGET),
    ("stat folder", "stat, one name in the folder", f"p95 <= {STAT_TARGET * 1e3:.0f} ms", lambda v: v <= STAT_TARGET),
    ("stat big", "stat, one name in the big folder", f"p95 <= {STAT_TARGET * 1e3:.0f} ms",
     lambda v: v <= STAT_TARGET),
    ("create", "write on A, seen on B", f"p95 <= {PROPAGATION_TARGET:.0f} s", lambda v: v <= PROPAGATION_TARGET),
    ("rename", "rename on A, seen on B", f"p95 <= {PROPAGATION_TARGET:.0f} s", lambda v: v <= PROPAGATION_TARGET),
    ("delete", "delete on A, gone on B", f"p95 <= {PROPAGATION_TARGET:.0f} s", lambda v: v <= PROPAGATION_TARGET),
    ("rss A", "peak RSS, mount A", f"<= {RSS_TARGET / 1e6:.0f} MB", lambda v: v <= RSS_TARGET),
    ("rss B", "peak RSS, mount B", f"<= {RSS_TARGET / 1e6:.0f} MB", lambda v: v <= RSS_TARGET),
]


def judge(runs: list[EngineRun]) -> tuple[list[list], bool]:
    """The table's lines, and whether every target was met (a measure not taken meets none)."""
    table, all_pass = [], True
    for key, label, target, passes in MEASURES:
        line = [label, target]
        for run in runs:
            cell = run.cells.get(key)
            if cell is None:
                setup = run.cells.get("setup")
                text = f"FAIL: {setup['error']}" if setup and key == MEASURES[0][0] else "not run"
                ok = False
            elif "error" in cell:
                text, ok = f"FAIL: {cell['error'][:200]}", False
            else:
                ok = passes is None or (passes(cell["value"]) and cell.get("ok_entries", True))
                text = cell["say"] if passes is None else f"{'PASS' if ok else 'FAIL'}  {cell['say']}"
            all_pass = all_pass and ok
            line.append(text)
        table.append(line)
    return table, all_pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in openai_files (default 1,000,000)")
    parser.add_argument("--folder-files", type=int, default=10_000,
                        help=f"live files in the listed folder, {FOLDER}/ (default 10,000)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="metadata engines (default sqlite,postgres)")
    parser.add_argument("--trials", type=int, default=30, help="propagation trials of each kind (default 30)")
    parser.add_argument("--stats", type=int, default=200, help="names looked up in each folder (default 200)")
    parser.add_argument("--ls-timeout", type=float, default=600, help="give up on one ls -l after this (default 600 s)")
    parser.add_argument("--op-timeout", type=float, default=120,
                        help="give up on one call into a mount (a write, rename, stat) after this (default 120 s)")
    parser.add_argument("--propagation-timeout", type=float, default=30,
                        help="a change not seen on B after this is a failed trial (default 30 s)")
    parser.add_argument("--propagation-budget", type=float, default=300,
                        help="stop the trials of one kind after this, with those done so far (default 300 s)")
    parser.add_argument("--dir", type=Path, default=None, help="working folder (default: a temp dir under /tmp)")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := set(engines) - set(ENGINES):
        parser.error(f"--engines: unknown engine(s) {', '.join(sorted(bad))}; choose from {','.join(ENGINES)}")
    if not 0 < args.folder_files < args.rows:
        parser.error("--folder-files must be between 1 and --rows")
    for tool in ("fusermount3", "ls"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (the fuse3 package)")

    # SIGTERM/SIGHUP end the benchmark like Ctrl-C, so every unmount in a finally: runs.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    info = machine()
    source = source_state()
    load_before = os.getloadavg()
    print(f"machine: {info['cpus']} CPUs, {info['memory_mib']} MiB, Python {info['python']}, "
          f"load average {load_before[0]:.1f}")
    print(f"s3filesfs source: {source}")
    started = time.perf_counter()
    plan, rows = generate(args.rows, args.folder_files)
    print(f"rows: {plan.rows:,} ({plan.folder_files:,} live in {FOLDER}/, {plan.big_live:,} live in "
          f"{BIG_FOLDER}/, {plan.expired:,} expired, {plan.duplicates:,} younger duplicates of a name), "
          f"generated in {time.perf_counter() - started:.1f} s")
    runs = []
    for engine in engines:
        # Short paths: the mount's control socket lives under its runtime folder (~107 bytes at most).
        with tempfile.TemporaryDirectory(prefix=f"bs-{engine[:2]}-", dir=args.dir or "/tmp") as tmp:
            run = EngineRun(engine, args, Path(tmp))
            runs.append(run)
            engine_started = time.perf_counter()
            run.run(plan, rows)
            run.details["seconds"] = time.perf_counter() - engine_started
            print(f"  [{engine}] done in {run.details['seconds']:.0f} s", flush=True)

    table, all_pass = judge(runs)
    load_after = os.getloadavg()
    print(f"\nscale benchmark: {plan.rows:,} rows, ls -l of {plan.folder_files:,} files; source {source}; "
          f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at the end; "
          f"MB = 10^6 bytes; {time.perf_counter() - started:.0f} s in all")
    print_table(["measure", "target", *engines], table)
    saved = write_results("scale", {
        "argv": sys.argv[1:] if argv is None else argv, "source": source, "rows": plan.rows,
        "folder_files": plan.folder_files, "expired": plan.expired, "duplicates": plan.duplicates,
        "table": table, "engines": {run.engine: {"cells": run.cells, "details": run.details} for run in runs},
        "load_average": {"start": load_before, "end": load_after},
    })
    print(f"\nresults: {saved.relative_to(BENCH_DIR.parent)}")
    return 0 if all_pass else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # the mounts are already taken down by the ExitStack callbacks
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); mounts stopped", file=sys.stderr)
        sys.exit(130)
