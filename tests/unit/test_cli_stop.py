"""``s3filesfs upload`` told to stop (SIGTERM, SIGHUP) in the middle of a multipart upload.

The command runs as a real process against the moto server and reads its body from a FIFO the test
feeds, so the signal lands while parts are in the bucket and the rest has not arrived yet. Stopped,
it must abort the multipart upload (S3 keeps, and bills, the parts of an open one), register
nothing and exit with 128 + the signal's number: also when a second signal follows at once, and
when the kernel hands the signal to a thread other than the main one. Under ``nohup`` (SIGHUP
ignored) a hangup changes nothing.
"""

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import wait_for
from tests.s3server import ACCESS_KEY, SECRET_KEY

MIB = 1024 * 1024
BODY = os.urandom(40 * MIB)
SENT_BEFORE_THE_SIGNAL = 24 * MIB  # three 8 MiB parts: the multipart upload is open and has parts


class Upload:
    """``python -m s3filesfs ... upload FIFO --purpose batch`` with the test writing into the FIFO."""

    def __init__(self, s3_server, tmp_path, *, ignore_hangup=False):
        self.s3 = s3_server.client()
        self.bucket = s3_server.new_bucket_name()
        self.s3.create_bucket(Bucket=self.bucket)
        self.fifo = tmp_path / "big.jsonl"
        os.mkfifo(self.fifo)
        self.common = ["--bucket", self.bucket, "--endpoint-url", s3_server.endpoint_url,
                       "--db-path", str(tmp_path / "files.db")]
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        # `nohup` does exactly this before it runs the command.
        ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignore_hangup else None
        command = [sys.executable, "-m", "s3filesfs", *self.common,
                   "upload", str(self.fifo), "--purpose", "batch", "--json"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env,
            preexec_fn=ignore)
        self.writer = None
        try:
            self.writer = wait_for(self._open_writer, 30, "the command to open the FIFO")
        except BaseException:
            self.process.kill()
            self.process.communicate()
            raise
        os.set_blocking(self.writer, True)

    def _open_writer(self):
        assert self.process.poll() is None, self.process.communicate()
        try:
            return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.writer, view):]

    def close(self) -> None:
        if self.writer is not None:
            os.close(self.writer)
            self.writer = None

    def open_uploads(self) -> list[dict]:
        return self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def parts_sent(self) -> int:
        uploads = self.open_uploads()
        if not uploads:
            return 0
        [upload] = uploads
        return len(self.s3.list_parts(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                   .get("Parts", []))

    def objects(self) -> list[dict]:
        return self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])

    def listed(self) -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "s3filesfs", *self.common, "ls", "--json"],
                                capture_output=True, env=self.env, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)["data"]


@pytest.fixture
def upload(s3_server, tmp_path):
    started = []

    def start(**kwargs) -> Upload:
        started.append(Upload(s3_server, tmp_path, **kwargs))
        return started[-1]

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate()
        run.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda sig: signal.Signals(sig).name)
def test_a_stopped_upload_aborts_its_multipart_upload(upload, sig):
    run = upload()
    run.send(BODY[:SENT_BEFORE_THE_SIGNAL])
    wait_for(lambda: run.parts_sent() >= 2, 30, "parts of the multipart upload in the bucket")
    assert run.process.poll() is None  # still waiting for the rest of the body

    run.process.send_signal(sig)
    _, stderr = run.process.communicate(timeout=60)
    stderr = stderr.decode()
    assert run.process.returncode == 128 + sig, stderr
    assert stderr == f"error: stopped by {signal.Signals(sig).name} while uploading {run.fifo}\n"
    assert run.open_uploads() == []  # aborted: no parts left behind
    assert run.objects() == []
    assert run.listed() == []  # and no row registered


def test_an_upload_run_under_nohup_keeps_going_after_a_hangup(upload):
    run = upload(ignore_hangup=True)
    run.send(BODY[:SENT_BEFORE_THE_SIGNAL])
    wait_for(lambda: run.parts_sent() >= 2, 30, "parts of the multipart upload in the bucket")

    run.process.send_signal(signal.SIGHUP)
    run.send(BODY[SENT_BEFORE_THE_SIGNAL:])
    run.close()
    stdout, stderr = run.process.communicate(timeout=60)
    assert run.process.returncode == 0, stderr.decode()
    created = json.loads(stdout)
    assert created["bytes"] == len(BODY)
    assert [item["id"] for item in run.listed()] == [created["id"]]
    assert run.open_uploads() == []
    assert run.s3.get_object(Bucket=run.bucket, Key=created["id"])["Body"].read() == BODY


def test_a_second_signal_does_not_cut_the_abort_short(upload):
    run = upload()
    run.send(BODY[:SENT_BEFORE_THE_SIGNAL])
    wait_for(lambda: run.parts_sent() >= 2, 30, "parts of the multipart upload in the bucket")

    run.process.send_signal(signal.SIGTERM)
    run.process.send_signal(signal.SIGHUP)  # as an impatient supervisor would, while it aborts
    _, stderr = run.process.communicate(timeout=60)
    # Python runs the handlers of signals that arrived together lowest number first.
    assert run.process.returncode in (128 + signal.SIGHUP, 128 + signal.SIGTERM), stderr.decode()
    assert run.open_uploads() == []
    assert run.listed() == []


def test_a_signal_another_thread_took_still_stops_the_upload(upload):
    run = upload()
    run.send(BODY[:SENT_BEFORE_THE_SIGNAL])
    wait_for(lambda: run.parts_sent() >= 2, 30, "parts of the multipart upload in the bucket")

    # The kernel may give a process's signal to any thread; here, for sure, to one that is not the
    # main thread (which sits blocked reading the FIFO, and must still be woken to clean up): the
    # newest, a part sender.
    pid = run.process.pid
    others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    assert others, "the upload runs no thread besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(pid, max(others), signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
    _, stderr = run.process.communicate(timeout=60)
    assert run.process.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert run.open_uploads() == []
    assert run.listed() == []
