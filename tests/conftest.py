"""Shared fixtures: an isolated environment for every test, a real S3 server process and a real
PostgreSQL server.

A server that cannot start fails the tests that need it; nothing is skipped for a missing part,
except PostgreSQL outside CI: a developer without the ``postgresql`` package (``scripts/setup.sh``
installs it) sees those tests skipped with the reason, while under ``CI=true`` they fail.
"""

import os

import pytest

from tests.helpers import LEAKY_ENV, lacking
from tests.pgserver import PostgresServer, find_bindir
from tests.s3server import MotoServer


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's config, data or AWS credentials."""
    for name in list(os.environ):
        if name.startswith(LEAKY_ENV):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    # boto3 must never find a real credential file or instance role.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_server():
    """One moto server process for the session; tests isolate themselves by bucket name."""
    try:
        server = MotoServer().start()
    except Exception as exc:  # no skip: a missing server is a failed run
        pytest.fail(f"could not start the S3 test server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def own_s3_server():
    """A server of the test's own, for tests that stop and restart it."""
    try:
        server = MotoServer().start()
    except Exception as exc:
        pytest.fail(f"could not start the S3 test server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One private PostgreSQL cluster for the session, started when a test first needs it; tests
    isolate themselves by role (``new_role``)."""
    bindir = find_bindir()
    if bindir is None:
        lacking("PostgreSQL is not installed (no initdb; scripts/setup.sh installs the postgresql package)")
    server = PostgresServer(bindir)
    try:
        server.start()
        server.wait_ready()
    except Exception as exc:  # installed but not starting: always a failure
        log = server.tail_of_log()
        server.stop()
        pytest.fail(f"could not start the PostgreSQL test server: {exc}\n{log}")
    yield server
    server.stop()
