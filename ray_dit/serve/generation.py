"""One accepted generation: the DiT call and the sink call that stores its frames, run apart from
the HTTP request (or handle call) that asked for it.

Ray Serve cancels every handle call made inside a request when that request is cancelled (the
client disconnected). That is right for the denoise, but wrong for storing: an output that
finished denoising must still be stored. So the two calls run in a task started in an empty
``contextvars`` context, where Serve sees no parent request, and the ingress decides what to
cancel: it cancels only the DiT call (which stops at the next step). If the denoise had already
finished, the sink call goes on and the output is stored.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine
from typing import Any

from ray_dit.api import GenerationRequest
from ray_dit.serve.compat import object_ref
from ray_dit.serve.types import StoreReply


def start_outside_request(coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Start ``coro`` as a task outside the current Serve request context (Serve cancels every
    handle call made inside a request when that request is cancelled)."""
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, coro)


class Generation:
    """Compose ``dit.generate`` and ``sink.store`` so frames go replica-to-sink directly."""

    def __init__(
        self,
        dit: Any,
        sink: Any,
        request: GenerationRequest,
        *,
        output_format: str | None,
        include_data: bool = False,
        wait_url: bool = False,
        job_id: str | None = None,
    ) -> None:
        self.dit = dit
        self.sink = sink
        self.request = request
        self.output_format = output_format
        self.include_data = include_data
        self.wait_url = wait_url
        self.job_id = job_id
        self.dit_response: Any = None
        self.frames_ref: Any = None
        self.assigned = asyncio.Event()
        self.task: asyncio.Task | None = None
        #: Seconds from the DiT call to a replica accepting it: the wait in Serve's queue.
        self.routing_wait_s = 0.0

    def start(self) -> asyncio.Task:
        self.task = start_outside_request(self._run())
        return self.task

    async def _run(self) -> StoreReply:
        try:
            started = time.perf_counter()
            self.dit_response = self.dit.generate.remote(self.request, self.job_id)
            # Waits until a DiT replica accepted the request; a full queue raises
            # BackPressureError here, before anything else happens.
            self.frames_ref = await object_ref(self.dit_response)
            self.routing_wait_s = time.perf_counter() - started
        finally:
            self.assigned.set()
        # The sink call is routed now, while the DiT denoises, with the frames' ObjectRef as its
        # argument: Ray itself sends it on the moment the frames exist (inlined into the call
        # when small; large ones the sink fetches from the object store, never through this
        # process). Passing the DeploymentResponse instead would make Serve wait for the frames
        # here, in Python, and only then route (docs/serving.md measures the difference).
        return await self.sink.store.remote(
            self.frames_ref, self.output_format, self.include_data, self.wait_url
        )

    def cancel_denoise(self) -> None:
        """The caller is gone: stop the denoise (a no-op if it already finished)."""
        if self.dit_response is not None:
            self.dit_response.cancel()
        elif self.task is not None and not self.assigned.is_set():
            self.task.cancel()

    async def wait(self) -> StoreReply:
        """Await the result from a request handler; on cancellation stop the denoise only."""
        assert self.task is not None
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            self.cancel_denoise()
            raise

    async def admitted(self, timeout: float) -> BaseException | None:
        """Wait briefly for the DiT to accept or refuse; the refusal (if any) is returned."""
        assert self.task is not None
        waiter = asyncio.ensure_future(self.assigned.wait())
        await asyncio.wait({waiter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.task.done() and not self.task.cancelled():
            return self.task.exception()
        if self.assigned.is_set() and self.frames_ref is None:
            await asyncio.wait({self.task}, timeout=timeout)
            if self.task.done() and not self.task.cancelled():
                return self.task.exception()
        return None
