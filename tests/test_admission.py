"""Admission: the spool budget (``SpoolWatch``, against a stand-in for the sink's handle that
answers ``space()`` like the real deployment) and the cost ledger (``Backlog``: a request's cost,
the queue limit in cost, Retry-After, and the release of a real ``Generation``'s cost however it
ends, with stand-ins for the DiT and sink handles that inject each ending). Through Serve,
tests/test_serve_spool_limits.py and tests/test_serve_cost_admission.py check the same rules end
to end."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from ray.serve.exceptions import BackPressureError, RequestCancelledError

from ray_dit.api import GenerationRequest, Timings
from ray_dit.config import ServeLimits
from ray_dit.serve import job_runner
from ray_dit.serve.admission import OUTPUT_OVERHEAD, Backlog, CostTicket, SpoolWatch
from ray_dit.serve.cost import request_cost
from ray_dit.serve.errors import ApiError
from ray_dit.serve.generation import Generation
from ray_dit.serve.schemas import (
    ImageGenerationBody,
    VideoCreateBody,
    image_request,
    parse_body,
    video_request,
)
from ray_dit.serve.types import ModelInfo, ResultMeta, StoreReply


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


# -- cost: a request's work in default requests -------------------------------------------------

IMAGE_MODEL = ModelInfo(model="img", kind="image", width=64, height=64, steps=28)
VIDEO_MODEL = ModelInfo(
    model="vid", kind="video", width=832, height=480, steps=50, num_frames=81, fps=16, frame_step=4
)


def _image(**fields: Any) -> GenerationRequest:
    body = parse_body(ImageGenerationBody, {"prompt": "x", **fields})
    return image_request(body, "img_1", ServeLimits(), IMAGE_MODEL)


def _video(**fields: Any) -> GenerationRequest:
    body = parse_body(VideoCreateBody, {"prompt": "x", **fields})
    return video_request(body, "video_1", ServeLimits(), VIDEO_MODEL)


def test_the_models_default_request_costs_one_and_others_scale_with_steps_tokens_frames_and_n() -> None:
    """Requests as the edge builds them from HTTP bodies (the model's defaults fill the gaps)."""
    assert request_cost(_image(), IMAGE_MODEL) == 1.0
    assert request_cost(_image(size="128x128"), IMAGE_MODEL) == 4.0  # 4x the tokens
    assert request_cost(_image(num_inference_steps=7), IMAGE_MODEL) == 0.25
    assert request_cost(_image(n=3, size="128x64"), IMAGE_MODEL) == 6.0
    assert request_cost(_video(), VIDEO_MODEL) == 1.0
    # 129 frames are 33 latent frames against the default's 21 (81 frames): the VAE packs 4 in 1.
    assert request_cost(_video(num_frames=129), VIDEO_MODEL) == pytest.approx(33 / 21)
    assert request_cost(_video(num_frames=1), VIDEO_MODEL) == pytest.approx(1 / 21)
    hd = request_cost(_video(num_frames=129, size="1280x720"), VIDEO_MODEL)
    assert hd == pytest.approx(33 / 21 * (1280 * 720) / (832 * 480))
    assert request_cost(_video(seconds="8", fps=16), VIDEO_MODEL) == pytest.approx(33 / 21)  # 129 frames
    # Before the DiT described its model, requests are counted as before.
    assert request_cost(_request(size=256, n=2), None) == 2.0


# -- the queue limit counts cost ------------------------------------------------------------------


def test_a_big_request_counts_as_several_and_the_limit_counts_only_what_is_queued() -> None:
    backlog = Backlog(floor_s=2, max_queued_cost=6)
    big = backlog.admit(4)
    with pytest.raises(ApiError) as refused:
        backlog.admit(4)  # 4 + 4 > 6
    err = refused.value
    assert (err.status, err.code) == (503, "queue_full")
    assert 2 <= float(err.headers["retry-after-ms"]) / 1000 < 4  # nothing measured yet: the floor
    assert "6 default requests" in err.message and "counts 4" in err.message
    small = backlog.admit(1)  # 4 + 1 <= 6: a small request still fits
    assert backlog.queued_cost == 5
    backlog._move(big, "running")  # a DiT replica accepted it: it no longer waits
    assert (backlog.queued_cost, backlog.running_cost) == (1, 4)
    other = backlog.admit(4)  # 1 + 4 <= 6
    for ticket in (big, small, other):
        ticket.release()
        ticket.release()  # idempotent
    assert (backlog.queued_cost, backlog.running_cost) == (0, 0)


def test_a_request_larger_than_the_limit_goes_alone_and_only_when_nothing_is_queued() -> None:
    backlog = Backlog(floor_s=2, max_queued_cost=6)
    running = backlog.admit(1)
    backlog._move(running, "running")
    huge = backlog.admit(30)  # nothing queued (one runs): never starve a big request
    with pytest.raises(ApiError):
        backlog.admit(0.1)  # while it waits, the queue is full for everyone
    huge.release()
    backlog.admit(30).release()
    assert Backlog(floor_s=2).admit(10**6).cost == 10**6  # no cost limit: Serve's count decides


def test_retry_after_is_the_cost_ahead_times_the_measured_seconds_per_unit() -> None:
    reports: list[tuple[float, float]] = []
    backlog = Backlog(
        floor_s=2, dit_replicas=2, max_queued_cost=4, on_change=lambda q, r: reports.append((q, r))
    )
    backlog.observe(3.0, cost=1.5)  # 2 s per unit
    assert backlog.unit_s == 2.0
    running = backlog.admit(2)
    backlog._move(running, "running")
    queued = backlog.admit(4)
    assert reports[-1] == (4, 2)
    seconds = []
    for _ in range(50):
        with pytest.raises(ApiError) as refused:
            backlog.admit(1)
        seconds.append(int(refused.value.headers["retry-after-ms"]) / 1000)
    # (4 queued + 2 running) x 2 s / 2 replicas = 6 s, times a jitter in [1, 2)
    assert all(6 <= s < 12 for s in seconds) and len(set(seconds)) > 10
    # Serve's own backstop (a request count) is sized from the same ledger.
    assert 6 <= backlog.retry_after_s(queued=1) < 12
    running.release()
    queued.release()
    assert reports[-1] == (0, 0)
    assert 2 <= backlog.retry_after_s(None) < 4  # not a queue: the floor


def test_retry_after_follows_the_pace_the_queue_really_drained_at() -> None:
    """The replica says 0.05 s per request, but while work waited, requests ended only every
    0.2 s (handing over, storing, other replicas on the same cores): Retry-After must use the
    0.2 s the clients really wait for, or they come back while the queue is still full."""
    now = [0.0]
    backlog = Backlog(floor_s=2, max_queued_cost=4, clock=lambda: now[0])

    def end(ticket: CostTicket, after_s: float) -> None:
        backlog._move(ticket, "running")
        backlog.observe(0.05, cost=1)
        now[0] += after_s
        ticket.release()

    burst = [backlog.admit(1) for _ in range(4)]
    for ticket in burst:  # one every 0.2 s, the others held meanwhile
        end(ticket, 0.2)
    assert backlog.unit_s == pytest.approx(0.05)
    assert backlog.drain_unit_s == pytest.approx(0.2)
    running, queued = backlog.admit(1), backlog.admit(1)
    backlog._move(running, "running")
    # 2 ahead x 0.2 s (not 2 x 0.05 s), times a jitter in [1, 2)
    assert all(0.4 <= backlog.retry_after_s(queued=1) < 0.8 for _ in range(20))
    end(running, 100)  # the first to end after an idle spell: no interval to measure yet
    end(queued, 0.2)
    assert backlog.drain_unit_s == pytest.approx(0.2)  # the idle 100 s before it did not count
    unmeasured = Backlog(floor_s=2, clock=lambda: now[0])
    unmeasured.observe(0.05, cost=1)
    unmeasured._move(unmeasured.admit(1), "running")
    assert unmeasured.drain_unit_s is None and 0.05 <= unmeasured.retry_after_s(queued=0) < 0.2


def test_seconds_per_unit_are_weighted_by_cost() -> None:
    """A tiny request's fixed overhead (0.2 s for 0.05 units) must not make every unit look slow."""
    backlog = Backlog(floor_s=2)
    backlog.observe(2.0, cost=1.0)
    backlog.observe(0.2, cost=0.05)
    assert backlog.unit_s is not None and 2.0 < backlog.unit_s < 2.2


# -- release: however a generation ends, its cost is freed ---------------------------------------


class _DiTCall:
    """A stand-in for a DiT handle call: accepted at once, refused, or held until ``accept``."""

    def __init__(self, refuse: BaseException | None = None, hold: bool = False) -> None:
        self.refuse, self.accept = refuse, asyncio.Event()
        if not hold:
            self.accept.set()
        self.cancelled = False

    async def _to_object_ref(self) -> str:
        await self.accept.wait()
        if self.cancelled:
            raise RequestCancelledError("img_1")  # what Serve raises for a call cancelled in its queue
        if self.refuse is not None:
            raise self.refuse
        return "frames-ref"

    def cancel(self) -> None:
        self.cancelled = True
        self.accept.set()


class _Handle:
    """``handle.<method>.remote(...)`` for the stand-ins below."""

    def __init__(self, **methods: Any) -> None:
        for name, fn in methods.items():
            setattr(self, name, type("M", (), {"remote": staticmethod(fn)})())


def _stored(request: GenerationRequest, replica_s: float, batch_size: int = 1) -> StoreReply:
    """A store's reply: the engine's call took ``replica_s`` (the replica's stay as long), shared
    with batch-mates when ``batch_size`` > 1."""
    timings = Timings(total_s=replica_s, replica_s=replica_s)
    meta = ResultMeta(request.request_id, "image", 1, 28, 64, 64, 1, timings=timings, batch_size=batch_size)
    return StoreReply(outputs=[], meta=meta)


def test_a_batched_requests_replica_time_is_its_share_of_the_call():
    """A request that shared a 4-output call for 2 s held the replica 0.5 s: its stay (the
    call and the wait for company) would make each unit of cost look 4x slower."""
    from ray_dit.serve.admission import occupancy_s

    request = GenerationRequest(prompt="x")
    assert occupancy_s(_stored(request, 2.0)) == 2.0
    assert occupancy_s(_stored(request, 2.0, batch_size=4)) == 0.5


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _start(
    backlog: Backlog, dit_call: _DiTCall, store: Any, cost: float = 2.0
) -> tuple[Generation, CostTicket]:
    request = GenerationRequest(prompt="x", request_id="img_1", width=64, height=64)
    dit = _Handle(generate=lambda req, job_id: dit_call)
    generation = Generation(dit, _Handle(store=store), request, output_format="png")
    ticket = backlog.admit(cost)
    generation.start()
    ticket.follow(generation)
    return generation, ticket


def test_the_cost_runs_once_accepted_and_is_released_with_the_replica_time_measured() -> None:
    async def run() -> None:
        backlog = Backlog(floor_s=2)
        stored = asyncio.Event()

        async def store(ref: Any, fmt: Any, include: Any) -> StoreReply:
            assert ref == "frames-ref"
            await stored.wait()
            return _stored(generation.request, replica_s=3.0)

        dit_call = _DiTCall(hold=True)
        generation, ticket = _start(backlog, dit_call, store)
        await _settle()
        assert (backlog.queued_cost, backlog.running_cost, ticket.state) == (2, 0, "queued")
        dit_call.accept.set()
        await _settle()
        assert (backlog.queued_cost, backlog.running_cost, ticket.state) == (0, 2, "running")
        stored.set()
        await generation.wait()
        await _settle()
        assert (backlog.queued_cost, backlog.running_cost, ticket.state) == (0, 0, "released")
        assert backlog.unit_s == 1.5  # 3 s for 2 units

    asyncio.run(run())


@pytest.mark.parametrize("end", ["refused", "store_failed", "cancelled_queued", "cancelled_unstarted"])
def test_the_cost_is_released_however_the_generation_ends(end: str) -> None:
    async def run() -> None:
        backlog = Backlog(floor_s=2)

        async def store(ref: Any, fmt: Any, include: Any) -> StoreReply:
            raise RuntimeError("the sink died")

        refuse = BackPressureError(num_queued_requests=8, max_queued_requests=8) if end == "refused" else None
        dit_call = _DiTCall(refuse=refuse, hold=end.startswith("cancelled"))
        generation, ticket = _start(backlog, dit_call, store)
        if end == "cancelled_unstarted":
            generation.task.cancel()  # before its first step: its own finally never runs
        else:
            await _settle()
            if end == "cancelled_queued":
                generation.cancel_denoise()  # the client went away while it waited in the queue
        with contextlib.suppress(BaseException):
            await generation.task
        await _settle()
        assert (backlog.queued_cost, backlog.running_cost, ticket.state) == (0, 0, "released")
        assert backlog.unit_s is None  # nothing finished: nothing measured
        assert not asyncio.all_tasks() - {asyncio.current_task()}  # no watcher left behind

    asyncio.run(run())


def test_a_video_jobs_cost_is_released_when_the_job_ends() -> None:
    async def run() -> None:
        backlog = Backlog(floor_s=2)
        finished: dict[str, Any] = {}

        async def store(ref: Any, fmt: Any, include: Any) -> StoreReply:
            await asyncio.sleep(0.05)
            return _stored(generation.request, replica_s=1.0)

        async def touch(job_id: str) -> None:
            return None

        async def finish(job_id: str, fields: dict[str, Any]) -> None:
            finished.update(fields)

        generation, ticket = _start(backlog, _DiTCall(), store)
        assert backlog.queued_cost + backlog.running_cost == 2
        jobs = _Handle(touch=touch, finish=finish)
        await job_runner.run_to_end(generation, jobs, "video_1", 0.01, backlog)
        await _settle()
        assert finished["status"] == "completed"
        assert (backlog.queued_cost, backlog.running_cost, ticket.state) == (0, 0, "released")
        assert backlog.unit_s == 0.5

    asyncio.run(run())
