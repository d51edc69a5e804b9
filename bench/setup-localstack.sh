#!/usr/bin/env bash
# LocalStack's S3, for the benchmarks' `--server localstack`: its own virtualenv in
# bench/.venv-localstack (gitignored), never part of the project's install.
#
# localstack-core with the base runtime only (the gateway and the S3 provider; no Docker, no other
# services). The pins are a set known to start: later cbor2, pyOpenSSL and cryptography releases
# have broken this release's imports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv-localstack/bin/python ]; then
  echo "setup-localstack: creating bench/.venv-localstack"
  "$PYTHON" -m venv .venv-localstack
fi
echo "setup-localstack: installing localstack-core[base-runtime] 4.13.1"
.venv-localstack/bin/python -m pip install -q --disable-pip-version-check \
  'localstack-core[base-runtime]==4.13.1' 'cbor2<5.7' 'pyopenssl<24.3' 'cryptography<44'
.venv-localstack/bin/python -c "import localstack.runtime.main, localstack.services.s3.provider" \
  && echo "setup-localstack: ready (start it with: bench/bench_mount.py --server localstack)"
