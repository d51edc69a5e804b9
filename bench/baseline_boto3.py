"""The plain-boto3 baselines, run as their own process so that they are measured like the tool.

    python bench/baseline_boto3.py upload FILE --endpoint-url URL --bucket B --key K

``upload`` is ``client.upload_file`` with boto3's default ``TransferConfig`` (8 MiB parts, 10
threads): what a user who "just uses boto3" gets. Credentials come from the usual AWS environment
variables. Prints one JSON line (key, bytes, seconds inside the call).
"""

import argparse
import json
import os
import sys
import time

import boto3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    upload = sub.add_parser("upload", help="client.upload_file with the default TransferConfig")
    upload.add_argument("file")
    upload.add_argument("--endpoint-url", required=True)
    upload.add_argument("--bucket", required=True)
    upload.add_argument("--key", required=True)
    upload.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)

    client = boto3.client("s3", endpoint_url=args.endpoint_url, region_name=args.region)
    started = time.perf_counter()
    client.upload_file(args.file, args.bucket, args.key)
    seconds = time.perf_counter() - started
    print(json.dumps({"key": args.key, "bytes": os.path.getsize(args.file), "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
