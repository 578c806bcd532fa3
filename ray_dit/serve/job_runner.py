"""The ingress's side of a video job: accept it, keep its record alive, record how it ended.

The job's state lives in the ``VideoJobs`` deployment (``job_store.py``), so any ingress replica
answers for it; the replica that accepted it owns it until it ends, and says so every
``heartbeat_s`` (a job nobody speaks for is failed as ``job_lost`` by the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ray.serve.handle import DeploymentHandle

from ray_dit.api import GenerationRequest
from ray_dit.serve.admission import Backlog
from ray_dit.serve.errors import to_api_error
from ray_dit.serve.generation import Generation
from ray_dit.serve.responses import final_timings
from ray_dit.serve.types import ModelInfo, StoreReply

POLL_AFTER_MS = "500"  # OpenAI's hint to clients polling a job


def job_record(
    job_id: str, model: str, request: GenerationRequest, seconds: Any, info: ModelInfo | None
) -> dict:
    """A new job as ``GET /v1/videos/{id}`` shows it (OpenAI's Video object)."""
    width = request.width or (info.width if info else None)
    height = request.height or (info.height if info else None)
    frames = request.num_frames or (info.num_frames if info else None)
    fps = request.fps or (info.fps if info else None)
    if seconds is None:
        seconds = f"{frames / fps:g}" if frames and fps else ""
    return {
        "id": job_id,
        "object": "video",
        "model": model,
        "status": "queued",
        "progress": 0,
        "created_at": int(time.time()),
        "prompt": request.prompt,
        "seconds": str(seconds),
        "size": f"{width}x{height}" if width and height else "",
        "num_frames": frames,
        "fps": fps,
    }


async def run_to_end(
    generation: Generation, jobs: DeploymentHandle, job_id: str, heartbeat_s: float, backlog: Backlog
) -> None:
    """Wait for the job's generation while telling the store it is alive, then record the end.
    Once the sink acknowledged the MP4 the job completes, with the cloud URL if S3 confirmed the
    upload within the sink's URL wait (else none: the ingress shows its own content URL)."""
    assert generation.task is not None
    started = time.perf_counter()
    try:
        await _keep_alive(generation.task, jobs, job_id, heartbeat_s)
        reply: StoreReply = await generation.task
        urls = asyncio.ensure_future(generation.add_urls(reply))  # never fails: the MP4 is stored
        await _keep_alive(urls, jobs, job_id, heartbeat_s)
        await urls
    except BaseException as exc:
        err = to_api_error(exc, job_id, backlog.retry_after_s) if isinstance(exc, Exception) else None
        error = {"code": err.code or "failed", "message": err.message} if err else None
        fields = {"status": "failed", "error": error or {"code": "cancelled", "message": "cancelled"}}
    else:  # the replica time was measured by the job's CostTicket (admission.py)
        out = reply.outputs[0] if reply.outputs else None
        fields = {
            "status": "completed",
            "url": out.url if out else None,
            "key": out.key if out else None,
            "seed": reply.meta.seed,
            "steps": reply.meta.steps,
            "timings": final_timings(reply, generation, started),
            "cache": reply.meta.cache.as_dict(),
            "batch_size": reply.meta.batch_size,
            "warnings": reply.meta.warnings,
        }
    fields["completed_at"] = int(time.time())
    with contextlib.suppress(Exception):
        await jobs.finish.remote(job_id, fields)


async def _keep_alive(task: asyncio.Task, jobs: DeploymentHandle, job_id: str, every_s: float) -> None:
    while not task.done():
        await asyncio.wait({task}, timeout=every_s)
        if not task.done():
            with contextlib.suppress(Exception):
                await jobs.touch.remote(job_id)
