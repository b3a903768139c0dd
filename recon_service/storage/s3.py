"""The object store, through boto3: every call with a timeout, every failure a :class:`StorageError` a person can act on.

One :class:`S3` per process (boto3 clients are thread-safe; sessions are not shared across
processes). Credentials and region come from the standard AWS chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, profiles, instance roles);
``RECON_S3_ENDPOINT_URL`` points it at MinIO, Ceph, R2 or GCS's interoperability endpoint.

Uploads and downloads are retried with tenacity on transient errors (network, 5xx, throttling)
``RECON_S3_RETRIES`` times; botocore's own retries are off so that the policy is this one. Large
files go up in parts (boto3's transfer manager, which aborts a failed multipart upload itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from recon_service.storage.uri import S3Location

if TYPE_CHECKING:
    from recon_service.settings import Settings

logger = logging.getLogger(__name__)

MULTIPART_THRESHOLD_BYTES = 16 << 20
"""Files larger than this are uploaded in parts (of this size), several at once."""
_TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "ServiceUnavailable", "SlowDown", "InternalError", "Throttling", "ThrottlingException"})


class StorageError(Exception):
    """An object-store operation failed; ``transient`` when trying again later may work."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


class S3:
    """An S3 client configured from the service's settings."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = settings.s3_endpoint_url
        self.retries = settings.s3_retries
        config = Config(
            connect_timeout=settings.s3_timeout_s,
            read_timeout=settings.s3_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},  # one try per call: our own policy (tenacity) retries
            signature_version="s3v4",
            max_pool_connections=16,
            # Checksums only where S3 requires them: the newer default (aws-chunked trailers) is not
            # understood by every S3-compatible store (older MinIO, Ceph, R2, GCS interoperability).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> StorageError:
        """A message naming what failed and what to check, for any boto3/botocore exception."""
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
            exc = exc.__context__  # the transfer manager wraps the real (ClientError) cause
        where = f" at {self.endpoint} (RECON_S3_ENDPOINT_URL)" if self.endpoint else ""
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return StorageError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role)")
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError | bx.ConnectionClosedError):
            return StorageError(f"{what}: cannot reach the object store{where} ({type(exc).__name__})", transient=True)
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code, status = str(err.get("Code", "")), int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchBucket",) or (code == "404" and "bucket" in what):
                return StorageError(f"{what}: the bucket does not exist")
            if code in ("NoSuchKey", "404"):
                return StorageError(f"{what}: no such object")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken") or status == 403:
                return StorageError(f"{what}: access denied ({code}); check the service's AWS credentials and their permissions on the bucket")
            transient = code in _TRANSIENT_CODES or status >= 500
            return StorageError(f"{what}: {code or status} {err.get('Message', '')}".strip(), transient=transient)
        if isinstance(exc, bx.BotoCoreError):
            return StorageError(f"{what}: {type(exc).__name__}: {exc}", transient=True)
        return StorageError(f"{what}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn: Any, *args: Any, retry: bool = False, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with errors named; with ``retry``, transient failures are retried."""
        def once() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # every boto3 failure becomes a named StorageError
                raise self._error(exc, what) from exc

        if not retry:
            return once()
        for attempt in Retrying(
            stop=stop_after_attempt(self.retries), wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception(lambda e: isinstance(e, StorageError) and e.transient), reraise=True,
            before_sleep=lambda s: logger.warning("%s failed (try %d), retrying: %s", what, s.attempt_number, s.outcome.exception() if s.outcome else ""),
        ):  # fmt: skip
            with attempt:
                return once()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading ---------------------------------------------------------------------------------
    def check_bucket(self, bucket: str) -> None:
        """The bucket exists and these credentials may use it, or :class:`StorageError`."""
        self._call(f"s3://{bucket}", self._client.head_bucket, Bucket=bucket)

    def list(self, location: S3Location, *, recursive: bool = False) -> list[ObjectInfo]:
        """Objects under ``location`` (directly under it unless ``recursive``), sorted by key."""
        found: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": location.key_prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        for page in self._pages(location, kwargs):
            found += [ObjectInfo(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
        return sorted(found, key=lambda o: o.key)

    def _pages(self, location: S3Location, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self._call(f"listing {location.uri}", self._client.list_objects_v2, **kwargs, **({"ContinuationToken": token} if token else {}))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def read_start(self, bucket: str, key: str, size: int = 32) -> bytes:
        """The first ``size`` bytes of an object (to tell what it holds)."""
        body = self._call(f"s3://{bucket}/{key}", self._client.get_object, Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def download(self, bucket: str, key: str, target: Path) -> None:
        """The object into ``target`` (written under a temporary name, retried on transient errors)."""
        from pipelines.files import atomic_path

        def get() -> None:
            with atomic_path(target) as tmp:
                self._client.download_file(bucket, key, str(tmp))

        self._call(f"downloading s3://{bucket}/{key}", get, retry=True)

    # -- writing ---------------------------------------------------------------------------------
    def upload(self, path: Path, bucket: str, key: str, content_type: str | None = None) -> None:
        """``path`` to ``s3://bucket/key``; in parts when large; retried on transient errors."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD_BYTES, multipart_chunksize=MULTIPART_THRESHOLD_BYTES, use_threads=True)
        extra = {"ContentType": content_type} if content_type else None
        self._call(f"uploading {path.name} to s3://{bucket}/{key}", self._client.upload_file, str(path), bucket, key, ExtraArgs=extra, Config=config, retry=True)

    def delete_prefix(self, location: S3Location) -> int:
        """Delete every object under ``location`` and abort its unfinished multipart uploads; returns the objects deleted."""
        objects = self.list(location, recursive=True)
        for start in range(0, len(objects), 1000):
            batch = [{"Key": o.key} for o in objects[start : start + 1000]]
            self._call(f"deleting under {location.uri}", self._client.delete_objects, Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True}, retry=True)
        uploads = self._call(f"listing uploads under {location.uri}", self._client.list_multipart_uploads, Bucket=location.bucket, Prefix=location.key_prefix)
        for upload in uploads.get("Uploads", []):
            self._call(f"aborting an upload under {location.uri}", self._client.abort_multipart_upload,
                       Bucket=location.bucket, Key=upload["Key"], UploadId=upload["UploadId"], retry=True)  # fmt: skip
        return len(objects)

    # -- links -----------------------------------------------------------------------------------
    def presign_get(self, bucket: str, key: str, ttl_s: int) -> str:
        """An HTTPS GET URL for the object, valid ``ttl_s`` seconds, needing no credentials (computed locally)."""
        return self._call(f"s3://{bucket}/{key}", self._client.generate_presigned_url, "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_s)

    def presign_put(self, bucket: str, key: str, ttl_s: int, content_type: str) -> str:
        """A PUT URL for uploading the object; the request must send ``Content-Type: content_type``."""
        return self._call(
            f"s3://{bucket}/{key}", self._client.generate_presigned_url, "put_object",
            Params={"Bucket": bucket, "Key": key, "ContentType": content_type}, ExpiresIn=ttl_s,
        )  # fmt: skip
