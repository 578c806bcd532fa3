"""Admission: refuse work the server cannot take, without ever waiting to find out, and tell the
refused client when to come back.

A full DiT queue is Serve's own ``BackPressureError`` (raised while a request is being assigned,
answered 503 by :func:`ray_dit.serve.errors.to_api_error`). A full spool is asked of the frame
sink in the background, at most every ``interval_s``, and read from memory on the request path.
``Retry-After`` comes from :class:`Backlog`: the queue ahead of the client times the measured
time per request, spread with jitter, so that a burst's refused clients do not all return in the
same instant (the openai SDKs wait exactly what the server says, then retry at most twice).
"""

from __future__ import annotations

import asyncio
import random
import time

from ray.serve.handle import DeploymentHandle

from ray_dit.serve.errors import RetryAfter, busy
from ray_dit.serve.generation import start_outside_request

SPOOL_CHECK_S = 0.5


class SpoolWatch:
    """The sink's ``is_full``, as last heard (a failed check counts as not full: the sink's own
    answer, or the next check, decides)."""

    def __init__(
        self, sink: DeploymentHandle, retry_after: RetryAfter, interval_s: float = SPOOL_CHECK_S
    ) -> None:
        self.sink = sink
        self.retry_after = retry_after
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
            raise busy("the output spool is full; retry later", "spool_full", self.retry_after(None))

    async def _refresh(self) -> None:
        try:
            self._full = bool(await self.sink.is_full.remote())
        except Exception:
            self._full = False


class Backlog:
    """How long the queue ahead of a refused client takes to drain, from measured request times."""

    def __init__(self, floor_s: float, dit_replicas: int = 1, smoothing: float = 0.2) -> None:
        self.floor_s = floor_s
        self.dit_replicas = max(1, dit_replicas)
        self.smoothing = smoothing
        self.request_s: float | None = None  # moving average of a DiT's occupancy per request
        self._rng = random.Random()

    def observe(self, replica_s: float) -> None:
        """A request held a DiT replica for ``replica_s`` seconds."""
        if replica_s > 0:
            old = self.request_s
            self.request_s = replica_s if old is None else old + self.smoothing * (replica_s - old)

    def retry_after_s(self, queued: int | None = None) -> float:
        """Seconds a refused client should wait, times a jitter in [1, 2) that spreads the returns:
        the drain time of the ``queued`` requests ahead once a request was measured, else (and
        for what is not a queue, like a full spool) ``floor_s``."""
        if queued is None or self.request_s is None:
            base = self.floor_s
        else:
            base = max((queued + 1) * self.request_s / self.dit_replicas, 0.1)
        return base * (1 + self._rng.random())
