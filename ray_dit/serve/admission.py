"""Admission: refuse work the server cannot take, and tell the refused client when to come back.

A full DiT queue is Serve's own ``BackPressureError`` (raised while a request is being assigned,
answered 503 by :func:`ray_dit.serve.errors.to_api_error`). The spool's room is a budget of
bytes: :class:`SpoolWatch` reserves each admitted request's estimated output bytes before its
denoise starts and releases them when its outputs are stored, so concurrent requests can not
all squeeze past a nearly full spool (the cap was overshot 2.5x that way). The sink's numbers
are fetched in the background at most every ``interval_s``; a refusal is only ever made on a
fresh answer, so the first request after the spool drained is admitted. ``Retry-After`` comes
from :class:`Backlog`: the queue ahead of the client times the measured time per request,
spread with jitter, so that a burst's refused clients do not all return in the same instant
(the openai SDKs wait exactly what the server says, then retry at most twice).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from ray_dit.api import GenerationRequest
from ray_dit.serve.errors import RetryAfter, busy
from ray_dit.serve.generation import start_outside_request

SPOOL_CHECK_S = 0.5
FRESH_CHECK_WAIT_S = 2.0  # how long a request that might be refused waits for a fresh answer
OUTPUT_OVERHEAD = 4096  # spool record, manifest row reservation and lock of one output
UNKNOWN_SIDE = 1024  # a size the model decides: estimate as 1024x1024
RATIO_MARGIN = 1.25


@dataclass(frozen=True)
class SpoolSpace:
    """The sink's spool as last heard: bytes held, the cap, and whether it refuses (full cap or
    full disk)."""

    used_bytes: int
    max_bytes: int
    full: bool


class Reservation:
    """An admitted request's share of the spool, held until its outputs are stored."""

    def __init__(self, watch: SpoolWatch | None, nbytes: int, raw: int, kind: str) -> None:
        self._watch, self.nbytes, self.raw, self.kind = watch, nbytes, raw, kind

    def release(self, stored_bytes: int = 0) -> None:
        """The outputs are stored (``stored_bytes`` of them) or will never be: free the share."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch._released(self, stored_bytes)


class SpoolWatch:
    """A per-ingress ledger of the spool's room. Each ingress replica keeps its own, so with k
    replicas the cap can be overshot by at most what k-1 others admitted in one check interval."""

    def __init__(
        self, sink: DeploymentHandle, retry_after: RetryAfter, interval_s: float = SPOOL_CHECK_S
    ) -> None:
        self.sink = sink
        self.retry_after = retry_after
        self.interval_s = interval_s
        self.space: SpoolSpace | None = None
        self.reserved = 0  # bytes admitted here and not stored yet
        self._stored: collections.deque[tuple[float, int]] = collections.deque()  # since the last check
        self._ratios: dict[str, collections.deque[float]] = {}  # stored bytes per raw byte, by kind
        self._checked_at = 0.0
        self._check: asyncio.Task | None = None

    def estimate(self, request: GenerationRequest) -> tuple[int, int, str]:
        """(bytes to reserve, raw frame bytes, kind) of a request's outputs: the raw size times
        the highest compression ratio seen lately for its kind and format (raw until one was)."""
        frames = request.num_frames or 1
        kind = f"{'video' if frames > 1 else 'image'}/{request.output_format or 'default'}"
        raw = (request.width or UNKNOWN_SIDE) * (request.height or UNKNOWN_SIDE) * 3 * frames * request.n
        seen = self._ratios.get(kind)
        ratio = min(1.0, max(seen) * RATIO_MARGIN) if seen else 1.0
        return int(raw * ratio) + OUTPUT_OVERHEAD * request.n, raw, kind

    async def admit(self, request: GenerationRequest) -> Reservation:
        """Reserve the request's bytes, or raise a 503 ``spool_full`` with Retry-After. Never
        waits while there is room; asks the sink afresh before it refuses."""
        nbytes, raw, kind = self.estimate(request)
        self._refresh_if_due()
        if self.space is None or not self._fits(nbytes):  # never heard, or might refuse
            await self._fresh_check()
            if not self._fits(nbytes):
                raise busy("the output spool is full; retry later", "spool_full", self.retry_after(None))
        self.reserved += nbytes
        return Reservation(self, nbytes, raw, kind)

    def _fits(self, nbytes: int) -> bool:
        space = self.space
        if space is None:
            return True  # the sink could not be asked: its own answer (SpoolFull) decides
        if space.full:
            return False
        held = space.used_bytes + sum(b for _, b in self._stored) + self.reserved
        return held == 0 or held + nbytes <= space.max_bytes  # empty: even an outsized request

    def _released(self, reservation: Reservation, stored_bytes: int) -> None:
        self.reserved = max(0, self.reserved - reservation.nbytes)
        if stored_bytes > 0:
            self._stored.append((time.monotonic(), stored_bytes))  # counted until the sink's are
            ratios = self._ratios.setdefault(reservation.kind, collections.deque(maxlen=32))
            ratios.append(stored_bytes / max(1, reservation.raw))

    def _refresh_if_due(self) -> None:
        idle = self._check is None or self._check.done()
        if idle and time.monotonic() - self._checked_at > self.interval_s:
            self._checked_at = time.monotonic()
            self._check = start_outside_request(self._refresh())

    async def _fresh_check(self) -> None:
        """Wait (briefly) for an answer asked for after this moment."""
        if self._check is not None and not self._check.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._check), FRESH_CHECK_WAIT_S)
        self._checked_at = time.monotonic()
        self._check = start_outside_request(self._refresh())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._check), FRESH_CHECK_WAIT_S)

    async def _refresh(self) -> None:
        asked = time.monotonic()
        try:
            used, cap, full = await self.sink.space.remote()
        except Exception:
            return  # keep the last answer; the sink's own refusal (SpoolFull) still holds
        self.space = SpoolSpace(int(used), int(cap), bool(full))
        while self._stored and self._stored[0][0] < asked:  # the sink counts these now
            self._stored.popleft()


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
