"""A store that stops answering while files are written through the mount.

The mount's S3 server sits behind a proxy that goes silent (connections accepted, never answered).
No request the kernel makes may wait much longer than the stall timeout; each stall is logged with
what it was doing; the written file is kept for `retry`, which registers it once the store answers.
"""

import errno
import os
import shutil
import time

import pytest

from tests.fs.mounting import Mount
from tests.fs.test_failures import staged
from tests.fs.test_writes import MiB, assert_registered, payload, rows_named
from tests.helpers import unique, wait_for
from tests.silentproxy import SilentProxy

STALL = 3.0
SLACK = 4.0  # retries' back-off, a fresh connection, the test's own overhead


class ProxiedServer:
    """The moto server as the mount sees it: through the proxy."""

    def __init__(self, server, proxy: SilentProxy):
        self._server = server
        self.endpoint_url = proxy.endpoint_url

    def __getattr__(self, name):
        return getattr(self._server, name)


class StallMount(Mount):
    @property
    def env(self) -> dict:
        return {**super().env, "S3FILESFS_MOUNT_STAGING_DIR": str(self.staging),
                "S3FILESFS_STALL_TIMEOUT_SECONDS": str(STALL)}


@pytest.fixture
def stall_mount(s3_server, fuse):
    proxy = SilentProxy(s3_server.port)
    m = StallMount("s3", ProxiedServer(s3_server, proxy))
    try:
        m.start()
        yield m, proxy
    finally:
        proxy.silent = False
        m.stop()
        proxy.close()
        shutil.rmtree(m.root, ignore_errors=True)


def test_a_silent_store_fails_the_close_in_time_and_retry_registers_it(stall_mount):
    m, proxy = stall_mount
    name = unique("stalled", ".bin")
    data = payload(12 * MiB + 99, "stall")
    slowest = 0.0
    fd = os.open(m / "batch" / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for start in range(0, len(data), MiB):
            if start == 9 * MiB:
                proxy.silent = True  # one part is in the store, the next goes out into silence
            began = time.monotonic()
            os.write(fd, data[start:start + MiB])
            slowest = max(slowest, time.monotonic() - began)
    finally:
        began = time.monotonic()
        with pytest.raises(OSError) as failure:
            os.close(fd)
        closing = time.monotonic() - began
    assert failure.value.errno == errno.EIO
    assert slowest < STALL + SLACK, f"a write waited {slowest:.1f} s"
    assert closing < STALL + SLACK, f"close waited {closing:.1f} s"
    assert "no answer for" in m.log(), m.log_tail()
    assert not rows_named(m, name, "batch")
    entries = [e for e in staged(m) if e["filename"] == name]
    assert [(e["state"], e["bytes"]) for e in entries] == [("failed", len(data))], entries
    proxy.silent = False
    result = m.cli("retry", check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_registered(m, m / "batch" / name, data, "batch")
    # The multipart upload the silence cut off is aborted by the mount once the store answers.
    wait_for(lambda: not m.pending_uploads(), 3 * STALL, "the cut-off upload aborted")
    m.assert_consistent()
