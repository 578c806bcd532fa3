"""What a job did: rows done, skipped and failed, outputs per second, cache statistics summed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from ray_dit.batch.location import Output

_CACHE_SUMS = ("total_steps", "computed_steps", "cached_steps", "cfg_cached_steps")


@dataclass(frozen=True)
class Summary:
    rows: int  # input rows
    done: int  # rows generated and stored by this run
    skipped: int  # requests already recorded and stored by an earlier run
    repeats: int  # rows identical to an earlier row of the input (one request, generated once)
    failed: int  # rows in the errors table (bad input, or a generate/store failure)
    outputs: int  # objects stored by this run
    seconds: float
    outputs_per_s: float
    cache: dict[str, float]  # steps summed over the rows done; skipped_block_fraction step-weighted
    engine_cpu_s: float  # CPU time of the engine actors' processes (host side on a GPU)
    writer_cpu_s: float  # CPU time of the writer actors' processes (encoding, upload, manifest)
    manifest: str
    errors: str

    @property
    def writer_share(self) -> float:
        total = self.engine_cpu_s + self.writer_cpu_s
        return self.writer_cpu_s / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "writer_share": self.writer_share}

    def text(self) -> str:
        cache = self.cache
        return "\n".join(
            [
                f"rows {self.rows}: {self.done} done, {self.skipped} skipped (done before), "
                f"{self.repeats} repeats of another row, {self.failed} failed",
                f"outputs {self.outputs} in {self.seconds:.1f} s ({self.outputs_per_s:.2f} outputs/s)",
                f"cache: {cache['cached_steps']:.0f}/{cache['total_steps']:.0f} steps cached, "
                f"{cache['skipped_block_fraction']:.1%} of block evaluations skipped",
                f"CPU: engines {self.engine_cpu_s:.1f} s, writers {self.writer_cpu_s:.1f} s "
                f"({self.writer_share:.0%} of the two)",
                f"manifest: {self.manifest}",
                f"errors:   {self.errors}",
            ]
        )


@dataclass
class Tally:
    """Counters the driver keeps while the job's results stream in."""

    rows: int = 0
    skipped: int = 0
    repeats: int = 0
    done: int = 0
    outputs: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_CACHE_SUMS, 0.0))
    skipped_blocks: float = 0.0  # sum of skipped_block_fraction x total_steps
    engine_cpu_s: float = 0.0
    writer_cpu_s: float = 0.0

    def add_written(self, batch: pa.Table) -> None:
        for row in batch.to_pylist():
            self.engine_cpu_s += row["engine_cpu_s"] or 0.0
            self.writer_cpu_s += row["writer_cpu_s"] or 0.0
            if row["error"] is not None:
                self.errors.append(error_row(row, row["stage"] or "generate"))
                continue
            self.done += 1
            self.outputs += row["outputs"]
            stats = json.loads(row["cache"])
            for name in _CACHE_SUMS:
                self.cache[name] += stats.get(name, 0)
            self.skipped_blocks += stats.get("skipped_block_fraction", 0.0) * stats.get("total_steps", 0)

    def summary(self, out: Output, seconds: float) -> Summary:
        steps = self.cache["total_steps"]
        cache = {**self.cache, "skipped_block_fraction": self.skipped_blocks / steps if steps else 0.0}
        return Summary(
            rows=self.rows,
            done=self.done,
            skipped=self.skipped,
            repeats=self.repeats,
            failed=len(self.errors),
            outputs=self.outputs,
            seconds=seconds,
            outputs_per_s=self.outputs / seconds if seconds > 0 else 0.0,
            cache=cache,
            engine_cpu_s=self.engine_cpu_s,
            writer_cpu_s=self.writer_cpu_s,
            manifest=out.show(out.manifest_dir),
            errors=out.show(out.errors_path),
        )


def error_row(row: dict[str, Any], stage: str) -> dict[str, Any]:
    """A row of the errors table."""
    return {
        "request_id": row["request_id"],
        "row_id": row["row_id"],
        "stage": stage,
        "error": row["error"],
        "input": row["body"],
    }
