"""Crash tests: ``kill -9`` of the mount (and of ``retry``) at random moments while files are written.

Each trial, drawn from a seed, mounts a fresh bucket, starts several writer processes (files of
0 to 24 MiB, some over the 8 MiB upload part, so multipart uploads are in flight), kills the mount
with SIGKILL at a random moment (mid-write, inside a writer's ``close()``, or just after one),
cleans the dead mountpoint, mounts again on the same staging folder and database, runs
``s3filesfs retry`` and then compares the store with what each writer was told:

* lost: a writer whose ``close()`` succeeded has no row with its exact bytes;
* truncated: a row for a written name does not hold the writer's full bytes;
* duplicates: more than one row for one written name;
* misplaced: a row under the wrong purpose; unknown rows: a row for a name nobody wrote;
* objects without rows, rows without objects, size mismatches (``FileService.check``), open
  multipart uploads;
* closed still staged: a file whose ``close()`` succeeded still waits in staging after ``retry``
  (a second upload of it later would be a duplicate);
* interrupted dropped: a writer that was cut off, with bytes written and no row, is not kept in
  staging (``status --json``);
* retry failed: ``retry`` exited non-zero against a working server.

``test_retry_killed`` also kills ``retry`` itself once, then runs it again. The harness is checked
twice over: ``test_no_kill_control`` runs it with nothing killed (every count must be 0, so what the
other tests report comes from the product), and ``test_audit_counts_each_fault`` plants each kind of
damage and expects the audit to count it.

Writers are Python child processes; one exits 0 only if its ``close()`` returned without error. A
write-only descriptor on the mount bypasses the page cache, so a ``write()`` that returned means the
mount has those bytes (what "interrupted dropped" relies on).

``S3FILESFS_CRASH_TRIALS`` sets the trials per test; ``S3FILESFS_CRASH_SEED`` the first seed (trial
``i`` uses seed + i); a failure names the seeds of its failing trials, and
``S3FILESFS_CRASH_SEED=<seed> S3FILESFS_CRASH_TRIALS=1`` replays one (the timing of a kill is
real, so a replay draws the same plan, not necessarily the same outcome).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from s3filesfs.errors import S3FilesError
from s3filesfs.model import new_file_id
from tests.fs.mounting import Mount

MiB = 1024 * 1024
PART = 8 * MiB  # the default upload part: files over it go out as multipart uploads while written
TRIALS = int(os.environ.get("S3FILESFS_CRASH_TRIALS") or 20)  # per test: the file takes about 110 s here
FIRST_SEED = int(os.environ.get("S3FILESFS_CRASH_SEED") or random.SystemRandom().randrange(1, 10**6))
PURPOSES = ("assistants", "user_data", "batch", "fine-tune")
WAIT = 60.0  # seconds any step may take before the harness calls it stuck

INVARIANTS = ("lost", "truncated", "duplicates", "misplaced", "unknown_rows", "objects_without_rows",
              "rows_without_objects", "size_mismatches", "open_uploads", "closed_still_staged",
              "interrupted_dropped", "retry_failed", "trial_errors")

# The writer: open, write its bytes in chunks, close; says how far it got on stdout. Exit 0 only
# if close() returned without error.
WRITER = r"""
import os, random, sys, time
path, size, seed, chunk, delay, rate, part = sys.argv[1:]
size, seed, chunk, delay, rate, part = int(size), int(seed), int(chunk), float(delay), int(rate), int(part)
data = memoryview(random.Random(seed).randbytes(size))
def say(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()
time.sleep(delay)
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
except OSError as exc:
    say("error", "open", exc.errno, 0)
    sys.exit(10)
say("open")
done, began = 0, time.monotonic()
try:
    while done < size:
        before = done
        done += os.write(fd, data[done:done + chunk])
        if before == 0 or before // part != done // part or done == size:
            say("wrote", done)
        if rate:  # a writer fed by something slower than memory: a network, a compressor
            time.sleep(max(0.0, began + done / rate - time.monotonic()))
except OSError as exc:
    say("error", "write", exc.errno, done)
    try:
        os.close(fd)
    except OSError:
        pass
    sys.exit(11)
say("closing")
try:
    os.close(fd)
except OSError as exc:
    say("error", "close", exc.errno, done)
    sys.exit(12)
say("closed")
"""


class CrashMount(Mount):
    """A mount whose staging folder ``status`` and ``retry`` know too (through the environment)."""

    @property
    def env(self) -> dict:
        return {**super().env, "S3FILESFS_MOUNT_STAGING_DIR": str(self.staging)}


# --- what a trial does, drawn from its seed ------------------------------------------------------


@dataclass
class FilePlan:
    purpose: str
    name: str
    size: int
    content_seed: int
    chunk: int
    start_delay: float
    rate: int = 0  # bytes per second the writer keeps to; 0: as fast as it can

    def content(self) -> bytes:
        return random.Random(self.content_seed).randbytes(self.size)  # what WRITER writes

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()


@dataclass
class Plan:
    seed: int
    files: list[FilePlan]
    kill: str  # timed, mid-multipart, in-close, after-close or none (see below)
    target: int  # the writer whose progress the kill waits for
    kill_delay: float
    retry_kill: str  # "timed", or "mid-upload": after retry opened a file in staging
    retry_kill_delay: float


# When the mount is killed ("kill"), measured from the writers' start (all of them are done in 0.6
# to 1.8 s here) or from a chosen writer's progress:
#   timed          at a random moment while the writers run;
#   mid-multipart  while a file over one part is written (its multipart upload open);
#   in-close       inside a writer's close(), while its upload completes;
#   after-close    just after a writer's close() returned;
#   none           not at all: the mount is stopped cleanly once every writer has closed.
WRITERS_RUN = 1.5  # seconds from the start until every writer has closed, typically
CLOSE_RATE = 30 * MiB  # bytes per second of the last parts sent at close, roughly


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.05:
        return 0
    if roll < 0.25:
        return rng.randint(1, 64 * 1024)
    if roll < 0.55:
        return rng.randint(64 * 1024, PART)
    return _large(rng)


def _large(rng: random.Random) -> int:
    return rng.randint(PART + 1, 24 * MiB)


def draw_plan(seed: int, kill_modes: dict[str, float]) -> Plan:
    rng = random.Random(seed)
    files = [FilePlan(purpose=rng.choice(PURPOSES), name=f"crash-{seed}-{i}-{rng.getrandbits(32):08x}.bin",
                      size=_size(rng), content_seed=rng.getrandbits(64),
                      chunk=rng.choice((64 * 1024, 256 * 1024, MiB, 4 * MiB)),
                      start_delay=rng.uniform(0, 0.4), rate=rng.choice((0, 0, 64 * MiB, 24 * MiB)))
             for i in range(rng.randint(3, 5))]
    kill = rng.choices(list(kill_modes), weights=list(kill_modes.values()))[0]
    if kill == "mid-multipart" and not any(f.size > PART for f in files):
        files[0].size = _large(rng)
    if kill == "mid-multipart":
        target = rng.choice([i for i, f in enumerate(files) if f.size > PART])
    else:
        target = rng.choice([i for i, f in enumerate(files) if f.size > 0] or [0])
    size = files[target].size
    delays = {"none": 0.0, "timed": rng.uniform(0.0, WRITERS_RUN), "mid-multipart": rng.uniform(0.0, 0.04),
              "in-close": rng.uniform(0.0, 0.02 + min(size, PART) / CLOSE_RATE),
              "after-close": rng.uniform(0.0, 0.03)}
    retry_kill = rng.choice(("timed", "mid-upload"))
    # `retry` takes 0.4 to 1.1 s to start here; one staged upload then takes some 20 to 300 ms.
    retry_kill_delay = rng.uniform(0.3, 1.1) if retry_kill == "timed" else rng.uniform(0.0, 0.08)
    return Plan(seed=seed, files=files, kill=kill, target=target, kill_delay=delays[kill],
                retry_kill=retry_kill, retry_kill_delay=retry_kill_delay)


# --- writers -------------------------------------------------------------------------------------


class Writer:
    """One writer process and what it has said so far."""

    def __init__(self, mount: Mount, plan: FilePlan):
        self.plan = plan
        self.said: dict[str, list[str]] = {}
        self.at_kill = "not killed"  # its phase when the mount was killed
        self._changed = threading.Condition()
        path = mount / plan.purpose / plan.name
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(plan.size), str(plan.content_seed), str(plan.chunk),
             f"{plan.start_delay:.3f}", str(plan.rate), str(PART)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            word, *rest = line.split()
            with self._changed:
                self.said[word] = rest
                self._changed.notify_all()
        self.process.wait()
        with self._changed:
            self.said.setdefault("exit", [str(self.process.returncode)])
            self._changed.notify_all()

    def wait_until(self, word: str, at_least: int = 0, timeout: float = WAIT) -> bool:
        """Wait until the writer has said ``word`` (with a number >= ``at_least``) or exited; False
        if it exited without."""
        def seen():
            return word in self.said and (not at_least or int(self.said[word][0]) >= at_least)

        with self._changed:
            self._changed.wait_for(lambda: seen() or "exit" in self.said, timeout)
            return seen()

    def finish(self, timeout: float = WAIT) -> int:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"writer of {self.plan.name} ({self.plan.size} bytes) stuck for {timeout}s") from None
        self._reader.join(timeout)
        return self.process.returncode

    @property
    def closed(self) -> bool:
        """close() returned without error (the process exited 0)."""
        return self.process.returncode == 0

    @property
    def wrote(self) -> bool:
        """At least one byte was accepted by the mount (a write returned)."""
        error = self.said.get("error")  # ["write", errno, bytes written before it]
        return "wrote" in self.said or (error is not None and int(error[2]) > 0)

    def describe(self) -> str:
        error = self.said.get("error")
        told = "close ok" if self.closed else (f"{error[0]} failed, errno {error[1]} after {error[2]} B"
                                               if error else f"exit {self.process.returncode}")
        return f"{self.plan.purpose}/{self.plan.name} {self.plan.size} B, {told}, {self.at_kill} at the kill"

    def phase(self) -> str:
        with self._changed:
            said = dict(self.said)
        code = self.process.poll()
        if code is not None:
            return "closed" if code == 0 else "failed"
        if "closing" in said:
            return "closing"
        return "writing" if "open" in said else "starting"


# --- the trial -----------------------------------------------------------------------------------


@dataclass
class TrialResult:
    seed: int
    kill: str
    counts: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(self.counts[name] for name in INVARIANTS)

    def line(self) -> str:
        bad = ", ".join(f"{name} {self.counts[name]}" for name in INVARIANTS if self.counts[name])
        return f"seed {self.seed} ({self.kill}): {bad}" + "".join(f"\n    {note}" for note in self.notes)


def kill_mount(m: Mount) -> None:
    """SIGKILL the mount process and clean the dead mountpoint."""
    m.process.send_signal(signal.SIGKILL)
    m.process.wait(WAIT)
    subprocess.run(["fusermount3", "-u", "-z", str(m.mountpoint)], capture_output=True)
    m.stop()  # nothing left to stop: forgets the process, closes the test's database connection


def strike(m: Mount, writers: list[Writer], plan: Plan, result: TrialResult) -> None:
    """Kill the mount at the plan's moment (or, for "none", stop it cleanly once all have closed)."""
    if plan.kill == "none":
        for w in writers:
            w.finish()
        m.stop()
        return
    target = writers[plan.target]
    reached = {"timed": lambda: True, "after-close": lambda: target.wait_until("exit"),
               "in-close": lambda: target.wait_until("closing"),
               "mid-multipart": lambda: target.wait_until("wrote", at_least=PART + 1)}[plan.kill]()
    if not reached:
        result.notes.append(f"the {plan.kill} target writer failed first")
    time.sleep(plan.kill_delay)
    for w in writers:
        w.at_kill = w.phase()
    kill_mount(m)
    phases = Counter(w.at_kill for w in writers)
    result.stats["mount_kills"] += 1
    result.stats["kills_in_close"] += bool(phases["closing"])
    result.stats["kills_mid_write"] += bool(phases["writing"])
    multipart = any(w.at_kill == "writing" and w.plan.size > PART for w in writers)
    result.stats["kills_mid_multipart_write"] += multipart
    result.stats["kills_during_upload"] += bool(phases["closing"]) or multipart
    result.stats["kills_after_a_close"] += bool(phases["closed"])


def in_staging(pid: int, staging) -> bool:
    """Whether process ``pid`` has a file of the staging folder open: ``retry`` is at work on a
    staged upload (its record, or its data)."""
    targets = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:  # it exited, or closed a descriptor meanwhile
        pass
    return any(t.startswith(f"{staging}/") for t in targets)


def kill_retry(m: Mount, plan: Plan, result: TrialResult) -> None:
    """Start ``retry`` and SIGKILL it: at a random moment, or a random moment after it began work
    on a staged upload (if it is still running by then)."""
    process = subprocess.Popen(m.command("retry"), env=m.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        if plan.retry_kill == "mid-upload":
            deadline = time.monotonic() + WAIT
            while not in_staging(process.pid, m.staging) and process.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"retry neither opened a staged file nor ended in {WAIT}s")
                time.sleep(0.003)
        process.wait(plan.retry_kill_delay)
        result.stats["retries_done_before_kill"] += 1
        result.notes.append(f"the first retry ended (exit {process.returncode}) before its kill")
    except subprocess.TimeoutExpired:
        uploading = in_staging(process.pid, m.staging)
        process.send_signal(signal.SIGKILL)
        process.wait(WAIT)
        result.stats["retry_kills"] += 1
        result.stats["retry_kills_in_staging"] += uploading
        result.notes.append(f"retry SIGKILLed after {time.monotonic() - started:.2f} s, "
                            + ("with a staged file open" if uploading else "with no staged file open"))


def staged_names(m: Mount) -> Counter:
    """The filenames ``s3filesfs status --json`` lists as waiting in staging (in its ``staged``
    list, or any other list of entries with a filename). ``status`` exits 1 without a daemon."""
    result = m.cli("status", "--json", check=False)
    try:
        status = json.loads(result.stdout)
        assert isinstance(status["staged"], list)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise AssertionError(
            f"status --json gave no 'staged' list ({exc!r}): {result.stdout}{result.stderr}") from exc
    return Counter(entry["filename"] for value in status.values() if isinstance(value, list)
                   for entry in value if isinstance(entry, dict) and "filename" in entry)


def body_sha256(service, file_id: str) -> str | None:
    """The sha256 of a file's body; None if it cannot be read (a row without an object, which
    ``check()`` reports)."""
    digest = hashlib.sha256()
    try:
        _, chunks = service.content(file_id)
        for chunk in chunks:
            digest.update(chunk)
    except S3FilesError:
        return None
    return digest.hexdigest()


def audit(m: Mount, writers: list[Writer], result: TrialResult) -> None:
    """Compare the store (after the restart and ``retry``) with what each writer was told."""
    counts, service = result.counts, m.service()

    def fault(name: str, number: int, what: str) -> None:
        if number:
            counts[name] += number
            result.notes.append(f"{name}: {what}")

    rows = defaultdict(list)
    for row in service.metadata.all_files():
        rows[row["filename"]].append(row)
    staged = staged_names(m)
    for w in writers:
        found = rows.pop(w.plan.name, [])
        bodies = {r["id"]: body_sha256(service, r["id"]) for r in found}
        intact = [r for r in found if r["bytes"] == w.plan.size and bodies[r["id"]] == w.plan.sha256]
        correct = [r for r in intact if r["purpose"] == w.plan.purpose]
        shown = f"{w.describe()}; rows: {[(r['id'], r['purpose'], r['bytes']) for r in found]}"
        unreadable = sum(bodies[r["id"]] is None for r in found)  # counted as rows without objects
        fault("truncated", len(found) - len(intact) - unreadable, shown)
        fault("misplaced", sum(r["purpose"] != w.plan.purpose for r in found), shown)
        fault("duplicates", max(0, len(found) - 1), shown)
        if w.closed:
            fault("lost", int(not correct), shown)
            fault("closed_still_staged", int(bool(staged[w.plan.name])), shown)
        elif not found and w.wrote and not staged[w.plan.name]:
            fault("interrupted_dropped", 1, shown)
    fault("unknown_rows", sum(len(r) for r in rows.values()), str(dict(rows)))
    report = service.check()
    fault("objects_without_rows", len(report.objects_without_rows), str(report.objects_without_rows))
    fault("rows_without_objects", len(report.rows_without_objects), str(report.rows_without_objects))
    fault("size_mismatches", len(report.size_mismatches), str(report.size_mismatches))
    uploads = m.pending_uploads()
    fault("open_uploads", len(uploads), str(uploads))
    result.stats["writers"] += len(writers)
    result.stats["closed_files"] += sum(w.closed for w in writers)
    result.stats["failed_writers"] += sum(not w.closed for w in writers)
    result.stats["multipart_files"] += sum(w.plan.size > PART for w in writers)


def drop_bucket(m: Mount) -> None:
    """Free the server's memory: every trial's bucket is emptied and removed."""
    client = m.server.client()
    try:
        for upload in client.list_multipart_uploads(Bucket=m.bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=m.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=m.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=m.bucket, Key=item["Key"])
        client.delete_bucket(Bucket=m.bucket)
    except Exception:  # a bucket never created (the mount failed first) has nothing to free
        pass


def run_trial(server, plan: Plan, kill_retry_too: bool) -> TrialResult:
    result = TrialResult(seed=plan.seed, kill=f"{plan.kill}, retry {plan.retry_kill}" if kill_retry_too else plan.kill)
    started = time.monotonic()
    m = CrashMount("s3", server)
    writers: list[Writer] = []
    try:
        m.start()
        writers = [Writer(m, f) for f in plan.files]
        strike(m, writers, plan, result)
        for w in writers:
            w.finish()
        m.start()
        if kill_retry_too:
            kill_retry(m, plan, result)
        retry = m.cli("retry", check=False, timeout=WAIT * 2)
        if retry.returncode != 0:
            result.counts["retry_failed"] += 1
            result.notes.append(f"retry exited {retry.returncode}: {retry.stderr.strip()[-300:]}")
        audit(m, writers, result)
    except Exception as exc:  # the trial could not finish (a mount that does not come back, ...)
        result.counts["trial_errors"] += 1
        result.notes.append(f"{type(exc).__name__}: {str(exc)[:600]}")
    finally:
        for w in writers:
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait()
        if m.process is not None and m.process.poll() is None:
            kill_mount(m)  # all is checked: no need to wait for a clean unmount
        m.stop()
        drop_bucket(m)
        shutil.rmtree(m.root, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def run_trials(server, kill_modes: dict[str, float], kill_retry_too: bool, trials: int,
               label: str) -> list[TrialResult]:
    started = time.monotonic()
    results = [run_trial(server, draw_plan(FIRST_SEED + i, kill_modes), kill_retry_too) for i in range(trials)]
    elapsed = time.monotonic() - started
    counts = sum((r.counts for r in results), Counter())
    stats = sum((r.stats for r in results), Counter())
    failing = [r for r in results if r.failed]
    summary = (f"{label}: {trials} trials (seeds {FIRST_SEED}..{FIRST_SEED + trials - 1}) in {elapsed:.0f}s; "
               + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
               + "; failing trials " + str(len(failing)) + "; "
               + (", ".join(f"{name} {counts[name]}" for name in INVARIANTS if counts[name]) or "all invariants held"))
    print(f"\n{summary}")
    if failing:
        pytest.fail("\n".join([summary, *(r.line() for r in failing),
                               f"replay one: S3FILESFS_CRASH_SEED=<seed> S3FILESFS_CRASH_TRIALS=1 "
                               f"pytest {__file__} -k {label}"]), pytrace=False)
    return results


# --- the tests -----------------------------------------------------------------------------------


class Told:
    """What a writer was told, without a writer: for the audit's own test."""

    def __init__(self, plan: FilePlan, closed: bool, wrote: bool):
        self.plan, self.closed, self.wrote = plan, closed, wrote

    def describe(self) -> str:
        return f"{self.plan.name} (planted)"


def test_audit_counts_each_fault(s3_server):
    """The audit is not blind: each kind of damage planted behind the store's back is counted once."""
    m = CrashMount("s3", s3_server)
    try:
        def told(name, closed=True, wrote=True, size=1000, purpose="assistants"):
            return Told(FilePlan(purpose, name, size, content_seed=len(name), chunk=MiB, start_delay=0), closed, wrote)

        twice, missing, cut, moved, cut_off, gone, fine = (told("twice"), told("missing"), told("cut"), told("moved"),
                                                           told("cut-off", closed=False), told("gone"), told("fine"))
        m.plant("twice", "assistants", twice.plan.content())
        m.plant("twice", "assistants", twice.plan.content())
        m.plant("cut", "assistants", cut.plan.content()[:500])
        m.plant("moved", "batch", moved.plan.content())
        m.plant("fine", "assistants", fine.plan.content())
        m.plant("stranger", "assistants", b"nobody wrote this")
        service = m.service()
        orphan = service.blobs.writer(new_file_id(), {})  # an object only, as a kill before its row leaves it
        orphan.write(b"object, no row")
        orphan.commit()
        service.blobs.delete(m.plant("gone", "assistants", gone.plan.content()).id)  # a row without its object
        s3_server.client().create_multipart_upload(Bucket=m.bucket, Key="file-open-upload")
        result = TrialResult(seed=0, kill="planted")
        audit(m, [twice, missing, cut, moved, cut_off, gone, fine], result)
        assert {k: v for k, v in result.counts.items() if v} == {
            "duplicates": 1, "lost": 4, "truncated": 1, "misplaced": 1, "interrupted_dropped": 1,
            "unknown_rows": 1, "objects_without_rows": 1, "rows_without_objects": 1, "open_uploads": 1,
        }, result.notes
    finally:
        m.stop()
        drop_bucket(m)
        shutil.rmtree(m.root, ignore_errors=True)


def test_no_kill_control(s3_server, fuse):
    """The harness itself: nothing is killed, so every count is 0 and every writer closed."""
    results = run_trials(s3_server, {"none": 1.0}, kill_retry_too=False, trials=2, label="test_no_kill_control")
    for r in results:
        assert r.stats["closed_files"] == r.stats["writers"] > 0, r


def test_mount_killed(s3_server, fuse):
    """SIGKILL of the mount mid-write, inside a close, or just after one; then restart and retry."""
    run_trials(s3_server, {"timed": 0.3, "mid-multipart": 0.25, "in-close": 0.3, "after-close": 0.15},
               kill_retry_too=False, trials=TRIALS, label="test_mount_killed")


def test_retry_killed(s3_server, fuse):
    """SIGKILL of the mount inside a close (leaving uploads to retry), then of ``retry`` itself."""
    run_trials(s3_server, {"in-close": 0.7, "mid-multipart": 0.3}, kill_retry_too=True, trials=TRIALS,
               label="test_retry_killed")
