"""The S3 store: object bodies in a bucket, through one shared boto3 client.

Keys are ``prefix + file id`` (no prefix by default: the Llama Stack layout). Bodies are sent with
a single PUT when they fit in one part and as a multipart upload otherwise; parts go out while the
body is still arriving, a few at a time (more on a slow link, see ``_S3Writer``), so a writer never
holds more than one part beyond those in flight. Every boto3 failure is translated here, once,
into the project's error tree.
"""

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .. import metrics
from ..errors import (
    AccessDenied,
    BlobMissing,
    BucketNotFound,
    ConfigError,
    StorageError,
    StorageUnavailable,
)
from . import BlobInfo, BlobStore, BlobWriter, UploadInfo

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest allowed part (all but the last)
MAX_PARTS = 10000
PARTS_PER_SIZE_STEP = 2000  # part size doubles every 2000 parts, up to 16x: ~500 GiB at 8 MiB
READ_CHUNK = MIB

_MISSING = {"NoSuchKey", "404", "NotFound"}
# Why access was refused, as far as the code tells (HEAD requests carry only the status).
_DENIED = {
    "InvalidAccessKeyId": "the server does not know this access key id",
    "SignatureDoesNotMatch": "the secret access key is wrong",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "AccessDenied": "the credentials lack permission or a bucket policy forbids it",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "403": "the credentials were refused or lack permission",
    "Forbidden": "the credentials were refused or lack permission",
}


class _PastEnd(StorageError):
    """A ranged GET that starts at or beyond the end of the object: an empty read, not an error."""


_UNREACHABLE = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
_SILENT = (ConnectTimeoutError, ReadTimeoutError)
STALL_ATTEMPTS = 3  # tries of one request that got no answer
WIDEST = 10  # parts of one upload in flight at most, as boto3's upload_file
SLOW_PART = 64 * MIB  # bytes/s: a part slower than this says the link, not the machine, is the limit


