"""The daemon's ``GET /metrics``: Prometheus text on its socket, and on TCP behind the key."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.conftest import write
from tests.helpers import free_port, wait_for


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, by name and labels."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_on_the_socket_and_over_tcp_behind_the_key(env, tmp_path, daemon_process, monkeypatch):
    monkeypatch.setenv("S3FILESFS_TEST_KEY", "metrics-key-42")
    port = free_port()
    world = env(api={"listen": f"127.0.0.1:{port}", "api_key_env": "S3FILESFS_TEST_KEY"})
    daemon = daemon_process(world, tmp_path / "daemon.log")

    first = daemon.client.get("/metrics")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("text/plain; version=")
    before = samples(first.text)
    assert value(before, "s3filesfs_files_uploaded_total") == 0

    body = b'{"prompt": "hi"}\n' * 1000
    write(world.watch / "batch" / "a.jsonl", body)
    wait_for(lambda: daemon.status()["counts"]["this_run"].get("uploaded", 0) >= 1, 30, "the upload")
    # A read through the API moves the read counters; a missing id is an error of its own kind.
    file_id = daemon.client.get("/v1/files").json()["data"][0]["id"]
    assert daemon.client.get(f"/v1/files/{file_id}/content").content == body
    assert daemon.client.get("/v1/files/file-" + "0" * 32).status_code == 404

    after = samples(daemon.client.get("/metrics").text)
    assert value(after, "s3filesfs_files_uploaded_total") == 1
    assert value(after, "s3filesfs_uploaded_bytes_total") == len(body)
    assert value(after, "s3filesfs_read_bytes_total") >= len(body)
    assert value(after, "s3filesfs_reads_total") >= 1
    assert value(after, "s3filesfs_errors_total", kind="NotFound") == 1
    assert value(after, "s3filesfs_upload_queue") == 0
    put = value(after, "s3filesfs_s3_request_seconds_count", operation="PutObject") + value(
        after, "s3filesfs_s3_request_seconds_count", operation="CompleteMultipartUpload")
    assert put >= 1
    assert value(after, "s3filesfs_s3_request_seconds_count", operation="GetObject") >= 1
    assert value(after, "s3filesfs_s3_request_seconds_sum", operation="GetObject") > 0

    url = f"http://127.0.0.1:{port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401 and "s3filesfs_" not in refused.text
    over_tcp = httpx.get(url, headers={"Authorization": "Bearer metrics-key-42"})
    assert over_tcp.status_code == 200
    assert value(samples(over_tcp.text), "s3filesfs_files_uploaded_total") == 1
