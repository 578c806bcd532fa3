"""``generate()``: one offline job, read -> check -> skip what is done -> denoise -> store.

Ray Data is the scheduler: the denoise is a ``map_batches`` stage on an actor pool (one Engine
per actor; one GPU each on GPU nodes), the store stage a second pool of CPU actors, and Ray Data
streams between them with its backpressure and progress bars. This module only wires the stages
and sums up what came out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from ray_dit.batch.generate_stage import GenerateStage
from ray_dit.batch.location import Output, claim_output, input_source, output_location, write_table
from ray_dit.batch.plan import make_plan
from ray_dit.batch.records import CHECKED_SCHEMA, done_requests, errors_table
from ray_dit.batch.rows import check_row
from ray_dit.batch.summary import Summary, Tally
from ray_dit.batch.write_stage import WriteStage
from ray_dit.config import ServeLimits, load_settings, server_from_env
from ray_dit.serve.types import ModelInfo

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def read_input(path: str, settings: Any, input_format: str | None = None) -> Any:
    """A Ray Dataset of the rows of a Parquet, JSONL or CSV file or directory (local or s3://)."""
    import ray.data

    fmt = input_format or next((f for ext, f in FORMATS.items() if path.rstrip("/").endswith(ext)), None)
    if fmt is None:
        fmt = "parquet"  # a directory of parts, as Spark and Ray Data write them
    if fmt not in ("parquet", "json", "csv"):
        raise ValueError(f"input_format={input_format!r}: must be one of parquet/json/csv")
    paths, fs = input_source(path, settings)
    if fmt == "json":
        return ray.data.read_json(paths, filesystem=fs, lines=True)
    reader = ray.data.read_parquet if fmt == "parquet" else ray.data.read_csv
    return reader(paths, filesystem=fs)


def _check(batch: pa.Table, limits: ServeLimits, info: ModelInfo, model: str) -> pa.Table:
    checked = [check_row(row, limits, info, model) for row in batch.to_pylist()]
    return pa.Table.from_pylist([vars(c) for c in checked], schema=CHECKED_SCHEMA)


def check_options(**counts: int) -> None:
    """Every count named, at least 1; one ValueError naming each bad one."""
    problems = [f"{name}={value}: must be at least 1" for name, value in counts.items() if value < 1]
    if problems:
        raise ValueError("; ".join(problems))


def _gpu_stage(device: str) -> bool:
    import ray

    if device.startswith("cuda"):
        return True
    return device == "auto" and ray.cluster_resources().get("GPU", 0) > 0


def generate(
    source: Any,
    output: str,
    *,
    model: str = "demo:shapes",
    device: str = "auto",
    dtype: str = "auto",
    engines: int = 1,
    writers: int = 1,
    engine_cpus: float = 1.0,
    batch_size: int = 16,
    max_batch_size: int = 4,
    input_format: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Summary:
    """Generate every row of ``source`` (a path, ``s3://`` URI or Ray Dataset) into ``output``
    (a directory or ``s3://bucket/prefix``) and return the :class:`Summary`. Settings come from
    ``env`` (default: the process environment), as the server reads them."""
    import ray

    check_options(engines=engines, writers=writers, batch_size=batch_size, max_batch_size=max_batch_size)
    if not engine_cpus > 0:
        raise ValueError(f"engine_cpus={engine_cpus}: must be more than 0")
    started = time.perf_counter()
    settings = load_settings(env)
    limits = server_from_env(env).limits
    out = output_location(output, settings.storage)
    if not ray.is_initialized():
        ray.init()
    ds = source if not isinstance(source, str) else read_input(source, settings.storage, input_format)
    fs = out.filesystem()
    when = claim_output(out, fs, model)  # once the input is found, before any work
    info = ModelInfo(model=model, kind="image")  # the size multiple the API checks too
    checked = ds.map_batches(
        _check, batch_format="pyarrow", fn_kwargs={"limits": limits, "info": info, "model": model}
    )
    plan = make_plan(checked, done_requests(out, fs))
    tally = plan.tally
    if plan.todo:  # else nothing is left to do: start no engine
        stage_args = (model, device, dtype, settings.cache_dit, limits, info, max_batch_size)
        todo = ray.data.from_arrow(plan.blocks(CHECKED_SCHEMA))
        written = _stages(
            todo, out, when, stage_args, _gpu_stage(device), engines, writers, engine_cpus, batch_size
        )
        for batch in written.iter_batches(batch_format="pyarrow", batch_size=None):
            tally.add_written(batch)
    _write_errors(out, fs, tally)
    return tally.summary(out, time.perf_counter() - started)


def _stages(
    todo: Any,
    out: Output,
    when: datetime,
    stage_args: tuple[Any, ...],
    gpu: bool,
    engines: int,
    writers: int,
    engine_cpus: float,
    batch_size: int,
) -> Any:
    """The lazy pipeline: rows to generate -> engine actors -> writer actors."""
    import ray.data

    generated = todo.map_batches(
        GenerateStage,
        fn_constructor_args=stage_args,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=engines),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else engine_cpus,
    )
    return generated.map_batches(
        WriteStage,
        fn_constructor_args=(out, when),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=writers),
        num_cpus=1,
    )


def _write_errors(out: Output, fs: Any, tally: Tally) -> None:
    """The errors table is rewritten by every run: each run checks every row again."""
    write_table(fs, out.errors_path, errors_table(tally.errors))
