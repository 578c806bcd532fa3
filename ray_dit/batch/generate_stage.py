"""The denoise stage: a Ray Data actor holding one :class:`ray_dit.engine.Engine`.

Each actor is a DiT replica without Serve: the same engine, the same cache-dit settings, and the
serving batcher's grouping (``Engine.batch_key``), so rows that can share a pipeline call do. It
hands raw frames on (as bytes plus a shape, so variable sizes travel as plain Arrow columns):
encoding and upload belong to the writer actors and never hold the accelerator.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ray_dit.api import GenerationRequest, GenerationResult
from ray_dit.batch.records import stage_schema
from ray_dit.batch.rows import to_request
from ray_dit.config import CacheDitSettings, ServeLimits
from ray_dit.errors import RayDitError
from ray_dit.serve.errors import ApiError
from ray_dit.serve.types import ModelInfo

log = logging.getLogger(__name__)

FRAMES_SCHEMA = stage_schema(
    ("frames", pa.large_binary()),
    ("shape", pa.list_(pa.int64())),
    ("kind", pa.string()),
    ("format", pa.string()),
    ("fps", pa.int64()),
    ("seed", pa.int64()),
    ("steps", pa.int64()),
    ("cache", pa.string()),
    ("timings", pa.string()),
    ("engine_cpu_s", pa.float64()),  # the engine process's CPU time for the call, per row
)


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, ApiError) else str(exc)


def groups(engine: Any, requests: list[GenerationRequest], max_outputs: int) -> Iterator[list[int]]:
    """Indexes of requests that may share one call: same ``batch_key``, at most ``max_outputs``
    outputs per call (a request alone is one call, whatever its ``n``)."""
    open_groups: dict[Any, list[int]] = {}
    for index, request in enumerate(requests):
        key = engine.batch_key(request) if max_outputs > 1 else None
        if key is None:
            yield [index]
            continue
        group = open_groups.setdefault(key, [])
        if group and sum(requests[i].n for i in group) + request.n > max_outputs:
            yield open_groups.pop(key)
            group = open_groups.setdefault(key, [])
        group.append(index)
    yield from open_groups.values()


class GenerateStage:
    """``map_batches`` callable class: rows in (checked bodies), frames out, one Engine each."""

    def __init__(
        self,
        model: str,
        device: str,
        dtype: str,
        cache_settings: CacheDitSettings,
        limits: ServeLimits,
        info: ModelInfo | None,
        max_batch_size: int,
    ) -> None:
        from ray_dit.engine import Engine, EngineOptions  # torch loads in the actor only

        with contextlib.redirect_stdout(sys.stderr):  # cache-dit prints
            self.engine = Engine(EngineOptions(model=model, device=device, dtype=dtype), cache_settings)
        self.limits, self.info, self.max_batch_size = limits, info, max_batch_size
        if max_batch_size > 1:
            self.engine.batchable()  # probed once, before the first batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        cpu_started = time.process_time()
        rows = batch.to_pylist()
        out: list[dict[str, Any]] = [dict(row, stage=None) for row in rows]
        ready: list[int] = []
        requests: list[GenerationRequest] = []
        for index, row in enumerate(rows):
            try:
                request = self.engine.resolve(
                    to_request(row["request_id"], row["body"], self.limits, self.info)
                )
            except (ApiError, RayDitError, ValueError) as exc:
                out[index].update(error=_message(exc), stage="generate")
                continue
            ready.append(index)
            requests.append(request)
        for group in groups(self.engine, requests, self.max_batch_size):
            chosen = [requests[i] for i in group]
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    results = self.engine.generate_batch(chosen)
            except (RayDitError, ValueError) as exc:
                for i in group:
                    out[ready[i]].update(error=_message(exc), stage="generate")
                continue
            for i, request, result in zip(group, chosen, results, strict=True):
                out[ready[i]].update(_frames_row(request, result))
        cpu_s = (time.process_time() - cpu_started) / max(1, len(out))
        return pa.Table.from_pylist([dict(row, engine_cpu_s=cpu_s) for row in out], schema=FRAMES_SCHEMA)


def _frames_row(request: GenerationRequest, result: GenerationResult) -> dict[str, Any]:
    frames = result.frames
    return {
        "frames": frames.tobytes(),
        "shape": list(frames.shape),
        "kind": result.kind,
        "format": request.output_format,
        "fps": result.fps,
        "seed": result.seed,
        "steps": result.steps,
        "cache": json.dumps(result.cache.as_dict(), sort_keys=True),
        "timings": json.dumps(result.timings.as_dict(), sort_keys=True),
    }
