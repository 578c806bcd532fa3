"""Admission: refuse work the server cannot take, without ever waiting to find out.

A full DiT queue is Serve's own ``BackPressureError`` (raised while a request is being assigned,
answered 503 by :func:`ray_dit.serve.errors.to_api_error`). A full spool is asked of the frame
sink in the background, at most every ``interval_s``, and read from memory on the request path.
"""

from __future__ import annotations

import asyncio
import time

from ray.serve.handle import DeploymentHandle

from ray_dit.serve.errors import busy
from ray_dit.serve.generation import start_outside_request

SPOOL_CHECK_S = 0.5


class SpoolWatch:
    """The sink's ``is_full``, as last heard (a failed check counts as not full: the sink's own
    answer, or the next check, decides)."""

    def __init__(self, sink: DeploymentHandle, retry_after_s: int, interval_s: float = SPOOL_CHECK_S) -> None:
        self.sink = sink
        self.retry_after_s = retry_after_s
        self.interval_s = interval_s
        self._full = False
        self._checked_at = 0.0
        self._check: asyncio.Task | None = None

    def admit(self) -> None:
        """Raise a 503 with Retry-After while the spool is full; start a fresh check when due."""
        now = time.monotonic()
        idle = self._check is None or self._check.done()
        if idle and now - self._checked_at > self.interval_s:
            self._checked_at = now
            self._check = start_outside_request(self._refresh())
        if self._full:
            raise busy("the output spool is full; retry later", "spool_full", self.retry_after_s)

    async def _refresh(self) -> None:
        try:
            self._full = bool(await self.sink.is_full.remote())
        except Exception:
            self._full = False
