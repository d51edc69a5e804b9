"""The benchmarks' simulated link (bench/link.py): it relays S3 traffic and adds what it says it adds.

Timing tests on a shared machine: the link can only be slower than its settings under load, never
faster, so the lower bounds are strict and the upper bounds carry the self-check's 10 % slack.
"""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_link():
    spec = importlib.util.spec_from_file_location("bench_link", BENCH / "link.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_link"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


link = _load_link()


def test_spec_parses_latency_and_rate():
    assert link.LinkSpec.parse("30ms,25MBps") == link.LinkSpec(0.030, 25e6)
    assert link.LinkSpec.parse("0.1s") == link.LinkSpec(0.1, None)
    assert link.LinkSpec.parse("500KBps") == link.LinkSpec(0.0, 500e3)
    assert link.LinkSpec.parse("30ms,25MBps").label == "30ms,25MBps"
    with pytest.raises(ValueError, match="expected e.g."):
        link.LinkSpec.parse("30 furlongs")


def test_self_check_measures_the_settings():
    checks = link.self_test(link.LinkSpec(0.040, 20e6), seconds=1.0)
    assert len(checks) == 5  # TTFB, then download and upload on one and on two connections
    failed = [c for c in checks if not c[1]]
    assert not failed, failed


def test_s3_requests_through_the_link_each_wait_for_their_first_byte(s3_server):
    with link.Link(("127.0.0.1", s3_server.port), link.LinkSpec(0.050, None)) as proxy:
        import boto3

        from tests.s3server import ACCESS_KEY, SECRET_KEY

        client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        bucket = s3_server.new_bucket_name()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"hello" * 1000)
        seconds = []
        for _ in range(3):
            started = time.monotonic()
            body = client.get_object(Bucket=bucket, Key="k")["Body"].read()
            seconds.append(time.monotonic() - started)
            assert body == b"hello" * 1000
        assert min(seconds) >= 0.050
        # One delayed first byte per response: create, put (its "100 Continue", then its answer), 3 gets.
        assert proxy.stats["responses"] == 6


def test_a_connection_idle_past_the_timeout_is_closed(monkeypatch):
    import socket

    monkeypatch.setattr(link, "IDLE_TIMEOUT", 0.4)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (in its backlog), never answers
        with link.Link(silent.getsockname()[:2], link.LinkSpec(0.0, None)) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                started = time.monotonic()
                assert client.recv(1) == b""  # closed by the link, not answered
                assert 0.4 <= time.monotonic() - started < 3
            assert proxy.stats["idle_closed"] == 1
