"""Circuit breaker of the upload loop. Each failed upload backs off on its own, but with many
entries waiting their retries still hammer an S3 that is down, burning the CPU the node's GPU
replica needs. After ``TRIP_AFTER`` failures in a row (any entries) the breaker trips: one probe
at a time, at most ``PROBE_MAX_S`` apart (one small request every two seconds costs S3 and the
node nothing, and the end of an outage is seen that soon). Any answer from S3 (a data or
manifest PUT, a HEAD, a read) closes it at once, and the uploads waiting on backoff go out.
"""

from __future__ import annotations

import logging
import random
import threading
import time

log = logging.getLogger(__name__)

TRIP_AFTER = 3
PROBE_MAX_S = 2.0  # the longest pause between probes while S3 looks unreachable


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(max_s, base_s * 2**(attempt-1))."""
    ceiling = min(max_s, base_s * (2 ** min(max(attempt - 1, 0), 30)))
    return rng.uniform(ceiling / 2, ceiling)


class Breaker:
    """Failure streak, pause and concurrency limit of one upload loop. Thread-safe."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._streak = 0  # failed attempts since the last success
        self._paused_until = 0.0  # monotonic; while tripped nothing is tried before it

    @property
    def tripped(self) -> bool:
        """True while S3 looks unreachable."""
        return self._streak >= TRIP_AFTER

    def delay(self, attempt: int) -> float:
        """The backoff before retry number ``attempt`` of one upload."""
        return backoff_delay(attempt, self.base_s, self.max_s, self._rng)

    def allowed(self, workers: int, now: float) -> tuple[int, float]:
        """(uploads that may run at once, monotonic time the pause ends): 0 while paused."""
        with self._lock:
            if now < self._paused_until:
                return 0, self._paused_until
            return (1 if self.tripped else workers), now

    def failed(self) -> None:
        with self._lock:
            self._streak += 1
            over = self._streak - TRIP_AFTER + 1
            if over > 0:
                self._paused_until = time.monotonic() + min(self.delay(over), PROBE_MAX_S)
        if over == 1:
            log.warning("S3 looks unreachable: retrying with one probe at a time")

    def succeeded(self) -> bool:
        """S3 answered; True if the breaker was tripped (then the uploads backing off failed for
        S3's sake, not their own, and may go now)."""
        with self._lock:
            was_tripped = self.tripped
            self._streak, self._paused_until = 0, 0.0
        if was_tripped:
            log.warning("S3 reachable again: draining the spool")
        return was_tripped
