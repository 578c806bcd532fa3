"""Dynamic batching in the DiT replica: which waiting requests share the next pipeline call.

Ray Serve's ``@serve.batch`` keeps one queue and hands a method every request that arrived; DiT
requests can only share a call when they agree on size, steps, CFG and cache settings
(``engine/batch.py``), so the replica keeps its own queue of :class:`Member` s and forms batches
by key:

- The oldest waiting request always leads the next batch (FIFO across groups: no group starves,
  however many requests of another group keep arriving).
- Its batch-mates are the next requests with the same key, in arrival order, while the outputs
  fit in ``max_batch_size`` (a request with ``n`` outputs counts ``n``; one larger than the limit
  runs alone, never split).
- A batch that is not full waits for company until its leader has waited ``batch_wait_timeout_s``
  (0: only what queued while the replica was busy is batched, so a lone request never waits).

The queue is asyncio-only (the replica's event loop); the denoise itself runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ray_dit.api import GenerationRequest, GenerationResult


@dataclass(eq=False)
class Member:
    """One request waiting for, or taking part in, a pipeline call."""

    request: GenerationRequest
    key: Hashable | None  # None: runs alone
    future: asyncio.Future[GenerationResult]
    arrived: float = field(default_factory=time.perf_counter)
    #: Set when the caller went away; the batch stops only when every member's is set.
    cancel: threading.Event = field(default_factory=threading.Event)
    on_step: Callable[[int, int], None] | None = None
    started: bool = False
    #: Whether its call holds other requests too (set when the call is formed).
    shared: bool = False
    #: Steps its pipeline call has finished (written by the denoise thread).
    steps_done: int = 0

    @property
    def size(self) -> int:
        return self.request.n


class BatchQueue:
    """Waiting :class:`Member` s, in arrival order; :meth:`next_batch` forms the next call."""

    def __init__(self, max_batch_size: int = 1, batch_wait_timeout_s: float = 0.0) -> None:
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait_timeout_s = max(0.0, batch_wait_timeout_s)
        self._waiting: list[Member] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, member: Member) -> None:
        self._waiting.append(member)
        self._changed.set()

    def discard(self, member: Member) -> bool:
        """Take a member that has not started out of the queue; False if it was not waiting."""
        try:
            self._waiting.remove(member)
        except ValueError:
            return False
        self._changed.set()
        return True

    def _company(self, leader: Member) -> list[Member]:
        """The leader and the batch-mates that fit after it, in arrival order."""
        batch, outputs = [leader], leader.size
        if leader.key is None:
            return batch
        for member in self._waiting:
            if member is leader or member.key != leader.key:
                continue
            if outputs + member.size > self.max_batch_size:
                continue  # a smaller request further back may still fit
            batch.append(member)
            outputs += member.size
        return batch

    def _full(self, batch: list[Member]) -> bool:
        return sum(m.size for m in batch) >= self.max_batch_size or batch[0].key is None

    async def next_batch(self) -> list[Member]:
        """Wait for a request, then for company as configured; remove and return the batch."""
        while True:
            self._drop_cancelled()
            if self._waiting:
                leader = self._waiting[0]
                batch = self._company(leader)
                left = leader.arrived + self.batch_wait_timeout_s - time.perf_counter()
                if self._full(batch) or left <= 0:
                    for member in batch:
                        self._waiting.remove(member)
                        member.started, member.shared = True, len(batch) > 1
                    return batch
            else:
                left = None
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def _drop_cancelled(self) -> None:
        for member in [m for m in self._waiting if m.cancel.is_set()]:
            self._waiting.remove(member)
            if not member.future.done():
                member.future.cancel()
