"""Storage settings: SGLang's ``SGLANG_CLOUD_STORAGE_TYPE``/``SGLANG_S3_*`` and ray_dit's own.

The SGLang variables keep SGLang's names and defaults. The ``RAY_DIT_*`` ones tune what SGLang
does not have: the node-local spool that makes outputs survive an S3 outage, the upload loop and
the encoders (docs/storage.md explains each guarantee).
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from pydantic import SecretStr

from ray_dit.config.parsers import (
    following,
    int_at_least,
    int_between,
    matching,
    number_above,
    one_of,
    parse_bool,
)
from ray_dit.config.reader import EnvReader, as_secret, from_env, read_env, secret_from_env

URL_MODES = ("presigned", "public")
ADDRESSING_STYLES = ("auto", "path", "virtual")


# host[:port]: a registered name (RFC 3986's characters, so no space) or an [IPv6] literal
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::(?P<port>[0-9]{1,5}))?")


def parse_endpoint(raw: Any) -> str:
    """An http(s) URL with a host and nothing that would change its meaning or hide credentials."""
    allowed = "an http:// or https:// URL with a host, e.g. http://minio:9000"
    text = str(raw).strip()
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(allowed)
    if "@" in parsed.netloc:
        raise ValueError(allowed + ", without user:password@ (credentials go in SGLANG_S3_*_KEY*)")
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(allowed + ", without ?query or #fragment")
    host_port = _HOST_PORT.fullmatch(parsed.netloc)
    if host_port is None:
        raise ValueError(allowed + ", whose host has no spaces and whose port is a number 1-65535")
    if host_port["port"] is not None and not 1 <= int(host_port["port"]) <= 65535:
        raise ValueError(allowed + f", with a port 1-65535 (port {int(host_port['port'])} is not)")
    return text.rstrip("/")


parse_abs_dir = matching(
    r"/[^\x00]*", "an absolute directory path, e.g. /var/lib/ray_dit/spool", os.path.normpath
)
parse_bucket = following(  # AWS's rules for general purpose buckets, each named when broken
    (
        ("3 to 63 characters", r"\A.{0,2}\Z|.{64}"),
        ("only lowercase letters, digits, '.' and '-'", r"[^a-z0-9.\-]"),
        ("begin and end with a letter or digit", r"\A[^a-z0-9]|[^a-z0-9]\Z"),
        ("no two adjacent periods", r"\.\."),
        ("not formatted as an IP address (like 192.168.5.4)", r"\A[0-9]+(\.[0-9]+){3}\Z"),
        ("no reserved prefix (xn--, sthree-, amzn-s3-demo-)", r"\A(xn--|sthree-|amzn-s3-demo-)"),
        (
            "no reserved suffix (-s3alias, --ol-s3, .mrap, --x-s3, --table-s3)",
            r"(-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)\Z",
        ),
    ),
    "a valid S3 bucket name",
)
parse_region = matching(
    r"[A-Za-z0-9_\-]{1,64}", "a region name of letters, digits, '-' and '_', e.g. us-east-1"
)
parse_key_prefix = matching(
    r"(?!.*\.\.)[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*",
    "path segments of letters, digits, '.', '_' and '-' separated by '/'",
    clean=lambda text: text.strip("/"),
)
_parse_nice = int_between(0, 19, "an integer from 0 (normal priority) to 19 (lowest)")
_parse_png_level = int_between(0, 9, "an integer from 0 (no compression, fastest) to 9 (smallest)")
_positive = number_above(0)


@dataclass(frozen=True)
class StorageSettings:
    """Where finished outputs go and how they get there. Credentials are ``SecretStr``."""

    storage_type: str | None = from_env("SGLANG_CLOUD_STORAGE_TYPE", one_of(("s3",)), None)
    """'s3' uploads every output; unset (SGLang's default) keeps them in a bounded local cache."""
    bucket: str | None = from_env("SGLANG_S3_BUCKET_NAME", parse_bucket, None)
    """Required with 's3': a start-up error without it, not SGLang's silent fallback."""
    endpoint_url: str | None = from_env("SGLANG_S3_ENDPOINT_URL", parse_endpoint, None)
    """A custom endpoint (MinIO, OSS, Ceph, R2); unset = AWS's endpoint for the region."""
    region: str = from_env("SGLANG_S3_REGION_NAME", parse_region, "us-east-1")
    """SGLang's default region; most S3-compatible stores ignore it."""
    access_key_id: SecretStr | None = secret_from_env("SGLANG_S3_ACCESS_KEY_ID")  # noqa: RUF009 (a field())
    """Static credentials (with the secret); unset = boto3's default chain (IRSA, instance role)."""
    secret_access_key: SecretStr | None = secret_from_env("SGLANG_S3_SECRET_ACCESS_KEY", strip=False)  # noqa: RUF009
    """Set together with the key id; kept exactly as given (only the key id is stripped)."""
    key_prefix: str = from_env("RAY_DIT_S3_KEY_PREFIX", parse_key_prefix, "ray-dit")
    """Objects go to ``{prefix}/{yyyy}/{mm}/{dd}/{request_id}_{index}.{ext}``."""
    url_mode: str = from_env("RAY_DIT_S3_URL_MODE", one_of(URL_MODES), "presigned")
    """presigned: works with private buckets (the safe default); public: plain object URLs."""
    presign_ttl_s: int = from_env("RAY_DIT_S3_PRESIGN_TTL_S", int_at_least(1), 3600)
    """Lifetime of presigned URLs; a client fetches its output right after the response."""
    addressing_style: str = from_env("RAY_DIT_S3_ADDRESSING_STYLE", one_of(ADDRESSING_STYLES), "auto")
    """'path' for MinIO and most self-hosted stores; auto lets botocore choose."""
    spool_dir: str = from_env("RAY_DIT_SPOOL_DIR", parse_abs_dir, "/tmp/ray_dit/spool")
    """Node-local directory where outputs wait (fsynced) until S3 confirms them."""
    spool_max_bytes: int = from_env("RAY_DIT_SPOOL_MAX_BYTES", int_at_least(1), 2 * 1024**3)
    """Above this, new work is refused with 503 rather than filling the node's disk (2 GiB)."""
    url_wait_s: float = from_env("RAY_DIT_S3_URL_WAIT_S", number_above(0, inclusive=True), 2.0)
    """How long a ``url`` response waits for the upload before returning the server's own URL."""
    content_wait_s: float = from_env("RAY_DIT_CONTENT_WAIT_S", number_above(0), 10.0)
    """How long ``/content`` waits for an output that only S3 has before answering 503: a hanging
    S3 would otherwise hold the reader for the read timeout times the attempts (about 90 s)."""
    # S3 client and upload loop: explicit retries and timeouts, because botocore's defaults
    # (legacy retries, 60 s timeouts) are wrong for a background drain loop.
    max_attempts: int = from_env("RAY_DIT_S3_MAX_ATTEMPTS", int_at_least(1), 3)
    """botocore attempts per call, first included: fail fast, the upload loop outlasts outages."""
    connect_timeout_s: float = from_env("RAY_DIT_S3_CONNECT_TIMEOUT_S", _positive, 5.0)
    """Short (botocore's is 60 s), so a call to an unreachable store fails fast."""
    read_timeout_s: float = from_env("RAY_DIT_S3_READ_TIMEOUT_S", _positive, 30.0)
    """Per call, half botocore's 60 s: a stalled PUT is retried by the loop sooner."""
    upload_concurrency: int = from_env("RAY_DIT_S3_UPLOAD_CONCURRENCY", int_at_least(1), 4)
    """Parallel uploads per sink replica (its HTTP pool holds this many + 4 connections)."""
    backoff_max_s: float = from_env("RAY_DIT_S3_BACKOFF_MAX_S", _positive, 30.0)
    """Cap of the upload loop's backoff (0.5 s doubling): the end of an outage is seen this soon."""
    verify_etag: bool = from_env("RAY_DIT_S3_VERIFY_ETAG", parse_bool, True)
    """Require ETag == MD5 before deleting a spool entry; false for non-MD5 ETags (SSE-KMS)."""
    manifest_flush_s: float = from_env("RAY_DIT_MANIFEST_FLUSH_S", _positive, 30.0)
    """How often manifest rows are folded into Parquet and uploaded."""
    spool_keep_s: float = from_env("RAY_DIT_SPOOL_KEEP_S", _positive, 86400.0)
    """How long the spool keeps what it no longer needs (manifest parts already in S3, quarantined
    entries), for a person to look at: a day. Kept files count against the spool's cap."""
    sink_nice: int = from_env("RAY_DIT_SINK_NICE", _parse_nice, 10)
    """Niceness of sink processes: encoding yields the CPU to the DiT replicas that feed the GPU."""
    png_compress_level: int = from_env("RAY_DIT_PNG_COMPRESS_LEVEL", _parse_png_level, 1)
    """zlib level of PNGs: 1 buys encode time, on every response's path, with bytes (docs/storage.md)."""

    def __post_init__(self) -> None:
        for name in ("access_key_id", "secret_access_key"):  # a plain str never stays bare
            object.__setattr__(self, name, as_secret(getattr(self, name)))

    @property
    def s3_enabled(self) -> bool:
        return self.storage_type == "s3"


def read_storage(reader: EnvReader) -> StorageSettings:
    """Storage settings, with the two rules that involve more than one variable."""
    settings = reader.read(StorageSettings)
    if settings.s3_enabled and not reader.is_set("SGLANG_S3_BUCKET_NAME"):
        reader.problems.append(
            "SGLANG_S3_BUCKET_NAME is not set: it is required when SGLANG_CLOUD_STORAGE_TYPE=s3"
        )
    reader.together(
        ("SGLANG_S3_ACCESS_KEY_ID", "SGLANG_S3_SECRET_ACCESS_KEY"),
        "SGLANG_S3_ACCESS_KEY_ID and SGLANG_S3_SECRET_ACCESS_KEY must be set together "
        "(or neither, to use boto3's default credential chain)",
    )
    return settings


def storage_from_env(env: Mapping[str, str] | None = None) -> StorageSettings:
    """Storage settings only (what the frame sink needs)."""
    return read_env(read_storage, env)
