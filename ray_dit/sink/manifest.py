"""Parquet manifest: one row per stored output, as a pyarrow dataset under the spool.

A row is logged as a tiny JSON file *before* its spool entry is removed, so a crash never loses
the row of an uploaded object; rows are folded into ``part-*.parquet`` files in batches, which
are uploaded to ``{prefix}/manifest/``. After a crash a row may appear twice (at-least-once, like
the objects): deduplicate on ``key``. Layout under ``root`` (pyarrow ignores '_' and '.' names)::

    part-<utc>-<id>.parquet   the dataset (read it with pyarrow.dataset.dataset(root))
    _rows/*.json              rows not yet folded into a part
    _reserved/<entry>.json    space reserved, when an output is spooled, for its row after upload
    _uploaded/<part name>     marker: this part is in S3
    _lock                     flock held by whichever process folds or uploads

The row of an upload must be written when the disk may be full: the spooled outputs that fill it
can only leave once their rows are logged. So :meth:`Manifest.reserve` allocates the row's file
when the output is spooled (and fails, like the spool write, while the disk is full), and
:meth:`Manifest.commit` overwrites those allocated bytes in place and renames the file into
``_rows/``: neither needs a new data block on tmpfs, ext4 or XFS. (Copy-on-write file systems,
btrfs and ZFS, allocate on every overwrite: there a full disk can still stall the drain.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_dit.sink.files import fsync_dir, write_atomic
from ray_dit.sink.keys import NAME_RE as ENTRY_RE

log = logging.getLogger(__name__)

_TS = pa.timestamp("ms", tz="UTC")
SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("output_index", pa.int32(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("storage", pa.string(), nullable=False),  # "s3" or "local"
        pa.field("bucket", pa.string()),
        pa.field("url", pa.string()),  # credential-free object URL; never a presigned one
        pa.field("url_mode", pa.string()),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("md5", pa.string(), nullable=False),
        pa.field("content_type", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("fps", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("steps", pa.int32()),
        pa.field("cache_stats", pa.string()),  # JSON object (ray_dit.api.CacheStats.as_dict())
        pa.field("timings", pa.string()),  # JSON object: the engine's timings, seconds
        pa.field("denoise_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("upload_s", pa.float64()),
        pa.field("upload_attempts", pa.int32()),
        pa.field("created", _TS, nullable=False),
        pa.field("uploaded", _TS),
    ]
)
COLUMNS = tuple(SCHEMA.names)
_TIME_COLUMNS = ("created", "uploaded")
RESERVE_SLACK = 512  # bytes beyond the estimate: attempt counts and timings vary in length


def _to_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return datetime.fromtimestamp(float(value), tz=timezone.utc)


class Manifest:
    """Durable row log + Parquet dataset. Safe for several processes sharing one directory."""

    def __init__(self, root: str | os.PathLike[str], batch_rows: int = 256) -> None:
        self.root = Path(root).resolve()
        self.batch_rows = batch_rows
        self._rows, self._uploaded = self.root / "_rows", self.root / "_uploaded"
        self._reserved = self.root / "_reserved"
        for path in (self.root, self._rows, self._uploaded, self._reserved):
            path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Manifest(root={str(self.root)!r})"

    @staticmethod
    def encode_row(row: Mapping[str, Any]) -> bytes:
        """A row as logged: unknown columns are an error, missing ones are null."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"manifest row has unknown columns {sorted(unknown)}")
        clean = {name: row.get(name) for name in COLUMNS}
        for name in _TIME_COLUMNS:
            stamp = _to_timestamp(clean[name])
            clean[name] = stamp.timestamp() if stamp else None
        return json.dumps(clean, sort_keys=True).encode()

    @staticmethod
    def _row_name() -> str:
        return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"

    def record(self, row: Mapping[str, Any], *, durable: bool = True) -> None:
        """Log one row; ``durable=False`` skips the fsyncs, for rows about outputs that are
        themselves only cached."""
        data = self.encode_row(row)
        write_atomic(self._rows / self._row_name(), data, self._rows, durable=durable)
        if durable:
            fsync_dir(self._rows)

    def _reservation(self, entry: str) -> Path:
        if not ENTRY_RE.fullmatch(entry):
            raise ValueError(f"invalid manifest reservation name {entry!r}")
        return self._reserved / f"{entry}.json"

    def reserve(self, entry: str, row: Mapping[str, Any]) -> int:
        """Allocate, durably, the file that will hold the row of spool entry ``entry`` once it is
        uploaded, sized for ``row`` (the row as far as known) plus slack; returns its size.
        Raises OSError (ENOSPC) when the disk is full: then the output must not be spooled."""
        size = len(self.encode_row(row)) + RESERVE_SLACK
        write_atomic(self._reservation(entry), b" " * size, self._reserved)
        fsync_dir(self._reserved)
        return size

    def commit(self, entry: str, row: Mapping[str, Any]) -> None:
        """Log the row of an uploaded entry into its reserved file, without allocating: the
        bytes are overwritten in place (JSON allows the trailing spaces) and the file renamed
        into the row log. Without a reservation that fits (an entry spooled by an older
        version), a plain :meth:`record`."""
        data = self.encode_row(row)
        path = self._reservation(entry)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.record(row)
            return
        try:
            fits = len(data) <= os.fstat(fd).st_size
            if fits:
                os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)
                os.fsync(fd)
        finally:
            os.close(fd)
        if not fits:
            self.record(row)
            self.release(entry)
            return
        os.replace(path, self._rows / self._row_name())
        fsync_dir(self._rows)
        fsync_dir(self._reserved)

    def release(self, entry: str) -> None:
        """Drop the reservation of an entry that will never be uploaded (quarantined, or whose
        spooling failed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._reservation(entry))

    def reserved_entries(self) -> dict[str, float]:
        """Entry name -> modification time of every reservation (for the orphan sweep)."""
        found = {}
        for path in self._reserved.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                found[path.stem] = path.stat().st_mtime
        return found

    def pending_rows(self) -> int:
        return sum(1 for p in self._rows.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        fd = os.open(self.root / "_lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def flush(self) -> Path | None:
        """Fold logged rows into one new Parquet part; None when there was nothing to fold
        (or another process is folding right now)."""
        with self._locked() as mine:
            if not mine:
                return None
            files = sorted(p for p in self._rows.iterdir() if p.suffix == ".json" and p.name[0] != ".")
            if not files:
                return None
            rows = []
            for path in files:
                try:
                    rows.append(json.loads(path.read_bytes()))
                except (OSError, ValueError):
                    log.error("manifest row %s is unreadable; skipped", path.name)
            part = self._write_part(rows)
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return part

    def _write_part(self, rows: list[dict[str, Any]]) -> Path:
        columns: dict[str, list[Any]] = {name: [r.get(name) for r in rows] for name in COLUMNS}
        for name in _TIME_COLUMNS:
            columns[name] = [_to_timestamp(v) for v in columns[name]]
        table = pa.Table.from_pydict(columns, schema=SCHEMA)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final = self.root / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        write_atomic(final, buffer.getvalue().to_pybytes(), self.root)
        fsync_dir(self.root)
        return final

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def unuploaded_parts(self) -> list[Path]:
        return [p for p in self.parts() if not (self._uploaded / p.name).exists()]

    def upload(self, put: Callable[[str, bytes], object]) -> int:
        """Upload the parts not yet marked as uploaded with ``put(part_name, data)``; returns how
        many. A part whose ``put`` raises stays unmarked and is tried again next time."""
        with self._locked() as mine:
            if not mine:
                return 0
            parts = self.unuploaded_parts()
            for part in parts:
                put(part.name, part.read_bytes())
                (self._uploaded / part.name).touch()
            return len(parts)

    def prune(self, keep_s: float, *, uploaded_only: bool = True) -> int:
        """Delete parts older than ``keep_s`` (with ``uploaded_only``, only those already in S3:
        the bucket holds them), and markers whose part is gone; returns how many files went."""
        removed, now = 0, time.time()
        with self._locked() as mine:
            if not mine:
                return 0
            for part in self.parts():
                marker = self._uploaded / part.name
                if uploaded_only and not marker.exists():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - part.stat().st_mtime > keep_s:
                        part.unlink()
                        removed += 1
            for marker in self._uploaded.iterdir():
                if not (self.root / marker.name).exists():
                    with contextlib.suppress(FileNotFoundError):
                        marker.unlink()
                        removed += 1
        return removed

    def read(self) -> pa.Table:
        """Every flushed row, as one table (pending rows are not included: call flush first)."""
        import pyarrow.dataset as ds

        if not self.parts():
            return SCHEMA.empty_table()
        return ds.dataset(self.root, format="parquet", schema=SCHEMA).to_table()
