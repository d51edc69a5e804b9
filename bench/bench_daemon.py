"""Benchmark of the sync daemon against a local moto S3 server (not a test).

Measures, with ``s3filesfs daemon`` running as a real subprocess:

1. latency: time from a small file landing (closed) in ``batch/`` to its id being listed through
   the socket's ``GET /v1/files``, one file at a time, over 200 files: median and p95;
2. throughput: files per second for a drop of 1,000 small files (``cp -r`` into ``user_data/``),
   until every one is uploaded, beside ``aws s3 sync`` and ``rclone copy`` of the same folder to a
   fresh bucket on the same server (each tool with its default parallelism).

Run:  python bench/bench_daemon.py [--files 1000] [--latency-files 200] [--size 1024] [--workers 4]
Self-contained on purpose: it starts its own moto server and daemon, and cleans up after itself.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml

from s3filesfs.daemon.client import DaemonClient

KEY, SECRET = "bench-key", "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout, what, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def start_moto(workdir: Path):
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    def accepting() -> bool:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True

    wait(accepting, 30, "moto", 0.1)
    return proc, f"http://127.0.0.1:{port}"


def make_files(folder: Path, count: int, size: int, prefix: str) -> None:
    folder.mkdir(parents=True)
    for number in range(count):
        (folder / f"{prefix}-{number:05}.txt").write_bytes(os.urandom(size // 2).hex().encode()[:size])


def timed(command, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--latency-files", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--workers", type=int, default=4, help="the daemon's sync.workers")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="s3fb-", dir="/tmp"))
    moto, endpoint = start_moto(workdir)
    daemon = None
    try:
        cfg = {"bucket_name": "bench-daemon", "endpoint_url": endpoint, "aws_access_key_id": KEY,
               "aws_secret_access_key": SECRET, "auto_create_bucket": True, "region": "us-east-1",
               "metadata_store": {"type": "sqlite", "db_path": str(workdir / "meta.db")},
               "data_dir": str(workdir / "data"),
               "sync": {"watch_dir": str(workdir / "S3Files"), "workers": args.workers},
               "api": {"socket": str(workdir / "api.sock")}}
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        exe = Path(sys.executable).parent / "s3filesfs"
        daemon = subprocess.Popen([str(exe), "--config", str(workdir / "config.yaml"), "daemon"],
                                  stdout=open(workdir / "daemon.log", "wb"), stderr=subprocess.STDOUT)
        client = DaemonClient(workdir / "api.sock", timeout=10)
        wait(lambda: client.status() is not None, 30, "the daemon", 0.05)

        # 1. latency, one file at a time.
        latencies = []
        batch = workdir / "S3Files" / "batch"
        for number in range(args.latency_files):
            name = f"lat-{number:05}.txt"
            data = os.urandom(args.size // 2).hex().encode()[: args.size]
            with open(batch / name, "wb") as out:
                out.write(data)
            landed = time.perf_counter()
            # Files created in the same second are ordered by id, so look through the whole page.
            wait(lambda: any(f["filename"] == name for f in client.get("/v1/files", {"purpose": "batch"})["data"]),
                 30, name)
            latencies.append(time.perf_counter() - landed)
        latencies.sort()
        p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]

        # 2. throughput: a drop of many small files.
        source = workdir / "drop"
        make_files(source, args.files, args.size, "drop")
        before = client.get("/v1/status")["counts"]["this_run"].get("uploaded", 0)
        start = time.perf_counter()
        subprocess.run(["cp", "-r", f"{source}/.", str(workdir / "S3Files" / "user_data")], check=True)
        wait(lambda: client.get("/v1/status")["counts"]["this_run"].get("uploaded", 0) - before >= args.files,
             600, "the drop", 0.01)
        daemon_seconds = time.perf_counter() - start
        status = client.get("/v1/status")
        assert status["counts"]["this_run"]["uploaded"] - before == args.files, status["counts"]

        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}
        peers = []
        aws = shutil.which("aws", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if aws:
            s3.create_bucket(Bucket="bench-aws")
            peers.append(("aws s3 sync", timed([aws, "--endpoint-url", endpoint, "s3", "sync", str(source),
                                                "s3://bench-aws/"], env)))
        rclone = shutil.which("rclone", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if rclone:
            s3.create_bucket(Bucket="bench-rclone")
            rclone_env = {**env, "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
                          "RCLONE_CONFIG_MOTO_ENDPOINT": endpoint, "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": KEY,
                          "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true"}
            peers.append(("rclone copy", timed([rclone, "copy", str(source), "moto:bench-rclone"], rclone_env)))

        print(f"\ns3filesfs daemon benchmark: moto server on loopback, {args.size}-byte files, "
              f"daemon workers={args.workers}\n")
        print(f"latency, file closed -> id listed via the socket ({len(latencies)} files, one at a time)")
        print(f"  median {statistics.median(latencies) * 1000:8.1f} ms")
        print(f"  p95    {p95 * 1000:8.1f} ms")
        print(f"  max    {latencies[-1] * 1000:8.1f} ms\n")
        print(f"drop of {args.files} files")
        print(f"  {'tool':<26}{'seconds':>10}{'files/s':>10}{'rel. speed':>11}")
        rows = [("s3filesfs daemon (+ rows)", daemon_seconds)] + peers
        for label, seconds in rows:
            print(f"  {label:<26}{seconds:>10.2f}{args.files / seconds:>10.1f}{daemon_seconds / seconds:>10.2f}x")
        print(json.dumps({"latency_median_ms": statistics.median(latencies) * 1000, "latency_p95_ms": p95 * 1000,
                          "drop_files_per_s": {label: args.files / seconds for label, seconds in rows}}))
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
