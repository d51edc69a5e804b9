"""Fixtures of the unit suite: a FileService over each of the three stores and both metadata engines.

``backend`` runs a test five times: on the embedded local store, on moto's in-process mock
(``mock_aws``) and on a real moto server over HTTP (the session's server, a fresh bucket per test),
with the metadata on SQLite (a file in the test's folder), and again on the local store and the
moto server with the metadata on PostgreSQL (the session's server, a fresh role and schema per test).
"""

import contextlib
import functools

import boto3
import botocore.loaders
import botocore.session
import pytest
from moto import mock_aws

from s3filesfs import config
from s3filesfs.blobs.s3 import S3BlobStore
from s3filesfs.files import FileService, open_service
from s3filesfs.metadata import MetadataStore
from tests.unit.stores import Backend, Clock, LocalBackend, MetadataTarget, S3Backend

BACKENDS = ("local", "mock_aws", "moto_server")
ENGINES = ("sqlite", "postgres")


@pytest.fixture(scope="session", autouse=True)
def shared_botocore_loader():
    """Every boto3 session of the run shares one botocore data loader.

    Each S3BlobStore makes its own boto3 session, as it should in a process; in a test run that
    means parsing ~1 MB of service-model JSON a few hundred times. The loader only reads botocore's
    own data files, so sharing its cache changes nothing but the time.
    """
    with pytest.MonkeyPatch.context() as patch:
        shared = functools.lru_cache(maxsize=None)(botocore.loaders.create_loader)
        patch.setattr(botocore.session, "create_loader", shared)
        yield


@pytest.fixture
def clock():
    return Clock()


def metadata_target(engine: str, request, tmp_path) -> MetadataTarget:
    """Where a test's metadata lives: a SQLite file of its own, or a PostgreSQL role of its own."""
    if engine == "sqlite":
        return MetadataTarget.sqlite(tmp_path / "files.db")
    server = request.getfixturevalue("postgres_server")
    return MetadataTarget.postgres(server.new_role())


@pytest.fixture(params=ENGINES)
def metadata_db(request, tmp_path) -> MetadataTarget:
    """The metadata database of a test, on each engine."""
    return metadata_target(request.param, request, tmp_path)


def local_service(tmp_path, clock, target: MetadataTarget | None) -> LocalBackend:
    # The embedded default, wired the way the CLI wires it: no bucket configured, and with no
    # target the metadata in its default place.
    flags = {"data_dir": str(tmp_path / "data"), **(target.settings_values() if target else {})}
    settings = config.load(flags=flags)
    assert settings.backend == "local"
    service = open_service(settings)
    service.clock = clock
    _ = service.blobs  # creates the store's folders, as the first upload would
    return LocalBackend(service, clock, settings.local_store_dir)


@contextlib.contextmanager
def mock_aws_service(clock, target: MetadataTarget):
    with mock_aws():
        bucket = "unit-mock-bucket"
        store = S3BlobStore(bucket_name=bucket, auto_create_bucket=True)
        service = FileService(MetadataStore(target.location), store, clock=clock)
        _ = service.blobs  # creates the bucket
        yield S3Backend("mock_aws", service, clock, boto3.client("s3", region_name="us-east-1"), bucket)


def server_service(s3_server, clock, target: MetadataTarget) -> S3Backend:
    bucket = s3_server.new_bucket_name()
    settings = config.load(flags=s3_server.settings_values(bucket, **target.settings_values()))
    assert settings.backend == "s3"
    service = open_service(settings)
    service.clock = clock
    _ = service.blobs  # creates the bucket
    return S3Backend("moto_server", service, clock, s3_server.client(), bucket)


@pytest.fixture
def local_backend(tmp_path, clock):
    backend = local_service(tmp_path, clock, None)
    yield backend
    backend.service.metadata.close()


@pytest.fixture
def server_backend(s3_server, tmp_path, clock):
    """A bucket of the real moto server, with the metadata on SQLite."""
    backend = server_service(s3_server, clock, MetadataTarget.sqlite(tmp_path / "files.db"))
    yield backend
    backend.service.metadata.close()


# PostgreSQL runs under the local store and the real S3 server; moto's in-process mock would only
# repeat the latter's metadata work, at a third more of the suite's PostgreSQL time.
COMBINATIONS = [(store, "sqlite") for store in BACKENDS] + [("local", "postgres"), ("moto_server", "postgres")]


@pytest.fixture(params=[pytest.param(pair, id="-".join(pair)) for pair in COMBINATIONS])
def backend(request, tmp_path, clock):
    store, engine = request.param
    target = metadata_target(engine, request, tmp_path)
    with contextlib.ExitStack() as stack:
        made: Backend
        if store == "local":
            made = local_service(tmp_path, clock, target if engine == "postgres" else None)
        elif store == "mock_aws":
            made = stack.enter_context(mock_aws_service(clock, target))
        else:
            made = server_service(request.getfixturevalue("s3_server"), clock, target)
        stack.callback(made.service.metadata.close)
        yield made


@pytest.fixture
def service(backend):
    return backend.service
