"""One accepted generation: the DiT call and the sink call that stores its frames, run apart from
the HTTP request (or handle call) that asked for it.

Ray Serve cancels every handle call made inside a request when that request is cancelled (the
client disconnected). That is right for the denoise, but wrong for storing: an output that
finished denoising must still be stored. So the two calls run in a task started in an empty
``contextvars`` context, where Serve sees no parent request, and the ingress decides what to
cancel: it cancels only the DiT call (which stops at the next step). If the denoise had already
finished, the sink call goes on and the output is stored.

The sink's answer is the acknowledgement: every output is spooled (or in the local store). A
``url`` response then asks for the cloud URLs in a second, bounded call (:meth:`Generation.
add_urls`); whatever happens to that call (the sink replica died, none is available, the bound
ran out) leaves the URLs unset and the caller answers with its own content URL, which any sink
serves from the spool or, once uploaded, from S3. Before, the wait ran inside the store call, and
a sink replica that died during it failed requests whose outputs were safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ray_dit.api import GenerationRequest
from ray_dit.serve.compat import object_ref
from ray_dit.serve.types import StoreReply

logger = logging.getLogger("ray.serve")

#: Beyond the sink's own URL wait, what the second call may take to be routed and answered.
URL_CALL_GRACE_S = 2.0


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
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.dit = dit
        self.sink = sink
        self.request = request
        self.output_format = output_format
        self.include_data = include_data
        self.wait_url = wait_url
        self.job_id = job_id
        #: Called once with the bytes stored (0 if nothing was): releases admission's reservation.
        self.on_stored = on_stored
        self.dit_response: Any = None
        self.frames_ref: Any = None
        self.assigned = asyncio.Event()
        self.task: asyncio.Task | None = None
        #: Seconds from the DiT call to a replica accepting it: the wait in Serve's queue.
        self.routing_wait_s = 0.0
        #: Seconds spent asking for cloud URLs after the store acknowledged (``add_urls``).
        self.url_wait_s = 0.0

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
        except BaseException:
            self._stored(0)
            raise
        finally:
            self.assigned.set()
        # The sink call is routed now, while the DiT denoises, with the frames' ObjectRef as its
        # argument: Ray itself sends it on the moment the frames exist (inlined into the call
        # when small; large ones the sink fetches from the object store, never through this
        # process). Passing the DeploymentResponse instead would make Serve wait for the frames
        # here, in Python, and only then route (docs/serving.md measures the difference).
        stored = 0
        try:
            reply = await self.sink.store.remote(self.frames_ref, self.output_format, self.include_data)
            if self.on_stored is not None:
                stored = sum(out.num_bytes for out in reply.outputs)
            return reply
        finally:
            self._stored(stored)

    def _stored(self, nbytes: int) -> None:
        on_stored, self.on_stored = self.on_stored, None
        if on_stored is not None:
            on_stored(nbytes)

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

    async def add_urls(self, reply: StoreReply) -> StoreReply:
        """Fill ``reply``'s cloud URLs (when this generation wants them: ``wait_url``), waiting at
        most the sink's ``url_wait_s`` plus a grace. Never fails for want of a URL: an output
        without one is answered with the server's content URL. Returns ``reply``."""
        pending = [out for out in reply.outputs if out.url is None and out.storage == "s3"]
        if not self.wait_url or not pending or reply.url_wait_s <= 0:
            return reply
        started = time.perf_counter()
        response = self.sink.wait_urls.remote([out.key for out in pending], reply.url_wait_s)
        try:
            urls = await asyncio.wait_for(_result(response), reply.url_wait_s + URL_CALL_GRACE_S)
        except asyncio.CancelledError:
            _cancel(response)
            raise
        except Exception as exc:  # the outputs are spooled: the content URL serves them
            _cancel(response)
            logger.warning(
                "%s: no cloud URL from the sink (%s); answering with the content URL",
                self.request.request_id,
                type(exc).__name__,
            )
            urls = [None] * len(pending)
        finally:
            self.url_wait_s = time.perf_counter() - started
        for out, url in zip(pending, urls, strict=False):
            out.url = url
        return reply

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


async def _result(response: Any) -> Any:
    """Await a handle call as a coroutine (``asyncio.wait_for`` needs one to bound it)."""
    return await response


def _cancel(response: Any) -> None:
    with contextlib.suppress(Exception):  # already finished, or its replica is gone
        response.cancel()
