"""What one run does with the checked rows: which to generate, which are done already, which are
repeats of another row, and which are errors.

A request is its id: rows with one id are one request, generated once. Identical rows (the same
``id`` and fields, or the same fields and no ``id``) are counted as repeats; rows that share an
``id`` with different fields are all refused, since no output could be told apart. The plan is
made in the driver from the checked rows (small: an id and the request's JSON each), so the
stages downstream never see a duplicate and the manifest records each output once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ray_dit.batch.summary import Tally, error_row

#: Rows per block handed to the engine actors: enough blocks that every actor of the pool gets work.
BLOCK_ROWS = 64


@dataclass
class Plan:
    tally: Tally
    todo: list[dict[str, Any]] = field(default_factory=list)  # checked rows to generate, in order

    def blocks(self, schema: pa.Schema) -> list[pa.Table]:
        rows = self.todo
        return [
            pa.Table.from_pylist(rows[i : i + BLOCK_ROWS], schema=schema)
            for i in range(0, len(rows), BLOCK_ROWS)
        ]


def make_plan(checked: Any, done: set[str]) -> Plan:
    """The plan for the materialized ``checked`` dataset (``request_id``, ``row_id``, ``body``,
    ``error`` columns), given the request ids an earlier run stored."""
    tally = Tally()
    by_id: dict[str, list[dict[str, Any]]] = {}  # request id -> its valid rows, in input order
    for batch in checked.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            tally.rows += 1
            if row["error"] is None:
                by_id.setdefault(row["request_id"], []).append(row)
            else:
                tally.errors.append(error_row(row, "validate"))
    plan = Plan(tally)
    for rid, rows in by_id.items():
        if len({row["body"] for row in rows}) > 1:
            why = f"id={rows[0]['row_id']!r}: given to {len(rows)} rows with different fields (an id names one request)"
            tally.errors += [error_row({**row, "error": why}, "validate") for row in rows]
            continue
        tally.repeats += len(rows) - 1
        if rid in done:
            tally.skipped += 1
        else:
            plan.todo.append(rows[0])
    return plan
