"""The mount removes expired files on its own timer (expiry.interval_seconds): a real FUSE mount
process, with nothing else running, on the embedded store and on a bucket of the S3 server."""

import shutil
import time

import pytest

from tests.fs.conftest import BACKENDS
from tests.fs.mounting import Mount
from tests.helpers import unique, wait_for

INTERVAL = 0.5


@pytest.fixture(params=BACKENDS)
def expiring_mount(request, fuse):
    server = request.getfixturevalue("s3_server") if request.param == "s3" else None
    m = Mount(request.param, server)
    config_file = m.root / "config" / "s3filesfs" / "config.yaml"  # XDG_CONFIG_HOME of the mount process
    config_file.parent.mkdir(parents=True)
    config_file.write_text(f"expiry:\n  interval_seconds: {INTERVAL}\n")
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
    m.assert_consistent()
