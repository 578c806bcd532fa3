"""The store stage: CPU actors that encode frames and store them with the frame sink's parts.

Encoders (``sink/encode.py``), keys (``sink/keys.py``) and the S3 client (``sink/s3.py``:
Content-MD5 on every PUT, the ETag checked) are the serving path's own. There is no spool here:
a batch row that fails to store is simply generated again by the next run, so an output is
PUT, then its manifest rows are written, one Parquet part per writer batch, after every object
of that batch is stored. A part therefore never names an object that is not there.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ray_dit.batch.location import Output, part_name, write_table
from ray_dit.batch.records import manifest_table, stage_schema
from ray_dit.errors import RayDitError
from ray_dit.sink import keys
from ray_dit.sink.encode import encode_output
from ray_dit.sink.files import md5_hex, write_atomic

PUT_ATTEMPTS = 4  # per object; each S3Bucket call also retries inside botocore

RESULT_SCHEMA = stage_schema(
    ("outputs", pa.int64()),
    ("cache", pa.string()),
    ("denoise_s", pa.float64()),
    ("engine_cpu_s", pa.float64()),
    ("writer_cpu_s", pa.float64()),  # the writer process's CPU time for the batch, per row
)


class WriteStage:
    """``map_batches`` callable class: frames in, stored outputs and manifest rows out."""

    def __init__(self, output: Output, when: datetime) -> None:
        self.output = output
        self.when = when  # the job's date, in every key: a re-run on another day stores in place
        self.fs = output.filesystem()
        self.bucket = None
        if output.s3:
            from ray_dit.sink.s3 import S3Bucket  # boto3 loads in the writer only

            self.bucket = S3Bucket(output.settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        cpu_started = time.process_time()
        results, manifest_rows = [], []
        for row in batch.to_pylist():
            stored: list[dict[str, Any]] = []
            if row["error"] is None:
                try:
                    stored = self._store_row(row)
                except (RayDitError, OSError, ValueError) as exc:
                    row.update(error=f"storing failed: {exc}", stage="store")
            manifest_rows += stored
            denoise = json.loads(row["timings"])["denoise_s"] if row.get("timings") else None
            results.append({**row, "outputs": len(stored), "denoise_s": denoise})
        if manifest_rows:
            table = manifest_table(manifest_rows)
            write_table(self.fs, f"{self.output.manifest_dir}/{part_name()}", table)
        cpu_s = (time.process_time() - cpu_started) / max(1, len(results))
        return pa.Table.from_pylist([dict(r, writer_cpu_s=cpu_s) for r in results], schema=RESULT_SCHEMA)

    def _store_row(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        frames = np.frombuffer(row["frames"], dtype=np.uint8).reshape(row["shape"])
        when = datetime.now(timezone.utc)
        level = self.output.settings.png_compress_level
        stored = []
        for index in range(frames.shape[0]):
            started = time.perf_counter()
            encoded = encode_output(frames[index], row["kind"], row["format"], row["fps"], png_level=level)
            encode_s = time.perf_counter() - started
            key = keys.build_key(
                self.output.key_prefix, row["request_id"], index, encoded.extension, self.when
            )
            md5 = md5_hex(encoded.data)
            upload_s, attempts = self._put(key, encoded.data, encoded.content_type, md5)
            stored.append(
                {
                    "request_id": row["request_id"],
                    "output_index": index,
                    "key": key,
                    "storage": "s3" if self.bucket else "local",
                    "bucket": self.bucket.bucket if self.bucket else None,
                    "url": self.bucket.object_url(key) if self.bucket else None,
                    "url_mode": self.output.settings.url_mode if self.bucket else None,
                    "bytes": len(encoded.data),
                    "md5": md5,
                    "content_type": encoded.content_type,
                    **encoded.facts(),
                    "seed": row["seed"],  # the request's seed, as serving records it (output i used seed + i)
                    "steps": row["steps"],
                    "cache_stats": row["cache"],
                    "timings": row["timings"],
                    "denoise_s": json.loads(row["timings"])["denoise_s"],
                    "encode_s": encode_s,
                    "upload_s": upload_s,
                    "upload_attempts": attempts,
                    "created": when,
                    "uploaded": datetime.now(timezone.utc),
                    "row_id": row["row_id"],
                    "input": row["body"],
                }
            )
        return stored

    def _put(self, key: str, data: bytes, content_type: str, md5: str) -> tuple[float, int]:
        """Store one object; (seconds, attempts). S3 errors are retried with a short backoff."""
        started = time.perf_counter()
        if self.bucket is None:
            final = Path(self.output.path(key))
            final.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(final, data, final.parent)
            return time.perf_counter() - started, 1
        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:
                self.bucket.put(key, data, content_type, md5)
                return time.perf_counter() - started, attempt
            except RayDitError as exc:
                if attempt == PUT_ATTEMPTS or not getattr(exc, "retryable", False):
                    raise
                time.sleep(0.5 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")
