"""How many parts of one upload go out at once: few on a fast link, up to ten on a slow one.

A remote link limits each connection (S3: about 90 MB/s each), so a client fills it with parts in
parallel; on a nearby server a narrow width already keeps up and holds less memory. The store's
writer widens while its parts go out slower than ``SLOW_PART``. Tested against the moto server,
with parts made slow by holding each request back.
"""

import io
import os
import threading
import time

import pytest

from s3filesfs.blobs.s3 import WIDEST

MIB = 1024 * 1024


def _watched(store, delay: float):
    """Wrap the client's upload_part: hold each one back ``delay`` s; report the most at once."""
    real = store.client.upload_part
    lock, now, most = threading.Lock(), [0], [0]

    def upload_part(**kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(delay)
            return real(**kwargs)
        finally:
            with lock:
                now[0] -= 1

    store.client.upload_part = upload_part
    return most


@pytest.mark.parametrize("delay, narrow", [(0.0, True), (0.4, False)])
def test_parts_in_flight_follow_the_link(server_backend, delay, narrow):
    service = server_backend.service
    store = service.blobs
    if narrow:
        store.slow_part = MIB  # whatever this shared machine's loopback gives counts as fast
    most = _watched(store, delay)
    data = os.urandom(20 * store.part_size)
    file = service.create(io.BytesIO(data), "wide.bin", "batch")
    assert file.bytes == len(data)
    if narrow:
        assert most[0] <= store.concurrency  # a fast store: the configured width, no more memory
    else:
        assert store.concurrency < most[0] <= WIDEST  # slow parts: more at once, within the cap
    assert service.read(file.id, 12 * MIB, 8) == data[12 * MIB:12 * MIB + 8]