class S3BlobStore(BlobStore):
    def __init__(
        self,
        *,
        bucket_name: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        auto_create_bucket: bool = False,
        prefix: str = "",
        server_side_encryption: str | None = None,
        sse_kms_key_id: str | None = None,
        part_size: int = 8 * MIB,
        concurrency: int = 4,
        stall_timeout: float = 30.0,
    ):
        self.bucket = bucket_name
        self.region = region
        self.prefix = prefix
        self.auto_create_bucket = auto_create_bucket
        self.part_size = max(part_size, MIN_PART)
        self.concurrency = max(1, concurrency)
        self.slow_part = SLOW_PART
        self.location = f"s3://{bucket_name}/{prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        self._endpoint = endpoint_url or f"S3 in {region}"
        self._sse_args: dict[str, str] = {}
        if server_side_encryption:
            self._sse_args["ServerSideEncryption"] = server_side_encryption
            if sse_kms_key_id:
                self._sse_args["SSEKMSKeyId"] = sse_kms_key_id
        credentials = {}
        # Explicit keys only when both halves are given; otherwise boto3's default chain
        # (environment, profile, instance role) decides, as the seed provider does.
        if aws_access_key_id and aws_secret_access_key:
            credentials = {
                "aws_access_key_id": aws_access_key_id,
                "aws_secret_access_key": aws_secret_access_key,
                "aws_session_token": aws_session_token or None,
            }
        # A connection that says nothing is given up after a third of the stall timeout and the
        # request tried again, at most STALL_ATTEMPTS times in all: no request waits on silence
        # much longer than the stall timeout (plus the retries' short back-off).
        self.attempt_timeout = stall_timeout / STALL_ATTEMPTS
        client_config = Config(
            # Every part of the widest uploads, and the mount's readers, each on a connection.
            max_pool_connections=max(WIDEST, self.concurrency) * 2 + 24,
            retries={"total_max_attempts": STALL_ATTEMPTS, "mode": "standard"},
            connect_timeout=min(5.0, self.attempt_timeout),
            read_timeout=self.attempt_timeout,
            # S3-compatible servers (MinIO, moto, Ceph) want path-style addressing.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        try:
            # One client for the whole process: boto3 clients are thread-safe, sessions are not.
            self.client = boto3.session.Session().client(
                "s3", region_name=region, endpoint_url=endpoint_url, config=client_config, **credentials
            )
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot create the S3 client: {exc}") from exc
        self._parts_pool = ThreadPoolExecutor(max(WIDEST, self.concurrency) * 2, thread_name_prefix="s3-part")
        # Multipart uploads declare the CRC32 that botocore computes for every part anyway, and
        # hand each part's checksum back at completion, exactly as boto3's upload_file does. The
        # object then carries a composite CRC32 built from the parts; left undeclared, the server
        # derives a full-object checksum by reading the whole body again at completion (moto does
        # so by copying it twice, which tripled the time of a 1 GiB upload). A client set to
        # `request_checksum_calculation = when_required` (servers without checksum support) sends
        # none, as upload_file does.
        self.client.meta.events.register_first("needs-retry.s3", self._log_stall)
        metrics.time_s3_calls(self.client.meta.events)
        checksums = getattr(self.client.meta.config, "request_checksum_calculation", "when_supported")
        self._checksum_args = {"ChecksumAlgorithm": "CRC32"} if checksums == "when_supported" else {}

    def _log_stall(self, caught_exception=None, attempts=0, operation=None, request_dict=None, **_):
        """Say so whenever a request got no answer in time (botocore then retries it, or gives up).
        The URL names the bucket and key only: no credentials travel in it."""
        if isinstance(caught_exception, _SILENT):
            what = getattr(operation, "name", "request")
            url = (request_dict or {}).get("url", "").split("?", 1)[0]
            last = attempts >= STALL_ATTEMPTS
            log.warning("S3 %s %s: no answer for %.0f s (attempt %d of %d)%s", what, url, self.attempt_timeout,
                        attempts, STALL_ATTEMPTS, ", giving up" if last else ", trying again")
        return None  # the retry handler decides

    # --- error translation: the only place boto3 failures become ours ---------------------------

    @contextlib.contextmanager
    def errors(self, key: str | None = None):
        try:
            yield
        except ClientError as exc:
            raise self.translate(exc, key) from exc
        except _SILENT as exc:
            what = f" for {self.prefix}{key}" if key else ""
            raise StorageUnavailable(
                f"S3 endpoint {self._endpoint} did not answer{what}: no answer within {self.attempt_timeout:.0f} s, "
                f"{STALL_ATTEMPTS} times (stall_timeout_seconds)") from exc
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"S3 endpoint {self._endpoint} is unreachable: {exc}") from exc
        except NoCredentialsError as exc:
            raise ConfigError(
                "no AWS credentials found: set aws_access_key_id and aws_secret_access_key, "
                "or configure the AWS credential chain"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 request failed: {exc}") from exc

    def translate(self, exc: ClientError, key: str | None) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "InvalidRange":
            return _PastEnd(code)
        if code in _MISSING and key is not None:
            return BlobMissing(f"object {self.prefix}{key} is missing from bucket '{self.bucket}'")
        if code == "NoSuchBucket" or (code in _MISSING and key is None):
            return BucketNotFound(self.bucket)
        if code in _DENIED:
            return AccessDenied(self.bucket, _DENIED[code])
        message = error.get("Message") or exc
        return StorageError(f"S3 {exc.operation_name} failed: {code}: {message}")

    # --- the BlobStore interface --------------------------------------------------------------

    def ensure_ready(self) -> None:
        try:
            with self.errors():
                self.client.head_bucket(Bucket=self.bucket)
            return
        except AccessDenied:
            # A HEAD answer has no body, so it cannot say *why*; a GET's error code can.
            with self.errors():
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            raise
        except BucketNotFound:
            if not self.auto_create_bucket:
                raise
        try:
            with self.errors():
                if self.region == "us-east-1":
                    self.client.create_bucket(Bucket=self.bucket)
                else:
                    self.client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": self.region},
                    )
        except StorageError as exc:
            raise StorageError(f"Failed to create S3 bucket '{self.bucket}': {exc}") from exc

    def writer(self, key: str, metadata: dict[str, str]) -> BlobWriter:
        return _S3Writer(self, self.prefix + key, metadata)

    def read(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            with self.errors(key):
                response = self.client.get_object(
                    Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={offset}-{offset + length - 1}"
                )
                data = response["Body"].read()
        except _PastEnd:
            return b""
        metrics.read(len(data))
        return data

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return iter(())
        ranged = {}
        if start or end is not None:
            ranged["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            with self.errors(key):
                response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **ranged)
        except _PastEnd:
            return iter(())
        metrics.READS.inc()
        return self._chunks(response["Body"], key)

    def _chunks(self, body, key: str) -> Iterator[bytes]:
        with contextlib.closing(body), self.errors(key):
            for chunk in body.iter_chunks(READ_CHUNK):
                metrics.BYTES_READ.inc(len(chunk))
                yield chunk

    def head(self, key: str) -> BlobInfo | None:
        try:
            with self.errors(key):
                response = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except BlobMissing:
            return None
        return BlobInfo(key, response["ContentLength"], dict(response.get("Metadata", {})),
                        _epoch(response.get("LastModified")))

    def delete(self, key: str) -> None:
        try:
            with self.errors(key):
                self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except BlobMissing:
            pass

    def abort_unfinished(self, key: str) -> int:
        full_key = self.prefix + key
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self.errors(key):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_key):
                for upload in page.get("Uploads", []):
                    if upload["Key"] == full_key:  # the prefix also matches longer keys
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key,
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        return aborted

    def keys(self) -> Iterator[BlobInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self.errors():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if "/" not in key:  # deeper keys are not ours
                        yield BlobInfo(key, item["Size"], modified=_epoch(item.get("LastModified")))

    def open_uploads(self) -> Iterator[UploadInfo]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self.errors():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    key = upload["Key"][len(self.prefix):]
                    if "/" not in key:  # deeper keys are not ours
                        yield UploadInfo(key, upload["UploadId"], _epoch(upload.get("Initiated")) or 0.0)

    def abort_upload(self, upload: UploadInfo) -> None:
        with self.errors(upload.key):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.prefix + upload.key,
                                                   UploadId=upload.upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
                # completed or aborted meanwhile: nothing left to abort


def _epoch(when) -> float | None:
    """A boto3 timestamp (an aware datetime) as epoch seconds."""
    return when.timestamp() if when is not None else None


class _S3Writer(BlobWriter):
    """A body sent as it arrives: one PUT if it stays small, else a multipart upload.

    Written bytes are copied once, into the part being filled (a ``bytearray``), and that buffer is
    the request body. A buffer whose part is uploaded is filled again for a later part, so a large
    body allocates ``width + 1`` buffers in all rather than one per part, and ``write`` may be
    given a view of someone else's memory (the mount passes libfuse's buffer) that is not kept.

    At most ``width`` parts are in flight and one is being filled, whatever the size. The width
    starts at ``concurrency`` and grows, up to ``WIDEST`` (boto3's ten), while parts go out slower
    than one connection to a nearby server carries (``SLOW_PART``): on a remote link one connection
    is the limit, and more parts at once fill the link; on a fast one the narrow width is enough
    and memory stays low.
    """

    def __init__(self, store: S3BlobStore, full_key: str, metadata: dict[str, str]):
        self._store = store
        self._key = full_key
        self._metadata = metadata
        self._part = bytearray()  # the part being filled: its first `_filled` bytes
        self._filled = 0
        self._spare: deque[bytearray] = deque()  # buffers of uploaded parts, to be filled again
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._width = store.concurrency
        self._in_flight = 0
        self._room = threading.Condition()
        self._done = False
        self._cleaned = True  # False once an abort could not remove what the store holds

    @property
    def begun(self) -> bool:
        return self._upload_id is not None and not self._done

    def _part_size(self) -> int:
        step = min(len(self._parts) // PARTS_PER_SIZE_STEP, 4)
        return self._store.part_size << step

    def write(self, data) -> None:
        if self._done:
            raise StorageError("write after the upload was committed or aborted")
        view = memoryview(data).cast("B")
        taken, size = 0, len(view)
        while taken < size:
            count = min(self._part_size() - self._filled, size - taken)
            piece = view[taken:taken + count]
            if self._filled == len(self._part):
                self._part += piece  # a new buffer grows as it fills (no zero-filling first)
            else:
                self._part[self._filled:self._filled + count] = piece  # a reused one is overwritten
            self._filled += count
            taken += count
            if self._filled == self._part_size():
                self._send_part()
        self._size += size

    def _full_part(self) -> bytearray:
        """The filled part as a request body; a fresh or spare buffer takes its place."""
        body = self._part
        del body[self._filled:]  # only a last, short part has anything past `_filled`
        # A spare is never larger than the next part (part sizes only grow); a smaller one grows.
        self._part = self._spare.pop() if self._spare else bytearray()
        self._filled = 0
        return body

    def _send_part(self) -> None:
        store = self._store
        try:
            if self._upload_id is None:
                with store.errors(self._key):
                    created = store.client.create_multipart_upload(
                        Bucket=store.bucket,
                        Key=self._key,
                        Metadata=self._metadata,
                        **store._sse_args,
                        **store._checksum_args,
                    )
                self._upload_id = created["UploadId"]
            self._raise_failed_part()
            if len(self._parts) >= MAX_PARTS:
                raise StorageError("file too large for one S3 multipart upload")
            with self._room:
                while self._in_flight >= self._width:
                    self._room.wait()
                self._in_flight += 1
            try:
                number = len(self._parts) + 1
                self._parts.append(store._parts_pool.submit(self._upload_part, number, self._full_part()))
            except BaseException:
                self._part_done(None, 0)
                raise
        except BaseException:
            self.abort()
            raise

    def _part_done(self, seconds: float | None, size: int) -> None:
        with self._room:
            self._in_flight -= 1
            slow = seconds is not None and size >= MIN_PART and size / max(seconds, 1e-6) < self._store.slow_part
            if slow and self._width < max(WIDEST, self._store.concurrency):
                self._width += 1
            self._room.notify()

    def _upload_part(self, number: int, body: bytearray) -> dict:
        store = self._store
        started, seconds = time.monotonic(), None
        try:
            with store.errors(self._key):
                response = store.client.upload_part(
                    Bucket=store.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                    **store._checksum_args,
                )
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if "ChecksumCRC32" in response:
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            self._spare.append(body)  # only once the request is over: a retry re-sends it
            seconds = time.monotonic() - started
            return part
        finally:
            self._part_done(seconds, len(body))

    def _raise_failed_part(self) -> None:
        for part in self._parts:
            error = part.exception() if part.done() else None
            if error is not None:
                raise error

    def commit(self) -> int:
        store = self._store
        try:
            if self._upload_id is None:
                with store.errors(self._key):
                    store.client.put_object(
                        Bucket=store.bucket,
                        Key=self._key,
                        Body=self._full_part(),
                        Metadata=self._metadata,
                        **store._sse_args,
                    )
            else:
                if self._filled:
                    self._send_part()
                parts = [part.result() for part in self._parts]
                with store.errors(self._key):
                    store.client.complete_multipart_upload(
                        Bucket=store.bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                    )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._release_buffers()
        return self._size

    def _release_buffers(self) -> None:
        self._part, self._filled = bytearray(), 0
        self._spare.clear()

    def abort(self) -> bool:
        if self._done:
            return self._cleaned
        self._done = True
        self._release_buffers()
        for part in self._parts:
            part.cancel()
        if self._upload_id is not None:
            for part in self._parts:
                with contextlib.suppress(Exception):
                    part.result()
            # The server may be the thing that failed: then the upload stays open, and the
            # caller's record of it lets FileService.abandon abort it later.
            try:
                with self._store.errors(self._key):
                    self._store.client.abort_multipart_upload(
                        Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
                    )
            except StorageError as exc:
                log.warning("multipart upload of %s not aborted (left for later): %s", self._key, exc.message)
                self._cleaned = False
        return self._cleaned
