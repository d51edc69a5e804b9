"""The mount removes expired files on its own timer (expiry.interval_seconds): a real FUSE mount
process, with nothing else running, on the embedded store and on a bucket of the S3 server."""

import shutil
import time

import pytest

from tests.fs.conftest import BACKENDS
from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

INTERVAL = 0.5


def mount_with_expiry(backend: str, server, extra_args=()) -> Mount:
    m = Mount(backend, server, extra_args=extra_args)
    config_file = m.root / "config" / "s3filesfs" / "config.yaml"  # XDG_CONFIG_HOME of the mount process
    config_file.parent.mkdir(parents=True)
    config_file.write_text(f"expiry:\n  interval_seconds: {INTERVAL}\n")
    return m


@pytest.fixture(params=BACKENDS)
def expiring_mount(request, fuse):
    server = request.getfixturevalue("s3_server") if request.param == "s3" else None
    m = mount_with_expiry(request.param, server)
    try:
        yield m.start()
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)


def test_an_expired_file_leaves_the_store_within_the_interval(expiring_mount):
    m = expiring_mount
    now = int(time.time())
    kept = m.plant(unique("kept"), expires_at=now + 3600)
    doomed = m.plant(unique("gone"), created_at=now - 7200, expires_at=now - 3600)
    planted = time.monotonic()
    wait_for(lambda: doomed.id not in m.object_keys() and doomed.id not in m.rows(), 10,
             "the expired file to leave the bucket and the table", interval=0.05)
    assert time.monotonic() - planted < INTERVAL + 1.5
    assert kept.id in m.object_keys() and kept.id in m.rows()
    assert (m / "assistants" / kept.filename).read_bytes() == b"planted\n"
    wait_for(lambda: f"expiry: removed expired file {doomed.id}" in m.log(), 5, "the removal in the mount's log")
    assert f"expired files are removed every {INTERVAL:g} s" in m.log()
    m.assert_consistent()


def test_a_read_only_mount_removes_nothing(fuse):
    m = mount_with_expiry("local", None, extra_args=["--read-only"])
    try:
        m.start()  # the timer would have said so before the mount came up
        assert "mounting local:" in m.log()
        assert "expired files are removed" not in m.log()
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)
