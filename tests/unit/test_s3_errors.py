"""What users see when S3 says no or goes away: the seed's messages, the right error class, no row
left behind, and no file given up for lost because the server was merely unreachable."""

import errno
import io
import os
from typing import cast
from unittest import mock

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from s3filesfs import config, errors
from s3filesfs.blobs.s3 import S3BlobStore
from s3filesfs.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    NotFound,
    S3FilesError,
    StorageError,
    StorageUnavailable,
)
from s3filesfs.files import ORPHAN_GRACE, FileService, open_service
from s3filesfs.metadata import MetadataStore
from tests.s3server import ACCESS_KEY, SECRET_KEY
from tests.unit.stores import Clock, as_s3, assert_clean

MIB = 1024 * 1024


def client_error(code: str, message: str, operation: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def service_on(server, tmp_path, bucket: str, **values) -> FileService:
    settings = config.load(flags=server.settings_values(bucket, db_path=str(tmp_path / "files.db"), **values))
    service = open_service(settings)
    service.clock = Clock()
    return service


# --- the bucket -------------------------------------------------------------------------------


def test_missing_bucket_without_auto_create_gives_the_seed_message(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    service = service_on(s3_server, tmp_path, bucket, auto_create_bucket=False)
    with pytest.raises(BucketNotFound) as raised:
        service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert str(raised.value) == (
        f"S3 bucket '{bucket}' does not exist. Either create the bucket manually or set "
        "'auto_create_bucket: true' in your configuration.")
    assert (raised.value.exit_code, raised.value.errno) == (1, errno.ENODEV)
    assert service.metadata.all_files() == []
    assert bucket not in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]


def test_listing_needs_no_bucket(s3_server, tmp_path):
    service = service_on(s3_server, tmp_path, s3_server.new_bucket_name(), auto_create_bucket=False)
    assert service.list().data == []


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_auto_create_bucket_creates_it_in_its_region(s3_server, tmp_path, region):
    bucket = s3_server.new_bucket_name()
    service = service_on(s3_server, tmp_path, bucket, region=region)
    created = service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    location = s3_server.client().get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert (location or "us-east-1") == region
    assert s3_server.client().get_object(Bucket=bucket, Key=created.id)["Body"].read() == b"data"
    assert_clean(service)


def test_bucket_created_by_someone_else_is_used_as_it_is(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    s3_server.client().create_bucket(Bucket=bucket)
    s3_server.client().put_object(Bucket=bucket, Key="unrelated/readme.txt", Body=b"hi")
    service = service_on(s3_server, tmp_path, bucket, auto_create_bucket=False)
    service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert_clean(service)


# --- access denied ----------------------------------------------------------------------------


def test_access_denied_on_the_bucket_says_why(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    service = service_on(s3_server, tmp_path, bucket)
    store = service._blobs
    # A HEAD is refused with a bare 403; the listing that follows tells the reason.
    with mock.patch.object(as_s3(store).client, "head_bucket",
                           side_effect=client_error("403", "Forbidden", "HeadBucket", 403)), \
         mock.patch.object(as_s3(store).client, "list_objects_v2",
                           side_effect=client_error("AccessDenied", "Access Denied", "ListObjectsV2", 403)):
        with pytest.raises(AccessDenied) as raised:
            service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert str(raised.value) == (f"Access denied to S3 bucket '{bucket}': "
                                 "the credentials lack permission or a bucket policy forbids it")
    assert (raised.value.errno, raised.value.http_status, raised.value.exit_code) == (errno.EACCES, 502, 1)
    assert SECRET_KEY not in str(raised.value)
    assert service.metadata.all_files() == []


def test_access_denied_when_only_the_head_is_refused(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    s3_server.client().create_bucket(Bucket=bucket)
    service = service_on(s3_server, tmp_path, bucket)
    with mock.patch.object(as_s3(service._blobs).client, "head_bucket",
                           side_effect=client_error("403", "Forbidden", "HeadBucket", 403)):
        with pytest.raises(AccessDenied, match=rf"^Access denied to S3 bucket '{bucket}': "
                                               "the credentials were refused or lack permission$"):
            service.check()


@pytest.mark.parametrize("code, reason", [
    ("AccessDenied", "the credentials lack permission or a bucket policy forbids it"),
    ("SignatureDoesNotMatch", "the secret access key is wrong"),
    ("InvalidAccessKeyId", "the server does not know this access key id"),
    ("ExpiredToken", "the session token has expired"),
])
def test_access_denied_on_upload_leaves_no_row(s3_server, tmp_path, code, reason):
    bucket = s3_server.new_bucket_name()
    service = service_on(s3_server, tmp_path, bucket)
    _ = service.blobs  # the bucket is there and reachable
    with mock.patch.object(as_s3(service.blobs).client, "put_object",
                           side_effect=client_error(code, "refused", "PutObject", 403)):
        with pytest.raises(AccessDenied) as raised:
            service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert str(raised.value) == f"Access denied to S3 bucket '{bucket}': {reason}"
    assert service.metadata.all_files() == []
    assert_clean(service)


def test_no_credentials_at_all_is_a_config_error(s3_server, tmp_path):
    # The test environment has no AWS variables, files or instance role: the default chain is empty.
    store = S3BlobStore(bucket_name=s3_server.new_bucket_name(), endpoint_url=s3_server.endpoint_url,
                        auto_create_bucket=True)
    service = FileService(MetadataStore(tmp_path / "files.db"), store)
    with pytest.raises(ConfigError, match="no AWS credentials found: set aws_access_key_id and "
                                          "aws_secret_access_key"):
        service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert service.metadata.all_files() == []


def test_default_credential_chain_is_used_when_no_keys_are_configured(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = s3_server.new_bucket_name()
    settings = config.load(flags={"bucket_name": bucket, "endpoint_url": s3_server.endpoint_url,
                                  "auto_create_bucket": True, "db_path": str(tmp_path / "files.db")})
    assert settings.aws_access_key_id is None
    service = open_service(settings)
    created = service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    assert s3_server.client().head_object(Bucket=bucket, Key=created.id)["ContentLength"] == 4


# --- other failures of the server -------------------------------------------------------------


def test_server_error_on_read_is_a_storage_error_and_keeps_the_file(s3_server, tmp_path):
    service = service_on(s3_server, tmp_path, s3_server.new_bucket_name())
    created = service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    cast(Clock, service.clock).advance(ORPHAN_GRACE * 10)
    with mock.patch.object(as_s3(service.blobs).client, "get_object",
                           side_effect=client_error("InternalError", "We encountered an internal error.",
                                                    "GetObject", 500)):
        with pytest.raises(StorageError) as raised:
            service.content(created.id)
    assert not isinstance(raised.value, NotFound)
    assert str(raised.value) == "S3 GetObject failed: InternalError: We encountered an internal error."
    assert raised.value.exit_code == 3
    assert service.retrieve(created.id) == created  # a failing server is not a missing object
    assert_clean(service)


def test_timeouts_are_storage_unavailable(s3_server, tmp_path):
    service = service_on(s3_server, tmp_path, s3_server.new_bucket_name())
    created = service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    with mock.patch.object(as_s3(service.blobs).client, "get_object",
                           side_effect=ReadTimeoutError(endpoint_url=s3_server.endpoint_url)):
        with pytest.raises(StorageUnavailable, match=f"S3 endpoint {s3_server.endpoint_url} did not answer "
                                                     f"for {created.id}: no answer within 10 s, 3 times"):
            service.read(created.id, 0, 4)
    assert service.read(created.id, 0, 4) == b"data"


# --- the server goes away ---------------------------------------------------------------------


def test_server_stopped_mid_upload(own_s3_server, tmp_path):
    server = own_s3_server
    service = service_on(server, tmp_path, server.new_bucket_name())
    before = service.create(io.BytesIO(b"uploaded while the server was up"), "before.txt", "assistants")
    cast(Clock, service.clock).advance(ORPHAN_GRACE * 10)

    pending = service.begin("during.bin", "batch")
    pending.write(os.urandom(9 * MIB))  # one part is on its way
    server.stop()
    with pytest.raises(StorageUnavailable) as raised:
        pending.write(os.urandom(8 * MIB))
        pending.commit()
    message = str(raised.value)
    assert message.startswith(f"S3 endpoint {server.endpoint_url} is unreachable")
    assert SECRET_KEY not in message
    assert (raised.value.exit_code, raised.value.http_status, raised.value.errno) == (3, 503, errno.EIO)
    assert [row["id"] for row in service.metadata.all_files()] == [before.id]
    assert pending.id in {intent["id"] for intent in service.metadata.intents()}  # its parts may be there

    # While it is down: new uploads fail cleanly, reads fail without reaping, listing still works.
    with pytest.raises(StorageUnavailable):
        service.create(io.BytesIO(b"small"), "small.txt", "assistants")
    with pytest.raises(StorageUnavailable):
        service.content(before.id)
    with pytest.raises(StorageUnavailable):
        service.delete(before.id)
    with pytest.raises(StorageUnavailable):
        service.check()
    assert [f.id for f in service.list().data] == [before.id]
    assert service.retrieve(before.id) == before

    # Back up (empty: moto keeps its data in memory). The loss shows in check(), not as a crash.
    server.start()
    server.client().create_bucket(Bucket=as_s3(service.blobs).bucket)
    assert service.check().rows_without_objects == [before.id]
    with pytest.raises(NotFound):
        service.content(before.id)
    after = service.create(io.BytesIO(b"after"), "after.txt", "assistants")
    assert [f.id for f in service.list().data] == [after.id]
    # The upload cut off by the outage stayed recorded until its leftovers could be removed: the
    # first upload that went through again removed them.
    assert service.metadata.intents() == []
    assert_clean(service)


# --- the error tree ---------------------------------------------------------------------------


@pytest.mark.parametrize("error, errno_, http_status, exit_code", [
    (errors.S3FilesError("backend failed"), errno.EIO, 500, 3),
    (errors.UserError("bad"), errno.EINVAL, 400, 1),
    (errors.InvalidRequest("bad limit", param="limit"), errno.EINVAL, 400, 1),
    (errors.InvalidPurpose("x", ("batch",)), errno.EINVAL, 400, 1),
    (errors.InvalidName("invalid file name '.'"), errno.EINVAL, 400, 1),
    (errors.NameTooLong("too long"), errno.ENAMETOOLONG, 400, 1),
    (errors.NotFound("file-" + "0" * 32), errno.ENOENT, 404, 1),
    (errors.NotPermitted("no mkdir"), errno.EPERM, 403, 1),
    (errors.ConfigError("config error: x"), errno.EINVAL, 500, 1),
    (errors.NoSpace("staging full"), errno.ENOSPC, 507, 1),
    (errors.FileTooLarge("file-" + "0" * 32, 2**31, "postgresql://u@h:5432/db"), errno.EFBIG, 413, 1),
    (errors.StorageError("S3 failed"), errno.EIO, 502, 3),
    (errors.BucketNotFound("b"), errno.ENODEV, 502, 1),
    (errors.AccessDenied("b"), errno.EACCES, 502, 1),
    (errors.StorageUnavailable("down"), errno.EIO, 503, 3),
    (errors.BlobMissing("object gone"), errno.ENOENT, 404, 1),
    (errors.internal_error(KeyError("k")), errno.EIO, 500, 4),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None)
def test_each_error_carries_its_errno_status_and_exit_code(error, errno_, http_status, exit_code):
    assert isinstance(error, S3FilesError)
    assert (error.errno, error.http_status, error.exit_code) == (errno_, http_status, exit_code)
    body = error.to_openai()["error"]
    assert body["message"] == error.message == str(error)
    assert body["code"] == type(error).__name__
    assert body["type"] == ("invalid_request_error" if isinstance(error, errors.UserError) and
                            not isinstance(error, errors.NotPermitted) else
                            "permission_error" if isinstance(error, errors.NotPermitted) else "server_error")


def test_error_messages_users_understand():
    file_id = "file-" + "0" * 32
    assert str(errors.NotFound(file_id)) == f"File '{file_id}' not found"
    purpose = errors.InvalidPurpose("training", ("assistants", "batch"))
    assert str(purpose) == "purpose must be one of assistants, batch (got 'training')"
    assert purpose.to_openai()["error"]["param"] == "purpose"
    assert str(errors.AccessDenied("b")) == "Access denied to S3 bucket 'b'"
    assert str(errors.internal_error(KeyError("k"))) == "internal error: KeyError: 'k'"
