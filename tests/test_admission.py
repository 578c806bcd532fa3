"""The spool budget of admission (ray_dit.serve.admission.SpoolWatch), against a stand-in for the
sink's handle that answers ``space()`` like the real deployment (bytes held, cap, refusing?).
Through Serve, tests/test_serve_spool_limits.py checks the same rules end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ray_dit.api import GenerationRequest
from ray_dit.serve.admission import OUTPUT_OVERHEAD, SpoolWatch
from ray_dit.serve.errors import ApiError


class _Method:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0

    def remote(self) -> Any:
        self.calls += 1

        async def reply() -> Any:
            return self.answer() if callable(self.answer) else self.answer

        return reply()


class _Sink:
    """Answers ``space.remote()`` with (used, cap, full) from the test's mutable state."""

    def __init__(self, used: int, cap: int, full: bool = False) -> None:
        self.used, self.cap, self.full = used, cap, full
        self.space = _Method(lambda: (self.used, self.cap, self.full))


def _request(size: int = 64, n: int = 1, frames: int | None = None) -> GenerationRequest:
    return GenerationRequest(prompt="x", width=size, height=size, n=n, num_frames=frames)


def _watch(sink: _Sink) -> SpoolWatch:
    return SpoolWatch(sink, lambda queued: 1.5, interval_s=3600)  # checks only when asked


def test_the_estimate_starts_at_the_raw_size_and_learns_the_compression() -> None:
    watch = _watch(_Sink(0, 10**9))
    raw = 64 * 64 * 3
    assert watch.estimate(_request())[0] == raw + OUTPUT_OVERHEAD
    assert watch.estimate(_request(n=3))[0] == 3 * (raw + OUTPUT_OVERHEAD)

    async def run() -> None:
        ticket = await watch.admit(_request())
        ticket.release(stored_bytes=raw // 8)  # a PNG an eighth of the raw size

    asyncio.run(run())
    assert watch.estimate(_request())[0] == int(raw / 8 * 1.25) + OUTPUT_OVERHEAD
    assert watch.estimate(_request(frames=9))[0] == 9 * raw + OUTPUT_OVERHEAD  # videos learn apart


def test_concurrent_requests_share_the_budget_and_a_refusal_is_made_on_a_fresh_answer() -> None:
    sink = _Sink(used=0, cap=40_000)
    watch = _watch(sink)
    per = watch.estimate(_request())[0]  # 16384

    async def run() -> None:
        first = await watch.admit(_request())
        second = await watch.admit(_request())
        assert watch.reserved == 2 * per
        with pytest.raises(ApiError) as refused:
            await watch.admit(_request())  # 3 x 16 KiB > 40 kB
        err = refused.value
        assert (err.status, err.code, err.headers["Retry-After"]) == (503, "spool_full", "2")
        asked = sink.space.calls
        first.release(stored_bytes=1_000)
        second.release(stored_bytes=1_000)
        assert watch.reserved == 0
        sink.used = 2_000
        third = await watch.admit(_request())  # room again
        assert sink.space.calls >= asked
        third.release()

    asyncio.run(run())


def test_a_stale_full_answer_never_refuses_once_the_spool_drained() -> None:
    sink = _Sink(used=50_000, cap=40_000, full=True)
    watch = _watch(sink)

    async def run() -> None:
        with pytest.raises(ApiError):
            await watch.admit(_request())
        assert watch.space is not None and watch.space.full
        sink.used, sink.full = 0, False  # the uploads drained it; the cached answer still says full
        ticket = await watch.admit(_request())
        ticket.release()

    asyncio.run(run())


def test_an_empty_spool_takes_a_request_larger_than_the_cap_and_a_full_disk_refuses() -> None:
    sink = _Sink(used=0, cap=1_000)
    watch = _watch(sink)

    async def run() -> None:
        await watch._fresh_check()
        big = await watch.admit(_request(size=256))  # 196 kB > 1 kB cap: alone, it may go
        with pytest.raises(ApiError):
            await watch.admit(_request())
        big.release(stored_bytes=500)
        sink.full = True  # the disk is full although the cap is not reached
        sink.used = 0
        with pytest.raises(ApiError):
            await watch.admit(_request())

    asyncio.run(run())
