"""Amazon S3 (or anything that speaks its API, such as moto's server) as the object store."""
from __future__ import annotations

import logging
import os

from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ..errors import StorageError
from .base import Storage

log = logging.getLogger(__name__)

# Error codes and HTTP statuses worth another try: throttling and server-side faults.
_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "503", "500", "502", "504", "RequestTimeTooSkewed",
    "ConditionalRequestConflict",
}


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ReadTimeoutError

    # HTTPClientError covers ConnectionClosedError: a connection reset mid-request.
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in _RETRYABLE_CODES or status in (429, 500, 502, 503, 504)
    return False


def _log_retry(state) -> None:
    log.warning("S3 request failed (%s); retry %d", state.outcome.exception(), state.attempt_number)


# botocore's own retries are switched off (total_max_attempts=1; its "max_attempts" would count
# retries, not attempts) so that this is the only retry loop:
# 8 attempts, exponential back-off with full jitter, capped at 10 s between attempts.
_ATTEMPTS = 8
_transient_retry = retry(
    retry=retry_if_exception(_is_transient),
    stop=stop_after_attempt(_ATTEMPTS),
    wait=wait_random_exponential(multiplier=0.05, max=10),
    before_sleep=_log_retry,
    reraise=True,
)


class S3Storage(Storage):
    """Blobs as S3 objects ``s3://bucket/prefix/key``.

    ``endpoint_url`` points at any S3-compatible server (moto in tests); when not given, the
    ``LAMBDAMAP_S3_ENDPOINT_URL`` environment variable is used, then boto3's default. Credentials
    come from boto3's usual chain (environment, profile, instance role).

    Example::

        storage = S3Storage("my-bucket", prefix="lambdamap", region="eu-central-1")
    """

    def __init__(self, bucket: str, prefix: str = "", *, region: str | None = None,
                 endpoint_url: str | None = None, max_pool_connections: int = 64):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.endpoint_url = endpoint_url or os.environ.get("LAMBDAMAP_S3_ENDPOINT_URL") or None
        self.max_pool_connections = max_pool_connections
        self._client = None

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                            max_pool_connections=self.max_pool_connections,
                            connect_timeout=10, read_timeout=60)
            # A session of its own: boto3's default session is not thread-safe and caches
            # credentials for the life of the process.
            self._client = boto3.session.Session().client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _translate(self, exc: Exception, key: str = "") -> Exception:
        """Turn configuration mistakes into errors that say what to do."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                "no AWS credentials found for S3: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE, or run on a machine with an instance role")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                return StorageError(
                    f"S3 bucket {self.bucket!r} does not exist: create it (e.g. `lambdamap deploy "
                    f"--bucket {self.bucket}`) or pass an existing bucket")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"access to s3://{self.bucket}/{self.prefix}{key} denied ({code}): "
                                    "check the credentials and the bucket policy")
        if _is_transient(exc):
            return StorageError(
                f"S3 request for s3://{self.bucket}/{self.prefix}{key} still failing after "
                f"{_ATTEMPTS} attempts with back-off ({exc}): S3 is throttling or unreachable; "
                "lower the concurrency or try again later")
        return exc

    @_transient_retry
    def _put(self, key: str, data: bytes, if_absent: bool) -> bool:
        from botocore.exceptions import ClientError

        kwargs = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **kwargs)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        try:
            return self._put(key, data, if_absent)
        except Exception as exc:
            raise self._translate(exc, key) from exc

    @_transient_retry
    def _get(self, key: str, byte_range):
        from botocore.exceptions import ClientError

        kwargs = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **kwargs)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        try:
            return self._get(key, byte_range)
        except KeyError:
            raise
        except Exception as exc:
            raise self._translate(exc, key) from exc

    @_transient_retry
    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def exists(self, key: str) -> bool:
        try:
            return self._exists(key)
        except Exception as exc:
            raise self._translate(exc, key) from exc

    @_transient_retry
    def _list_page(self, prefix: str, start_after: str | None, token: str | None) -> dict:
        kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        return self.client.list_objects_v2(**kwargs)

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys, token, cut = [], None, len(self.prefix)
        try:
            while True:
                page = self._list_page(prefix, start_after, token)
                keys.extend(obj["Key"][cut:] for obj in page.get("Contents", ()))
                if not page.get("IsTruncated"):
                    return keys
                token = page["NextContinuationToken"]
        except Exception as exc:
            raise self._translate(exc, prefix) from exc

    @_transient_retry
    def _delete_batch(self, keys: list[str]) -> None:
        self.client.delete_objects(Bucket=self.bucket, Delete={
            "Objects": [{"Key": self.prefix + k} for k in keys], "Quiet": True})

    def delete(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):  # S3's limit per DeleteObjects request
            try:
                self._delete_batch(keys[i:i + 1000])
            except Exception as exc:
                raise self._translate(exc, prefix) from exc
        return len(keys)

    def check(self) -> None:
        """Fail early, with a clear message, if the bucket is missing or unreachable."""
        try:
            self._head_bucket()
        except Exception as exc:
            raise self._translate(exc) from exc

    @_transient_retry
    def _head_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                raise ClientError({"Error": {"Code": "NoSuchBucket", "Message": "missing"}},
                                  "HeadBucket") from None
            raise

    def spec(self) -> dict:
        return {"type": "s3", "bucket": self.bucket, "prefix": self.prefix,
                "region": self.region, "endpoint_url": self.endpoint_url}
