"""The DiT deployment: one engine per replica (one per GPU), one denoise at a time.

``generate`` is async on purpose. The denoise runs in a worker thread while the replica's event
loop stays free to notice that the caller went away: Serve cancels the request's asyncio task,
the method sets a flag that the engine checks after every step, waits for the denoise to stop,
and only then frees the replica's slot. A result that finished denoising before the cancellation
landed is handed to the sink by the replica itself (Ray drops a cancelled task's return value).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ray_dit.api import GenerationRequest, GenerationResult
from ray_dit.errors import RequestCancelled
from ray_dit.serve import metrics
from ray_dit.serve.generation import start_outside_request
from ray_dit.serve.types import ModelInfo

logger = logging.getLogger("ray.serve")

PROGRESS_INTERVAL_S = 0.25


@serve.deployment(name="DiT", max_ongoing_requests=1, max_queued_requests=8, graceful_shutdown_timeout_s=60)
class DiTDeployment:
    """Holds one :class:`ray_dit.engine.Engine` (the only place diffusers is loaded)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        jobs: DeploymentHandle | None = None,
        sink: DeploymentHandle | None = None,
        transformer: str | None = None,
        *,
        max_batch_size: int = 1,
        batch_wait_timeout_s: float = 0.0,
        warmup: bool = True,
        warmup_sizes: list[str] | tuple[str, ...] = (),
        compile: bool = False,
    ) -> None:
        from ray_dit.engine import Engine, EngineOptions  # torch/diffusers load only here

        t0 = time.perf_counter()
        options = EngineOptions(
            model=model, device=device, dtype=dtype, transformer=transformer, compile=compile
        )
        self.engine = Engine(options)
        self.model = model
        self._jobs = jobs
        self._sink = sink
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="denoise")
        defaults = self.engine.resolved_defaults()
        self.info = ModelInfo(
            model=model,
            kind=self.engine.kind,
            width=defaults.width,
            height=defaults.height,
            steps=defaults.num_inference_steps,
            num_frames=defaults.num_frames,
            fps=defaults.fps,
            size_multiple=self.engine.options.size_multiple,
            frame_step=self.engine.frame_step,
            image_input=self.engine.image_input,
        )
        logger.info(
            "DiT replica ready: model=%s device=%s kind=%s in %.1fs",
            model,
            self.engine.device,
            self.engine.kind,
            time.perf_counter() - t0,
        )

    def describe(self) -> ModelInfo:
        return self.info

    async def generate(self, request: GenerationRequest, job_id: str | None = None) -> GenerationResult:
        """Denoise one request; returns frames (through the object store) and stats."""
        arrived = time.perf_counter()
        request = self.engine.resolve(request)  # what only the engine can check, before queueing
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        progress = _ProgressReporter(self._jobs, job_id, cancel) if job_id and self._jobs else None
        on_step = progress.on_step if progress else None
        future = loop.run_in_executor(self._executor, self._run, request, arrived, on_step, cancel.is_set)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller is gone: stop at the next step, and hold the slot until it has stopped.
            cancel.set()
            try:
                result = await future
            except BaseException:
                metrics.cancelled_requests().inc()
                logger.info("request %s cancelled by its caller; denoise stopped", request.request_id)
                raise asyncio.CancelledError() from None
            # It finished denoising before the cancellation landed. Ray discards the return value
            # of a cancelled task, so the composed sink call would never see these frames: hand
            # them to the sink from here (still replica -> sink), then report the cancellation.
            await self._store_orphan(result, request)
            raise asyncio.CancelledError() from None
        finally:
            if progress:
                await progress.stop()
        self._observe(result)
        result.timings.replica_s = time.perf_counter() - arrived
        return result

    async def _store_orphan(self, result: GenerationResult, request: GenerationRequest) -> None:
        if self._sink is None:
            logger.warning(
                "request %s finished after its cancellation; no sink to store it", request.request_id
            )
            return
        try:
            # Outside this (cancelled) request's context, or Serve would cancel the call too.
            await start_outside_request(self._store_remote(result, request.output_format))
            logger.info("request %s finished before its cancellation: stored", request.request_id)
        except Exception as exc:
            logger.error("request %s: storing a finished output failed: %s", request.request_id, exc)

    async def _store_remote(self, result: GenerationResult, output_format: str | None) -> Any:
        return await self._sink.store.remote(result, output_format)

    def _run(
        self, request: GenerationRequest, arrived: float, on_step: Any, should_cancel: Any
    ) -> GenerationResult:
        waited = time.perf_counter() - arrived  # for the denoise thread, behind earlier requests
        if should_cancel():
            raise RequestCancelled(f"{request.request_id} cancelled before it started")
        result = self.engine.generate(request, on_step=on_step, should_cancel=should_cancel)
        result.timings.queue_s += waited
        return result

    def _observe(self, result: GenerationResult) -> None:
        try:
            metrics.denoise_seconds().observe(result.timings.denoise_s)
            total = result.cache.total_steps
            if total:
                metrics.steps_cached_ratio().observe(result.cache.cached_steps / total)
        except Exception as exc:  # metrics must never fail a request
            logger.warning("metrics: %s", exc)


class _ProgressReporter:
    """Pushes a video job's progress to the job store from the event loop, a few times a second.

    The engine's step callback runs in the denoise thread; it only records the step. A task on
    the replica's loop sends the latest value, and learns from the reply whether the job was
    deleted meanwhile (which cancels the denoise).
    """

    def __init__(self, jobs: DeploymentHandle, job_id: str, cancel: threading.Event) -> None:
        self.jobs, self.job_id, self.cancel = jobs, job_id, cancel
        self.step, self.total = 0, 0
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def on_step(self, step: int, total: int) -> None:
        self.step, self.total = step, total

    async def _loop(self) -> None:
        sent = None
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                if self.step != sent:
                    sent = self.step
                    percent = min(99, 100 * self.step // self.total) if self.total else 0
                    if await self.jobs.progress.remote(self.job_id, percent) is False:
                        self.cancel.set()
                await asyncio.sleep(PROGRESS_INTERVAL_S)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
