"""Fixtures of the unit suite: a FileService over each of the three stores.

``backend`` runs a test three times: on the embedded local store, on moto's in-process mock
(``mock_aws``) and on a real moto server over HTTP (the session's server, a fresh bucket per test).
"""

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
from tests.unit.stores import Clock, LocalBackend, S3Backend

BACKENDS = ("local", "mock_aws", "moto_server")


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


@pytest.fixture
def local_backend(tmp_path, clock):
    # The embedded default, wired the way the CLI wires it: no bucket configured.
    settings = config.load(flags={"data_dir": str(tmp_path / "data")})
    assert settings.backend == "local"
    service = open_service(settings)
    service.clock = clock
    _ = service.blobs  # creates the store's folders, as the first upload would
    return LocalBackend(service, clock, settings.local_store_dir)


@pytest.fixture
def mock_aws_backend(tmp_path, clock):
    with mock_aws():
        bucket = "unit-mock-bucket"
        store = S3BlobStore(bucket_name=bucket, auto_create_bucket=True)
        service = FileService(MetadataStore(tmp_path / "files.db"), store, clock=clock)
        _ = service.blobs  # creates the bucket
        yield S3Backend("mock_aws", service, clock, boto3.client("s3", region_name="us-east-1"), bucket)


@pytest.fixture
def server_backend(s3_server, tmp_path, clock):
    bucket = s3_server.new_bucket_name()
    settings = config.load(flags=s3_server.settings_values(bucket, db_path=str(tmp_path / "files.db")))
    assert settings.backend == "s3"
    service = open_service(settings)
    service.clock = clock
    _ = service.blobs  # creates the bucket
    return S3Backend("moto_server", service, clock, s3_server.client(), bucket)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.getfixturevalue({"local": "local_backend", "mock_aws": "mock_aws_backend",
                                    "moto_server": "server_backend"}[request.param])


@pytest.fixture
def service(backend):
    return backend.service
