"""The frame sink deployment: a CPU pool wrapping :class:`ray_dit.sink.FrameSink`.

The ingress calls ``store`` with the DiT result's object reference, so frames travel DiT ->
object store -> here, never through the ingress. Storing is shielded from cancellation: frames
that arrived are encoded and spooled even if the client that asked for them has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from ray_dit.api import GenerationResult
from ray_dit.config import storage_from_env
from ray_dit.errors import InvalidRequest, StorageUnavailable
from ray_dit.serve import metrics
from ray_dit.serve.types import ResultMeta, StoreReply

logger = logging.getLogger("ray.serve")

STATS_INTERVAL_S = 5.0
URL_WAIT_THREADS = 16  # = max_ongoing_requests below


def lower_priority(nice: int) -> None:
    """Renice every thread of this process (Linux nice values are per thread; threads started
    later inherit their creator's). Best effort: without permission the sink runs at normal
    priority, which costs the denoise some CPU on shared nodes but loses nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))


@serve.deployment(
    name="FrameSink",
    max_ongoing_requests=16,
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    graceful_shutdown_timeout_s=30,
)
class FrameSinkDeployment:
    """Encode, spool and upload; also reads outputs back for ``/content`` routes."""

    def __init__(self, threads: int = 4) -> None:
        from ray_dit.sink import FrameSink

        settings = storage_from_env()
        lower_priority(settings.sink_nice)  # before FrameSink starts its upload threads
        self.sink = FrameSink(settings)
        # Stores and reads on threads of their own: a read stuck on a hanging S3 must never
        # hold a thread that a finished denoise needs to be stored.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sink")
        self._reads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sink-read")
        self._read_slots = asyncio.Semaphore(threads)  # reads beyond the threads are refused
        # URL waits (mostly asleep, up to RAY_DIT_S3_URL_WAIT_S each) have threads of their own
        # too, one per request this replica takes at once: they never hold a store or a read.
        self._url_waits = ThreadPoolExecutor(max_workers=URL_WAIT_THREADS, thread_name_prefix="sink-url")
        self._stats_task: asyncio.Task | None = None

    async def _stats_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self._record_stats(self.sink.stats())
            await asyncio.sleep(STATS_INTERVAL_S)

    @staticmethod
    def _record_stats(stats: dict[str, Any]) -> None:
        metrics.sink_queue_depth().set(float(stats.get("pending", 0) or 0))
        metrics.sink_spool_bytes().set(float(stats.get("spool_bytes", 0) or 0))

    async def store(
        self,
        result: GenerationResult,
        output_format: str | None = None,
        include_data: bool = False,
        wait_url: bool = False,
    ) -> StoreReply:
        """Store every output of ``result``: the answer is the acknowledgement (spooled, or in the
        local store). The ingress asks for cloud URLs in a second call (``wait_urls``), so this
        replica dying during that wait cannot fail a stored request; ``wait_url`` (wait here,
        bounded) is for callers that want one call."""
        loop = asyncio.get_running_loop()
        if self._stats_task is None:
            self._stats_task = loop.create_task(self._stats_loop())
        started = time.perf_counter()
        wait_s = self.sink.settings.url_wait_s if wait_url else 0.0
        future = loop.run_in_executor(
            self._executor,
            lambda: self.sink.store(result, output_format, include_data=include_data, wait_url_s=wait_s),
        )
        try:
            outputs = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Frames that finished denoising are never dropped: finish spooling, then give up.
            with contextlib.suppress(Exception):
                await future
            raise
        except ValueError as exc:
            raise InvalidRequest(str(exc), "output_format") from None
        timings = dataclasses.replace(  # the sink's own fields
            result.timings,
            encode_s=sum(o.encode_s for o in outputs),
            spool_s=sum(o.spool_s for o in outputs),
            store_s=time.perf_counter() - started,
        )
        url_wait_s = self.sink.settings.url_wait_s if self.sink.s3_enabled else 0.0
        return StoreReply(outputs=outputs, meta=ResultMeta.of(result, timings), url_wait_s=url_wait_s)

    async def wait_urls(self, keys: list[str], timeout_s: float) -> list[str | None]:
        """The cloud URL of each key once S3 confirmed it, waiting at most ``timeout_s`` in all;
        None for a key not uploaded by then (the caller answers with its content URL). Any replica
        can answer for any key: the spool on the node is the truth, else S3 is asked."""
        deadline = time.monotonic() + max(0.0, timeout_s)

        def wait_all() -> list[str | None]:
            return [self.sink.wait_url(key, max(0.0, deadline - time.monotonic())) for key in keys]

        return await asyncio.get_running_loop().run_in_executor(self._url_waits, wait_all)

    async def content(
        self, request_id: str, index: int = 0, key: str | None = None
    ) -> tuple[bytes, str] | None:
        """An output's bytes: from this node's spool, else from S3 (by ``key`` if given). Waits at
        most ``RAY_DIT_CONTENT_WAIT_S``; while every read thread is busy a read is refused at once
        (503), instead of queueing behind reads that a hanging S3 holds."""
        unavailable = StorageUnavailable(f"output {request_id}_{index} is not readable right now")
        if self._read_slots.locked():
            raise unavailable
        await self._read_slots.acquire()  # free: checked just above, nothing awaited since
        read = asyncio.get_running_loop().run_in_executor(
            self._reads, self.sink.content, request_id, index, key
        )
        read.add_done_callback(lambda _: self._read_slots.release())  # when the thread is free again
        try:
            return await asyncio.wait_for(asyncio.shield(read), self.sink.settings.content_wait_s)
        except ValueError:  # a key that does not belong to this request/index
            return None
        except Exception:  # StorageError (S3 could not be asked), or the wait ran out
            raise unavailable from None

    def is_full(self) -> bool:
        return self.sink.is_full()

    def space(self) -> tuple[int, int, bool]:
        """(bytes spooled, the cap, refusing?): what the ingress's admission budgets with."""
        return self.sink.space()

    def stats(self) -> dict[str, Any]:
        stats = self.sink.stats()
        self._record_stats(stats)
        return stats

    def check_health(self) -> None:
        if self.sink.closed:
            raise RuntimeError("frame sink is closed")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # AttributeError too: __init__ failed before the sink
            self.sink.close()
