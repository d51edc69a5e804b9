"""Upload benchmark: ``s3filesfs upload`` against a plain boto3 ``upload_file``, same file, same server.

    .venv/bin/python bench/bench_upload.py [--size-mb 1024] [--repeat 3]

Starts one moto server, writes a test file, then runs each tool ``--repeat`` times as a real
subprocess (alternating which goes first), timing it and tracking its peak resident memory. Every
run is checked: the object must exist with the file's size, or the benchmark stops. Prints a table
of medians, the throughput ratio (s3filesfs / boto3; above 1 means s3filesfs is faster) and a
PASS/FAIL line for the memory target: the upload process stays under 200 MB of resident memory for
any file size, because an upload streams its parts and never holds the file in memory.
Results go to ``bench/results/upload-<time>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    MIB,
    Measured,
    console_script,
    machine,
    make_test_file,
    median,
    moto_server,
    print_table,
    run_measured,
    upload_command,
    write_results,
)

TARGET_BYTES = 200 * 1000 * 1000  # "200 MB", read strictly as decimal megabytes (190.7 MiB)
S3FILESFS = "s3filesfs upload"
BOTO3 = "boto3 upload_file"


def child_env(server) -> dict:
    """The environment for both tools: this server's credentials and nothing that could redirect them."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3FILESFS_", "S3_", "BOTO_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    return env


def run_s3filesfs(server, work: Path, path: Path, size: int, run: int, args, tree: Path | None = None) -> Measured:
    bucket = server.new_bucket_name()  # fresh; the tool creates it (auto_create_bucket)
    values = server.settings_values(bucket, metadata_store={"type": "sqlite", "db_path": str(work / f"meta-{run}.db")})
    upload = {}
    if args.part_size_mb:
        upload["part_size_mb"] = args.part_size_mb
    if args.concurrency:
        upload["concurrency"] = args.concurrency
    if upload:
        values["upload"] = upload
    config = work / f"config-{run}.yaml"
    config.write_text(yaml.safe_dump(values))
    command = [console_script("s3filesfs"), "--config", str(config),
               "upload", str(path), "--purpose", "batch", "--json"]
    env = child_env(server)
    env["XDG_DATA_HOME"] = str(work / "data")  # nothing of the run lands in the user's home
    if tree is not None:  # another checkout's package shadows the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    result = run_measured(command, env=env, interval=args.interval)
    if result.returncode != 0:
        raise SystemExit(f"s3filesfs upload failed ({result.returncode}):\n{result.stderr}")
    created = json.loads(result.stdout)
    if created.get("bytes") != size or created.get("purpose") != "batch":
        raise SystemExit(f"s3filesfs upload answered {created}, expected bytes={size}")
    result.extra = {"bucket": bucket, "key": created["id"]}
    return result


def run_boto3(server, work: Path, path: Path, size: int, run: int, args) -> Measured:
    bucket = server.new_bucket_name()
    server.client().create_bucket(Bucket=bucket)
    key = f"baseline-{run}"
    result = run_measured(upload_command(path, server.endpoint_url, bucket, key), env=child_env(server),
                          interval=args.interval)
    if result.returncode != 0:
        raise SystemExit(f"boto3 upload_file failed ({result.returncode}):\n{result.stderr}")
    result.extra = {"bucket": bucket, "key": key}
    return result


def server_cpu_seconds(server) -> float:
    """CPU time the S3 server has used so far: moto is single-process Python, often the bottleneck."""
    times = psutil.Process(server.process.pid).cpu_times()
    return times.user + times.system


