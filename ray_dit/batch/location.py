"""Where a batch job reads and writes: a local directory or ``s3://bucket/prefix``.

Inputs and tables (manifest parts, the errors table) go through a pyarrow file system built from
the same ``SGLANG_S3_*`` settings as the frame sink; the outputs themselves are PUT by the sink's
:class:`ray_dit.sink.s3.S3Bucket` (Content-MD5, ETag checked), so a batch object is stored exactly
as a served one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_dit.config import StorageSettings
from ray_dit.config.storage import parse_bucket, parse_key_prefix

LOCAL_PREFIX = "outputs"  # key prefix under a local output directory


def s3_filesystem(settings: StorageSettings) -> pafs.S3FileSystem:
    """pyarrow's S3 client with the sink's endpoint, region and credentials (default chain if unset)."""
    kwargs: dict[str, Any] = {"region": settings.region}
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if settings.access_key_id and settings.secret_access_key:
        kwargs.update(
            access_key=settings.access_key_id.get_secret_value(),
            secret_key=settings.secret_access_key.get_secret_value(),
        )
    if settings.addressing_style == "virtual":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def split_s3(uri: str, name: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``); ValueError naming ``name`` when malformed."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{name}={uri!r}: must be s3://bucket/prefix or a local path")
    try:
        bucket = parse_bucket(parsed.netloc)
    except ValueError as exc:
        raise ValueError(f"{name}={uri!r}: the bucket must be {exc}") from None
    return bucket, parsed.path.strip("/")


def input_source(path: str, settings: StorageSettings) -> tuple[str | list[str], pafs.FileSystem | None]:
    """The path(s) and file system Ray Data's readers take for ``path`` (local or ``s3://``)."""
    if path.startswith("s3://"):
        bucket, key = split_s3(path, "input")
        return f"{bucket}/{key}".rstrip("/"), s3_filesystem(settings)
    if not Path(path).exists():
        raise ValueError(f"input={path!r}: no such file or directory")
    return str(Path(path).resolve()), None


@dataclass(frozen=True)
class Output:
    """A job's output location: S3 settings pointed at it (S3) or a root directory (local)."""

    uri: str
    settings: StorageSettings
    root: str  # bucket/prefix (S3) or /abs/dir/prefix (local): where tables live
    key_prefix: str  # the outputs' key prefix (build_key)

    @property
    def s3(self) -> bool:
        return self.settings.s3_enabled

    def filesystem(self) -> pafs.FileSystem:
        return s3_filesystem(self.settings) if self.s3 else pafs.LocalFileSystem()

    def path(self, key: str) -> str:
        """The file-system path of an object key (S3: bucket/key; local: dir/key)."""
        base = self.settings.bucket if self.s3 else str(Path(self.uri).resolve())
        return f"{base}/{key}"

    @property
    def manifest_dir(self) -> str:
        return self.path(f"{self.key_prefix}/manifest")

    @property
    def errors_path(self) -> str:
        return self.path(f"{self.key_prefix}/errors/errors.parquet")

    def show(self, path: str) -> str:
        return f"s3://{path}" if self.s3 else path


def output_location(uri: str, settings: StorageSettings) -> Output:
    """Parse ``--output``: ``s3://bucket/prefix`` (S3, the env's endpoint and credentials) or a
    directory (created if missing)."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3(uri, "output")
        try:
            prefix = parse_key_prefix(prefix) if prefix else settings.key_prefix
        except ValueError as exc:
            raise ValueError(f"output={uri!r}: the prefix must be {exc}") from None
        s3 = dataclasses.replace(settings, storage_type="s3", bucket=bucket, key_prefix=prefix)
        return Output(uri, s3, f"{bucket}/{prefix}", prefix)
    if "://" in uri:
        raise ValueError(f"output={uri!r}: must be s3://bucket/prefix or a local directory")
    directory = Path(uri).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    local = dataclasses.replace(settings, storage_type=None, key_prefix=LOCAL_PREFIX)
    return Output(str(directory), local, f"{directory}/{LOCAL_PREFIX}", LOCAL_PREFIX)


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """One Parquet file, written whole (a local one through a temp name and a rename)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    parent = path.rsplit("/", 1)[0]
    _make_dir(fs, parent)
    target = path if isinstance(fs, pafs.S3FileSystem) else f"{parent}/.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(target) as stream:
        stream.write(sink.getvalue())
    if target != path:
        fs.move(target, path)


def _make_dir(fs: pafs.FileSystem, path: str) -> None:
    """A local directory; nothing on S3, where pyarrow would PUT an empty ``dir/`` marker object
    that other tools list as a file (and that appears before the first real object)."""
    if not isinstance(fs, pafs.S3FileSystem):
        fs.create_dir(path, recursive=True)


def part_name() -> str:
    """``part-<utc>-<id>.parquet``: sorts by time, unique across writers."""
    return f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"


def list_sizes(fs: pafs.FileSystem, directory: str) -> dict[str, int]:
    """Every file under ``directory`` (recursively) -> its size; empty when it does not exist."""
    selector = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
    return {info.path: info.size for info in fs.get_file_info(selector) if info.type == pafs.FileType.File}


def claim_output(out: Output, fs: pafs.FileSystem, model: str) -> datetime:
    """The job's date, which every output key carries (``{prefix}/{yyyy}/{mm}/{dd}/...``).

    The first run writes ``job.json`` (model, start time) under the output; a re-run reads it, so
    an output redone on another day lands under the same key instead of beside it, and a run of
    another model into the same output is refused (its rows would be skipped as done)."""
    path = out.path(f"{out.key_prefix}/job.json")
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as stream:
            job = json.loads(stream.read())
        if job.get("model") != model:
            raise ValueError(
                f"output={out.uri!r}: holds the outputs of model {job.get('model')!r} ({out.show(path)}); "
                f"a job writes one model's outputs: give model {model!r} another output"
            )
        return datetime.fromisoformat(job["started"])
    started = datetime.now(timezone.utc)
    _make_dir(fs, path.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps({"model": model, "started": started.isoformat()}).encode())
    return started
