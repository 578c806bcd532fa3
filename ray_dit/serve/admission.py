"""Admission: refuse work the server cannot take, and tell the refused client when to come back.

Work is counted in *cost* (:mod:`ray_dit.serve.cost`: the model's default request is 1.0, a
129-frame video many). :class:`Backlog` is each ingress replica's ledger of the cost it admitted
and has not finished, queued (not yet accepted by a DiT replica) or running: a request that would
push the queued cost past ``max_queued_cost`` is refused (503 ``queue_full``), each request's cost
is released when it ends in any way (:class:`CostTicket`), and the ledger is what the autoscaling
policy and the ``ray_dit_queued_cost`` gauge read. Serve's own ``max_queued_requests`` stays as the
hard backstop: its ``BackPressureError`` is answered 503 by
:func:`ray_dit.serve.errors.to_api_error`.

The spool's room is a budget of bytes: :class:`SpoolWatch` reserves each admitted request's
estimated output bytes before its denoise starts and releases them when its outputs are stored,
so concurrent requests can not all squeeze past a nearly full spool (the cap was overshot 2.5x
that way). The sink's numbers are fetched in the background at most every ``interval_s``; a
refusal is only ever made on a fresh answer, so the first request after the spool drained is
admitted. ``Retry-After`` comes from :class:`Backlog`: the cost ahead of the client times the
measured seconds per unit of cost, spread with jitter, so that a burst's refused clients do not
all return in the same instant (the openai SDKs wait exactly what the server says, then retry at
most twice).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from ray_dit.api import GenerationRequest
from ray_dit.serve.autoscaling import QUEUED_COST, RUNNING_COST
from ray_dit.serve.errors import RetryAfter, busy
from ray_dit.serve.generation import Generation, start_outside_request
from ray_dit.serve.types import StoreReply

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


def occupancy_s(reply: StoreReply) -> float:
    """Seconds of DiT replica time that were this request's: its pipeline call's time, shared
    with its batch-mates by outputs (a batched request's stay in the replica includes its
    batch-mates' work and the wait for company, and would make every unit look slow)."""
    meta = reply.meta
    outputs = max(1, len(reply.outputs))
    return meta.timings.total_s * outputs / max(outputs, meta.batch_size)


class _Rate:
    """Seconds per unit as exponentially weighted sums (each sample weighted by its units)."""

    def __init__(self, smoothing: float) -> None:
        self.keep = 1 - smoothing
        self.seconds = 0.0
        self.units = 0.0

    def add(self, seconds: float, units: float) -> None:
        if seconds >= 0 and units > 0:
            self.seconds = self.keep * self.seconds + seconds
            self.units = self.keep * self.units + units

    @property
    def value(self) -> float | None:
        return self.seconds / self.units if self.units > 0 and self.seconds > 0 else None


class CostTicket:
    """An admitted request's cost in its ingress's ledger: *queued* until a DiT replica accepts
    the request, then *running*, then released when the request ends in any way."""

    def __init__(self, backlog: Backlog, cost: float) -> None:
        self.cost = cost
        self.state = "queued"
        self._backlog: Backlog | None = backlog
        self._watch: asyncio.Task | None = None

    def follow(self, generation: Generation) -> None:
        """Track a started generation: running once a replica accepted it; when its task ends
        (stored, failed, refused, cancelled, even before it ran) the cost is released and a
        success's replica time is measured. Call right after ``generation.start()``."""
        task = generation.task
        assert task is not None
        task.add_done_callback(self._ended)
        if not task.done():
            self._watch = start_outside_request(self._until_accepted(generation, task))

    async def _until_accepted(self, generation: Generation, task: asyncio.Task) -> None:
        waiter = asyncio.ensure_future(generation.assigned.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if generation.frames_ref is not None and self._backlog is not None:
            self._backlog._move(self, "running")

    def _ended(self, task: asyncio.Task) -> None:
        backlog = self._backlog
        if backlog is not None and not task.cancelled() and task.exception() is None:
            backlog.observe(occupancy_s(task.result()), self.cost)
        self.release()

    def release(self) -> None:
        """The request ended (or never started): free its cost. Idempotent."""
        backlog, self._backlog = self._backlog, None
        if backlog is not None:
            backlog._move(self, "released")


class Backlog:
    """The ingress's ledger of admitted work, in cost (:mod:`ray_dit.serve.cost`: the model's
    default request is 1.0), and how long it takes to drain, from measured replica times.

    ``max_queued_cost`` bounds the cost *queued* (admitted, not yet accepted by a DiT replica),
    like Serve's ``max_queued_requests`` bounds queued requests: what runs is not counted, so the
    limit does not shrink the fleet's throughput as the DiT deployment scales out. A request that
    would push the queued cost past it is refused, unless nothing is queued: a request larger than
    the limit on its own still gets its turn. ``None``: no cost limit (Serve's count still holds).
    """

    def __init__(
        self,
        floor_s: float,
        dit_replicas: int = 1,
        max_queued_cost: float | None = None,
        smoothing: float = 0.2,
        on_change: Callable[[float, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor_s = floor_s
        self.dit_replicas = max(1, dit_replicas)
        self.max_queued_cost = max_queued_cost
        self.smoothing = smoothing
        self.on_change = on_change  # (queued cost, running cost) after every change: the gauges
        self.queued_cost = 0.0
        self.running_cost = 0.0
        self._held: dict[str, set[CostTicket]] = {"queued": set(), "running": set()}
        self._replica = _Rate(smoothing)  # replica seconds over cost
        self._drain = _Rate(smoothing)  # wall seconds between completions while busy, over cost
        self._clock = clock
        self._busy_since: float | None = None  # the last completion, while work stayed held
        self._rng = random.Random()

    @property
    def unit_s(self) -> float | None:
        """Measured seconds of a DiT replica per unit of cost (None until a request finished)."""
        return self._replica.value

    @property
    def drain_unit_s(self) -> float | None:
        """Measured wall seconds per unit of cost at which this ingress's work drained while it
        had work waiting: what a refused client really waits for. It includes what the replica
        time leaves out (handing the next request to a replica, storing, the other replicas of
        the app sharing the machine): on a CPU with a tiny model the queue drained 2-3x slower
        than the replica times said, and Retry-After sent clients back too early."""
        return self._drain.value

    def admit(self, cost: float) -> CostTicket:
        """Hold ``cost`` as queued, or raise a 503 ``queue_full`` with Retry-After."""
        limit = self.max_queued_cost
        if limit is not None and self._held["queued"] and self.queued_cost + cost > limit:
            raise busy(
                f"the queue is full ({self.queued_cost:.3g} of {limit:g} default requests of work "
                f"waiting; this request counts {cost:.3g}); retry later",
                "queue_full",
                self.retry_after_s(len(self._held["queued"])),
            )
        ticket = CostTicket(self, cost)
        self._move(ticket, "queued")
        return ticket

    def _move(self, ticket: CostTicket, state: str) -> None:
        finished = state == "released" and ticket in self._held["running"]
        for held in self._held.values():
            held.discard(ticket)
        ticket.state = state
        if state in self._held:
            self._held[state].add(ticket)
        self.queued_cost = math.fsum(t.cost for t in self._held["queued"])
        self.running_cost = math.fsum(t.cost for t in self._held["running"])
        if finished:
            self._completed(ticket.cost)
        if self.on_change is not None:
            self.on_change(self.queued_cost, self.running_cost)

    def observe(self, replica_s: float, cost: float = 1.0) -> None:
        """A request of ``cost`` held a DiT replica for ``replica_s`` seconds. Weighted by cost,
        so a tiny request's fixed overhead does not make every unit look slow."""
        if replica_s > 0:
            self._replica.add(replica_s, cost)

    def _completed(self, cost: float) -> None:
        """A running request ended: if work was held since the previous completion, the time
        between the two is what draining ``cost`` took (batch-mates ending together add cost in
        no time, so a batch counts as its outputs)."""
        now = self._clock()
        if self._busy_since is not None:
            self._drain.add(now - self._busy_since, cost)
        self._busy_since = now if self._held["queued"] or self._held["running"] else None

    def stats(self) -> dict[str, float]:
        """What the autoscaling policy reads (``Ingress.record_autoscaling_stats``)."""
        return {QUEUED_COST: self.queued_cost, RUNNING_COST: self.running_cost}

    def retry_after_s(self, queued: int | None = None) -> float:
        """Seconds a refused client should wait, times a jitter in [1, 2) that spreads the returns.
        For a full queue (``queued`` given: requests waiting) once a request was measured, the
        time the work ahead takes to drain: the queued and running cost times the seconds per
        unit, over the DiT replicas, or times the pace the work was seen to drain at if that is
        slower; else (and for what is not a queue, like a full spool)
        ``floor_s``."""
        unit_s = self.unit_s
        if queued is None or unit_s is None:
            base = self.floor_s
        else:
            ahead = self.queued_cost + self.running_cost or float(queued + 1)
            base = max(ahead * unit_s / self.dit_replicas, 0.1)
            drained = self.drain_unit_s  # the whole fleet's pace as this ingress saw it
            if drained is not None:
                base = max(base, ahead * drained)
        return base * (1 + self._rng.random())