def verify_and_clean(server, result: Measured, size: int, tool: str) -> None:
    """The object must be there with the file's size; then it goes, so moto's memory stays flat."""
    client = server.client()
    bucket, key = result.extra["bucket"], result.extra["key"]
    stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if stored != size:
        raise SystemExit(f"{tool}: object {bucket}/{key} holds {stored} bytes, expected {size}")
    result.extra["verified_bytes"] = stored
    client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="test file size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is reported (default 3)")
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling period in seconds (default 0.02)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the test file (default: a temp dir)")
    parser.add_argument("--part-size-mb", type=int, help="s3filesfs upload.part_size_mb (default: the project's)")
    parser.add_argument("--concurrency", type=int, help="s3filesfs upload.concurrency (default: the project's)")
    parser.add_argument("--only", choices=("s3filesfs", "boto3"), help="run one tool only (no ratio)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="also run s3filesfs from another source tree (a folder holding the "
                             "s3filesfs package, e.g. from `git archive REV s3filesfs`), interleaved "
                             "with the others; repeatable")
    args = parser.parse_args(argv)
    size = args.size_mb * MIB
    tools = {S3FILESFS: run_s3filesfs, BOTO3: run_boto3}
    if args.only:
        tools = {name: fn for name, fn in tools.items() if name.startswith(args.only)}
    for spec in args.tree:
        name, _, folder = spec.partition("=")
        folder = Path(folder).resolve()
        if not name or not (folder / "s3filesfs" / "__init__.py").exists():
            parser.error(f"--tree {spec}: expected NAME=DIR with DIR/s3filesfs/__init__.py")
        tools[f"{S3FILESFS} @{name}"] = functools.partial(run_s3filesfs, tree=folder)

    runs: dict[str, list[Measured]] = {name: [] for name in tools}
    with tempfile.TemporaryDirectory(prefix="bench-upload-", dir=args.dir) as tmp, moto_server() as server:
        work = Path(tmp)
        path = work / f"test-{args.size_mb}MiB.bin"
        started = time.perf_counter()
        digest = make_test_file(path, size)
        print(f"test file: {path} ({args.size_mb} MiB, written in {time.perf_counter() - started:.1f} s)")
        print(f"S3 server: moto {machine()['moto']} at {server.endpoint_url}")
        # A fresh moto server is slow on its first large object (its heap grows page by page), so
        # an untimed upload comes first; otherwise whichever tool goes first pays for it.
        started = time.perf_counter()
        server.client().create_bucket(Bucket="warm-up")
        server.client().upload_file(str(path), "warm-up", "warm-up")
        server.client().delete_object(Bucket="warm-up", Key="warm-up")
        print(f"warm-up upload (untimed, in-process boto3): {time.perf_counter() - started:.1f} s")
        width = max(len(name) for name in tools)
        for run in range(args.repeat):
            order = list(tools) if run % 2 == 0 else list(reversed(tools))  # who goes first alternates
            for name in order:
                server_cpu = server_cpu_seconds(server)
                result = tools[name](server, work, path, size, run, args)
                result.extra["server_cpu_seconds"] = server_cpu_seconds(server) - server_cpu
                verify_and_clean(server, result, size, name)
                runs[name].append(result)
                print(f"  run {run + 1}/{args.repeat}  {name:<{width}} {result.seconds:7.2f} s  "
                      f"{args.size_mb / result.seconds:7.1f} MiB/s  peak RSS {result.peak_rss / MIB:6.1f} MiB "
                      f"(ru_maxrss {result.ru_maxrss / MIB:.1f} MiB, {result.samples} samples), "
                      f"CPU {result.cpu_seconds:.1f} s, server CPU {result.extra['server_cpu_seconds']:.1f} s",
                      flush=True)

    summary = {}
    for name, results in runs.items():
        seconds = median([r.seconds for r in results])
        summary[name] = {
            "seconds": seconds,
            "mib_per_s": args.size_mb / seconds,
            "peak_rss_mib": max(r.peak_rss for r in results) / MIB,
            "ru_maxrss_mib": max(r.ru_maxrss for r in results) / MIB,
            "peak_bytes": max(r.peak for r in results),
        }
    baseline = summary.get(BOTO3)
    header = ["tool", "seconds", "MiB/s", "peak RSS MiB", "ru_maxrss MiB", "vs boto3"]
    rows = []
    for name, s in summary.items():
        ratio = s["mib_per_s"] / baseline["mib_per_s"] if baseline else float("nan")
        s["ratio_vs_boto3"] = ratio
        rows.append([name, s["seconds"], s["mib_per_s"], s["peak_rss_mib"], s["ru_maxrss_mib"], f"{ratio:.2f}x"])
    print()
    print(f"{args.size_mb} MiB upload, median of {args.repeat} run(s); peak RSS is the maximum over runs")
    print_table(header, rows)
    verdict = None
    if S3FILESFS in summary:
        peak = summary[S3FILESFS]["peak_bytes"]
        verdict = peak < TARGET_BYTES
        print(f"\n{'PASS' if verdict else 'FAIL'}: s3filesfs upload peak RSS {peak / 1e6:.1f} MB "
              f"({peak / MIB:.1f} MiB) {'<' if verdict else '>='} 200 MB target")
    if baseline and S3FILESFS in summary:
        print(f"throughput ratio s3filesfs / boto3 upload_file: {summary[S3FILESFS]['ratio_vs_boto3']:.2f} "
              "(> 1 means s3filesfs is faster)")
    saved = write_results("upload", {
        "argv": sys.argv[1:], "size_bytes": size, "sha256": digest, "repeat": args.repeat,
        "target_bytes": TARGET_BYTES, "pass": verdict, "summary": summary, "runs": runs,
    })
    print(f"results: {saved.relative_to(BENCH_DIR.parent)}")
    return 0 if verdict in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
