"""The batch manifest (the serving manifest's columns plus the input row's id and fields), the
errors table, and what a re-run may skip."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_dit.batch.location import Output, list_sizes
from ray_dit.sink.manifest import SCHEMA as SERVING_SCHEMA

log = logging.getLogger(__name__)

#: The columns a row carries through every stage: its id, its input's id, its request as JSON, and
#: why it failed (None while it has not). Each stage's schema starts with them.
CHECKED_SCHEMA = pa.schema(
    [("request_id", pa.string()), ("row_id", pa.string()), ("body", pa.string()), ("error", pa.string())]
)


def stage_schema(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    """A stage's output: the checked row's columns, the stage that failed it, then ``columns``."""
    return pa.schema([*CHECKED_SCHEMA, ("stage", pa.string()), *columns])


SCHEMA = SERVING_SCHEMA.append(pa.field("row_id", pa.string(), nullable=False)).append(
    pa.field("input", pa.string(), nullable=False)  # the row's request fields, as JSON
)
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # "validate", "generate" or "store"
        pa.field("error", pa.string(), nullable=False),
        pa.field("input", pa.string()),
    ]
)


def manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def errors_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ERRORS_SCHEMA)


def read_manifest(output: Output, fs: pafs.FileSystem) -> pa.Table:
    """Every manifest part under the output (an empty table when there is none yet)."""
    parts = sorted(
        path for path in list_sizes(fs, output.manifest_dir) if path.rsplit("/", 1)[-1].startswith("part-")
    )
    tables = []
    for path in parts:
        try:
            tables.append(pq.read_table(path, filesystem=fs, schema=SCHEMA))
        except (OSError, pa.ArrowInvalid) as exc:  # a torn part: its rows are simply redone
            log.warning("skipping unreadable manifest part %s: %s", output.show(path), exc)
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def done_requests(output: Output, fs: pafs.FileSystem) -> set[str]:
    """Request ids whose every output is in the manifest *and* stored with the recorded size.

    A row's outputs are recorded together (one manifest part per writer batch), so a request
    with any recorded output that is missing from storage is redone whole; the re-upload puts the
    same bytes under a key of the same layout."""
    manifest = read_manifest(output, fs)
    if manifest.num_rows == 0:
        return set()
    stored = list_sizes(fs, output.path(output.key_prefix))
    expected: dict[str, int] = {}
    complete: dict[str, bool] = {}
    for row in manifest.select(["request_id", "key", "bytes", "input"]).to_pylist():
        rid = row["request_id"]
        expected.setdefault(rid, int(json.loads(row["input"]).get("n") or 1))
        ok = stored.get(output.path(row["key"])) == row["bytes"]
        complete[rid] = complete.get(rid, True) and ok
    counts: dict[str, set[str]] = {}
    for row in manifest.select(["request_id", "output_index"]).to_pylist():
        counts.setdefault(row["request_id"], set()).add(str(row["output_index"]))
    return {rid for rid, ok in complete.items() if ok and len(counts[rid]) >= expected[rid]}
