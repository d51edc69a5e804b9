"""A store that stops answering: every request gives up within the stall timeout, and says so.

The S3 server sits behind a proxy that can go silent (connections accepted, never answered), as a
hung server or middlebox does. Nothing may wait on it much longer than ``stall_timeout_seconds``.
"""

import io
import logging
import time

import pytest

from s3filesfs import config
from s3filesfs.errors import StorageUnavailable
from s3filesfs.files import open_service
from tests.silentproxy import SilentProxy

STALL = 3.0
SLACK = 4.0  # the retries' back-off and the test's own overhead


@pytest.fixture
def proxy(s3_server):
    proxy = SilentProxy(s3_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def service(proxy, s3_server, tmp_path):
    values = s3_server.settings_values(s3_server.new_bucket_name(), db_path=str(tmp_path / "files.db"),
                                       stall_timeout_seconds=STALL)
    values["endpoint_url"] = proxy.endpoint_url
    service = open_service(config.load(flags=values))
    assert service.blobs  # the bucket, while the proxy still answers
    return service


def test_an_upload_to_a_silent_store_gives_up_in_time_and_says_why(service, proxy, caplog):
    kept = service.create(io.BytesIO(b"before"), "before.txt", "assistants")
    proxy.silent = True
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="s3filesfs"), pytest.raises(StorageUnavailable) as raised:
        service.create(io.BytesIO(b"during"), "during.txt", "assistants")
    waited = time.monotonic() - started
    assert waited < STALL + SLACK, f"waited {waited:.1f} s on a silent store"
    assert "did not answer" in raised.value.message and "stall_timeout_seconds" in raised.value.message
    stalls = [r.getMessage() for r in caplog.records if "no answer for" in r.getMessage()]
    assert stalls and "PutObject" in stalls[0] and "giving up" in stalls[-1], stalls
    # Nothing was registered; what the cut-off upload may have left is removed once it answers again.
    proxy.silent = False
    assert [f.id for f in service.iter_all()] == [kept.id]
    service.reap_abandoned()
    assert service.check().clean and service.metadata.intents() == []


def test_a_read_from_a_silent_store_gives_up_in_time(service, proxy):
    file = service.create(io.BytesIO(b"x" * 100_000), "read.bin", "assistants")
    proxy.silent = True
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        service.read(file.id, 0, 1000)
    assert time.monotonic() - started < STALL + SLACK
