"""The DiT deployment: one engine per replica (one per GPU), one pipeline call at a time.

``generate`` is async on purpose. Requests join a queue (``serve/batching.py``) from which one
loop forms pipeline calls (a batch of compatible requests when ``max_batch_size`` > 1) and runs
them in a worker thread, while the replica's event loop stays free to notice that a caller went
away: Serve cancels the request's asyncio task, the method sets the request's flag, which the
engine checks after every step (a batch stops only when all of its requests are cancelled), waits
for its call to end, and only then frees the replica's slot. A result that finished denoising
before the cancellation landed is handed to the sink by the replica itself (Ray drops a cancelled
task's return value).

Before it reports ready, the replica warms up (one small generation per size), so the first user
request does not pay for lazy initialization.
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

from ray_dit.api import GenerationRequest, GenerationResult, parse_size
from ray_dit.errors import ConfigError, InvalidRequest, RequestCancelled
from ray_dit.serve import metrics
from ray_dit.serve.batching import BatchQueue, Member
from ray_dit.serve.generation import start_outside_request
from ray_dit.serve.types import ModelInfo

logger = logging.getLogger("ray.serve")

PROGRESS_INTERVAL_S = 0.25
WARMUP_STEPS = 2


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
        self._attach(Engine(options), jobs, sink, BatchQueue(max_batch_size, batch_wait_timeout_s))
        self.model = model
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
        if max_batch_size > 1:
            self.engine.batchable()  # probed now, not on a request's time
        if warmup:
            self._warm_up(warmup_sizes)
        logger.info(
            "DiT replica ready: model=%s device=%s kind=%s in %.1fs",
            model,
            self.engine.device,
            self.engine.kind,
            time.perf_counter() - t0,
        )

    def _attach(
        self, engine: Any, jobs: DeploymentHandle | None, sink: DeploymentHandle | None, queue: BatchQueue
    ) -> None:
        """Everything a request needs besides the model facts (tests attach a stand-in engine)."""
        self.engine = engine
        self._jobs = jobs
        self._sink = sink
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="denoise")
        self._queue = queue
        self._batcher: asyncio.Task | None = None

    def describe(self) -> ModelInfo:
        return self.info

    def _warm_up(self, sizes: list[str] | tuple[str, ...]) -> None:
        """One small generation per size before the replica reports ready: the first user request
        must not pay for lazy initialization (cache-dit's mount, allocator growth, kernels)."""
        defaults = self.engine.resolved_defaults()
        shapes = [(defaults.width, defaults.height), *(parse_size(size) for size in sizes)]
        steps = min(WARMUP_STEPS, defaults.num_inference_steps or WARMUP_STEPS)
        for width, height in dict.fromkeys(shapes):
            t0 = time.perf_counter()
            request = defaults.replace(
                prompt="warm-up", width=width, height=height, num_inference_steps=steps, request_id="warm-up"
            )
            try:
                self.engine.generate(request)
            except InvalidRequest as exc:
                raise ConfigError([f"warmup_sizes: {width}x{height}: {exc}"]) from None
            except Exception as exc:  # compile: true compiles the blocks here, on their first call
                from ray_dit.engine.compile import compile_failure  # torch loads in the replica only

                error = compile_failure(exc)
                if error is None:
                    raise
                raise error from exc
            logger.info("warm-up at %sx%s took %.2fs", width, height, time.perf_counter() - t0)

    async def generate(self, request: GenerationRequest, job_id: str | None = None) -> GenerationResult:
        """Denoise one request, in a batch with compatible ones when batching is on; returns
        frames (through the object store) and stats."""
        arrived = time.perf_counter()
        request = self.engine.resolve(request)  # what only the engine can check, before queueing
        key = self.engine.batch_key(request) if self._queue.max_batch_size > 1 else None
        member = Member(request, key, asyncio.get_running_loop().create_future(), arrived)
        progress = _ProgressReporter(self._jobs, job_id, member.cancel) if job_id and self._jobs else None
        member.on_step = progress.on_step if progress else None
        self._start_batcher()
        self._queue.put(member)
        try:
            result = await asyncio.shield(member.future)
        except asyncio.CancelledError:
            await self._cancelled(member)
            raise asyncio.CancelledError() from None
        finally:
            if progress:
                await progress.stop()
        self._observe(result)
        result.timings.replica_s = time.perf_counter() - arrived
        return result

    async def _cancelled(self, member: Member) -> None:
        """The caller is gone. A request still waiting leaves the queue; one denoising stops at
        the next step (its batch goes on without it while any batch-mate still wants its output),
        holding its slot until its call ends. An output whose denoise had finished is stored."""
        finished = member.steps_done >= int(member.request.num_inference_steps or 0)
        member.cancel.set()
        if self._queue.discard(member):
            return
        try:
            result = await member.future
        except BaseException:
            metrics.cancelled_requests().inc()
            logger.info("request %s cancelled by its caller; denoise stopped", member.request.request_id)
            return
        if finished or not member.shared:  # alone, a result means the denoise was done
            # Ray discards the return value of a cancelled task, so the composed sink call would
            # never see these frames: hand them to the sink from here (still replica -> sink).
            await self._store_orphan(result, member.request)
        else:
            metrics.cancelled_requests().inc()
            logger.info("request %s cancelled by its caller; its batch went on", member.request.request_id)

    def _start_batcher(self) -> None:
        if self._batcher is None or self._batcher.done():
            self._batcher = start_outside_request(self._run_batches())

    async def _run_batches(self) -> None:
        while True:
            batch = await self._queue.next_batch()
            try:
                await self._run_batch(batch)
            except Exception as exc:  # never let the loop die: every member gets an answer
                logger.error("batch of %d failed unexpectedly: %s", len(batch), exc)
                for member in batch:
                    _settle(member.future, exc)

    async def _run_batch(self, batch: list[Member]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._denoise, batch)
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, RequestCancelled):
                # One request's failure must not fail its batch-mates: run each alone.
                logger.warning("a batch of %d requests failed (%s): running them one by one", len(batch), exc)
                for member in batch:
                    await self._run_batch([member])
                return
            for member in batch:
                _settle(member.future, exc)
            return
        for member, result in zip(batch, results, strict=True):
            _settle(member.future, result)

    def _denoise(self, batch: list[Member]) -> list[GenerationResult]:
        started = time.perf_counter()

        def should_cancel() -> bool:
            return all(member.cancel.is_set() for member in batch)

        def on_step(step: int, total: int) -> None:
            for member in batch:
                member.steps_done = step
                if member.on_step is not None:
                    member.on_step(step, total)

        if should_cancel():
            raise RequestCancelled(f"{batch[0].request.request_id} cancelled before it started")
        results = self.engine.generate_batch([m.request for m in batch], on_step, should_cancel)
        for member, result in zip(batch, results, strict=True):
            result.timings.queue_s += started - member.arrived  # behind earlier calls, or batching
        return results

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

    def _observe(self, result: GenerationResult) -> None:
        try:
            metrics.denoise_seconds().observe(result.timings.denoise_s)
            metrics.batch_size().observe(result.batch_size)
            total = result.cache.total_steps
            if total:
                metrics.steps_cached_ratio().observe(result.cache.cached_steps / total)
        except Exception as exc:  # metrics must never fail a request
            logger.warning("metrics: %s", exc)


def _settle(future: asyncio.Future, outcome: Any) -> None:
    """Answer a member (a result or an exception), unless it was answered or cancelled."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


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
