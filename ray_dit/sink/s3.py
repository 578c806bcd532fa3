"""The S3 client: the only module in ray_dit that imports boto3 or botocore.

Choices, each for a reason:
- standard retries with an explicit attempt count and short timeouts: the spool loop, not one
  request, is what outlasts an outage, so one call should fail fast and let the loop back off;
- ``request_checksum_calculation``/``response_checksum_validation`` = ``when_required``: since
  boto3 1.36 the default CRC32 headers and aws-chunked bodies break MinIO-likes, OSS, R2, B2;
- ``ContentMD5`` on every put and ETag == MD5 afterwards: the integrity check every S3-compatible
  store understands (single-part puts only, where the ETag is the MD5);
- URLs come from botocore (presigned, or an unsigned client for public URLs), never from string
  concatenation, so addressing style and endpoint rules are applied the same way as for requests;
- botocore/urllib3 loggers pinned to WARNING, plus a filter that blanks the configured credentials
  should anyone turn DEBUG back on (botocore DEBUG prints the Authorization header);
- errors become :class:`StorageError` with the operation, HTTP status and S3 error code only:
  never a response body (AWS echoes the access key id and string-to-sign), never a credential.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as bexc
from botocore import UNSIGNED
from botocore.config import Config

from ray_dit.config import StorageSettings
from ray_dit.errors import RayDitError

NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")
_CODE_RE = re.compile(r"[A-Za-z0-9.]{1,64}")
# S3 error codes that no retry will fix: the operator has to change a setting or a permission.
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "PermanentRedirect",
        "SignatureDoesNotMatch",
        "InvalidArgument",
    }
)


class StorageError(RayDitError):
    """A sanitized S3 failure: operation, status and error code, never bodies or credentials."""

    def __init__(
        self, message: str, op: str, retryable: bool, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.op = op
        self.retryable = retryable
        self.status = status
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling through Ray
        return (StorageError, (str(self), self.op, self.retryable, self.status, self.code))


class _CredentialRedactor(logging.Filter):
    """Blanks any configured credential in records of the AWS/HTTP libraries' loggers."""

    def __init__(self) -> None:
        super().__init__("ray_dit.redactor")
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            self._secrets.update(v for v in values if v and len(v) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if any(s in message for s in secrets):
            for secret in secrets:
                message = message.replace(secret, "<redacted>")
            record.msg, record.args = message, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            if any(s in text for s in secrets):
                record.exc_info, record.exc_text = None, None
        return True


_REDACTOR = _CredentialRedactor()


def pin_library_loggers(*secrets: str | None) -> None:
    """Pin boto3/botocore/urllib3/s3transfer to WARNING and redact ``secrets`` in their records."""
    _REDACTOR.add(*secrets)
    for name in {*NOISY_LOGGERS, *logging.Logger.manager.loggerDict}:  # a snapshot
        if name.split(".")[0] not in NOISY_LOGGERS:
            continue
        logger = logging.getLogger(name)
        if name in NOISY_LOGGERS:
            logger.setLevel(logging.WARNING)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def _status_of(exc: bexc.ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else None


def _code_of(exc: bexc.ClientError) -> str | None:
    code = str(exc.response.get("Error", {}).get("Code") or "")
    if code.isdigit():  # HEAD responses have no body: botocore uses the status as the code
        code = {"404": "NoSuchBucket", "403": "AccessDenied", "301": "PermanentRedirect"}.get(code, "")
    return code if _CODE_RE.fullmatch(code) else None


def sanitize(exc: BaseException, op: str, where: str, endpoint: str | None) -> StorageError:
    """Translate a boto3/botocore exception into a StorageError that is safe to log and return."""
    target = endpoint or "the default AWS endpoint"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bexc.ClientError):
        status = _status_of(exc)
        code = _code_of(exc)
        permanent = code in PERMANENT_CODES or status in (400, 401, 403, 404, 405, 411, 413)
        if code in ("SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError"):
            permanent = False
        message = f"S3 {op} on {where} failed: HTTP {status if status is not None else '?'} {code or 'error'}"
        return StorageError(message, op, retryable=not permanent, status=status, code=code)
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return StorageError(
            "no S3 credentials found: set SGLANG_S3_ACCESS_KEY_ID and SGLANG_S3_SECRET_ACCESS_KEY, "
            "or configure boto3's default credential chain (IAM role, AWS_* variables, profile)",
            op=op,
            code="NoCredentials",
            retryable=False,
        )
    if isinstance(exc, bexc.ConnectTimeoutError | bexc.EndpointConnectionError):
        reason = "could not connect to"
    elif isinstance(exc, bexc.ReadTimeoutError):
        reason = "timed out reading from"
    elif isinstance(exc, bexc.BotoCoreError | ConnectionError | OSError):
        reason = f"lost the connection ({type(exc).__name__}) to"
    else:
        reason = f"failed ({type(exc).__name__}) talking to"
    return StorageError(f"S3 {op} on {where} {reason} {target}", op=op, retryable=True)


def client_config(settings: StorageSettings, *, signed: bool = True) -> Config:
    """The botocore Config every ray_dit S3 client uses (see the module docstring for why)."""
    return Config(
        region_name=settings.region,
        signature_version="s3v4" if signed else UNSIGNED,
        s3={"addressing_style": settings.addressing_style},
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.upload_concurrency + 4,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3Bucket:
    """One bucket behind one boto3 client (thread-safe once built); one per sink replica."""

    def __init__(self, settings: StorageSettings) -> None:
        if not settings.s3_enabled or not settings.bucket:
            raise ValueError("S3Bucket needs SGLANG_CLOUD_STORAGE_TYPE=s3 and SGLANG_S3_BUCKET_NAME")
        self.settings = settings
        self.bucket: str = settings.bucket
        key_id = settings.access_key_id.get_secret_value() if settings.access_key_id else None
        secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
        pin_library_loggers(key_id, secret)
        session = boto3.session.Session()  # never the shared default session (not thread-safe)
        credentials: dict[str, str] = {}
        if key_id and secret:
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        common = {"region_name": settings.region, "endpoint_url": settings.endpoint_url}
        self._client = session.client("s3", config=client_config(settings), **common, **credentials)
        self._unsigned = session.client("s3", config=client_config(settings, signed=False), **common)
        self._repinned = False

    def __repr__(self) -> str:
        return f"S3Bucket(bucket={self.bucket!r}, endpoint={self.settings.endpoint_url!r})"

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"

    @contextlib.contextmanager
    def _translated(self, op: str, key: str | None = None) -> Iterator[None]:
        """Around one client request: any failure becomes a sanitized :class:`StorageError`."""
        try:
            yield
        except Exception as exc:
            raise sanitize(exc, op, self._where(key), self.settings.endpoint_url) from None
        finally:
            # botocore creates some module loggers lazily, during the first request: filter them too.
            if not self._repinned:
                self._repinned = True
                pin_library_loggers()

    def check_bucket(self) -> None:
        """Start-up check: raise a StorageError saying what is wrong if the bucket is unusable."""
        try:
            with self._translated("HeadBucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except StorageError as error:
            hint = {
                "NoSuchBucket": "the bucket does not exist (check SGLANG_S3_BUCKET_NAME)",
                "AccessDenied": "access denied (check the credentials and the bucket policy)",
                "PermanentRedirect": "the bucket lives in another region (check SGLANG_S3_REGION_NAME)",
            }.get(error.code or "")
            if not hint:
                raise
            message = f"{error} - {hint}"
            raise StorageError(message, error.op, error.retryable, error.status, error.code) from None

    def put(self, key: str, data: bytes, content_type: str, md5_hex: str) -> float:
        """Single-part PUT with Content-MD5 and Content-Type; confirms ETag == MD5 (if enabled).
        Returns the seconds it took (the manifest's ``upload_s``)."""
        started = time.monotonic()
        content_md5 = base64.b64encode(bytes.fromhex(md5_hex)).decode()
        with self._translated("PutObject", key):
            response = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=content_md5, ContentType=content_type
            )
        etag = str(response.get("ETag", "")).strip('"').lower()
        if self.settings.verify_etag and etag != md5_hex.lower():
            raise StorageError(
                f"S3 PutObject on {self._where(key)}: ETag does not match the MD5 of the bytes sent "
                "(set RAY_DIT_S3_VERIFY_ETAG=false for stores whose ETag is not an MD5)",
                op="PutObject",
                code="ETagMismatch",
                retryable=True,
            )
        return time.monotonic() - started

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            with self._translated("GetObject", key):
                response = self._client.get_object(Bucket=self.bucket, Key=key)
                with response["Body"] as body:
                    return body.read()
        except StorageError as error:
            if error.status == 404:
                return None
            raise

    def exists(self, key: str) -> bool:
        """Whether the object is in the bucket (HEAD); raises StorageError if S3 cannot say."""
        try:
            with self._translated("HeadObject", key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except StorageError as error:
            if error.status == 404:
                return False
            raise
        return True

    def object_url(self, key: str) -> str:
        """The object's plain URL, credential-free and stable (what the manifest records)."""
        return self._unsigned.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=1
        )

    def url(self, key: str) -> str:
        """The URL handed to clients: presigned GET (default, TTL from settings) or public."""
        if self.settings.url_mode == "public":
            return self.object_url(key)
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.settings.presign_ttl_s
        )

    def close(self) -> None:
        for client in (self._client, self._unsigned):
            with contextlib.suppress(Exception):  # older botocore has no close(); nothing to release then
                client.close()
