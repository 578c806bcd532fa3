"""Dynamic batching (issue 17): which requests share a pipeline call, what a batched output is
worth against the same request alone, and what one request of a batch can do to the others.

The queue is tested on its own (deterministic and property-based), the engine on the real tiny
``demo:shapes`` pipeline, and the DiT replica's batch loop with a stand-in engine that records the
calls it gets (the fault injection no real pipeline produces on demand: a failing request).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replica_helpers import POISON, StandInEngine, stand_in_replica

from ray_dit.api import GenerationRequest, GenerationResult
from ray_dit.config import CacheDitSettings, DBCacheKnobs
from ray_dit.serve.batching import BatchQueue, Member


def _member(key: object, n: int = 1, name: str = "r", arrived: float | None = None) -> Member:
    loop = asyncio.get_running_loop()
    member = Member(GenerationRequest(prompt=name, n=n, request_id=name), key, loop.create_future())
    if arrived is not None:
        member.arrived = arrived
    return member


def _names(batch: list[Member]) -> list[str]:
    return [m.request.request_id for m in batch]


# -- the queue ---------------------------------------------------------------------------------


def test_compatible_requests_share_a_call_and_others_never_do():
    async def scenario() -> list[list[str]]:
        queue = BatchQueue(max_batch_size=8)
        for name, key in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A")]:
            queue.put(_member(key, name=name))
        return [_names(await queue.next_batch()), _names(await queue.next_batch())]

    assert asyncio.run(scenario()) == [["a1", "a2", "a3"], ["b1", "b2"]]


def test_the_oldest_request_leads_so_no_group_starves():
    async def scenario() -> list[str]:
        queue = BatchQueue(max_batch_size=2)
        queue.put(_member("B", name="b1"))
        for i in range(6):
            queue.put(_member("A", name=f"a{i}"))
        return [_names(await queue.next_batch())[0] for _ in range(4)]

    # b1 came first: it leads the first call, alone, even though A could fill every batch.
    assert asyncio.run(scenario()) == ["b1", "a0", "a2", "a4"]


def test_outputs_count_against_the_limit_and_a_big_request_runs_alone():
    async def scenario() -> list[list[str]]:
        queue = BatchQueue(max_batch_size=4)
        queue.put(_member("A", n=3, name="three"))
        queue.put(_member("A", n=2, name="two"))
        queue.put(_member("A", n=1, name="one"))
        queue.put(_member("A", n=9, name="nine"))
        return [_names(await queue.next_batch()) for _ in range(3)]

    assert asyncio.run(scenario()) == [["three", "one"], ["two"], ["nine"]]


def test_a_request_with_no_key_is_never_batched():
    async def scenario() -> list[list[str]]:
        queue = BatchQueue(max_batch_size=8)
        queue.put(_member(None, name="edit1"))
        queue.put(_member(None, name="edit2"))
        return [_names(await queue.next_batch()) for _ in range(2)]

    assert asyncio.run(scenario()) == [["edit1"], ["edit2"]]


def test_the_leader_waits_for_company_at_most_the_timeout():
    async def scenario() -> tuple[list[str], float, list[str], float]:
        queue = BatchQueue(max_batch_size=4, batch_wait_timeout_s=0.3)
        queue.put(_member("A", name="a1"))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.put, _member("A", name="a2"))
        t0 = time.perf_counter()
        first = _names(await queue.next_batch())
        waited = time.perf_counter() - t0
        for i in range(4):  # a full batch leaves at once
            queue.put(_member("B", name=f"b{i}"))
        t1 = time.perf_counter()
        second = _names(await queue.next_batch())
        return first, waited, second, time.perf_counter() - t1

    first, waited, second, full_wait = asyncio.run(scenario())
    assert first == ["a1", "a2"]
    assert waited >= 0.25  # it waited for more company until the timeout (no upper bound asserted)
    assert second == ["b0", "b1", "b2", "b3"]
    assert full_wait < waited


def test_with_no_wait_a_lone_request_leaves_at_once():
    async def scenario() -> list[str]:
        queue = BatchQueue(max_batch_size=8, batch_wait_timeout_s=0.0)
        queue.put(_member("A", name="alone"))
        return _names(await asyncio.wait_for(queue.next_batch(), 5))

    assert asyncio.run(scenario()) == ["alone"]


def test_a_request_cancelled_while_waiting_leaves_the_queue():
    async def scenario() -> tuple[list[str], bool, bool]:
        queue = BatchQueue(max_batch_size=8)
        gone, stays = _member("A", name="gone"), _member("A", name="stays")
        queue.put(gone)
        queue.put(stays)
        gone.cancel.set()
        batch = await queue.next_batch()
        return _names(batch), gone.future.cancelled(), queue.discard(gone)

    assert asyncio.run(scenario()) == (["stays"], True, False)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "C", None]), st.integers(1, 5)), min_size=1, max_size=25),
    st.integers(1, 8),
)
def test_batches_hold_every_request_once_and_respect_key_limit_and_order(requests, limit):
    async def scenario() -> list[list[Member]]:
        queue = BatchQueue(max_batch_size=limit)
        for i, (key, n) in enumerate(requests):
            queue.put(_member(key, n=n, name=f"r{i}", arrived=float(i)))
        batches = []
        while len(queue):
            batches.append(await queue.next_batch())
        return batches

    batches = asyncio.run(scenario())
    seen = [m.request.request_id for batch in batches for m in batch]
    assert sorted(seen) == sorted(f"r{i}" for i in range(len(requests)))
    leaders = [batch[0].arrived for batch in batches]
    assert leaders == sorted(leaders)  # each call is led by the oldest request still waiting
    for batch in batches:
        assert batch == sorted(batch, key=lambda m: m.arrived)
        if len(batch) > 1:
            assert batch[0].key is not None and all(m.key == batch[0].key for m in batch)
            assert sum(m.size for m in batch) <= limit


# -- the engine: one call for several requests ------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    from ray_dit.engine import Engine, EngineOptions

    engine = Engine(EngineOptions(model="demo:shapes", device="cpu"), cache_settings=CacheDitSettings())
    assert engine.batch_key(engine.resolve(REQUESTS[0])) is None  # nothing is batched before the probe
    assert engine.batchable()
    return engine


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


REQUESTS = [
    GenerationRequest(prompt="a red circle on a blue background", seed=3, n=2, request_id="r1"),
    GenerationRequest(prompt="a green square on a white background", seed=11, request_id="r2"),
    GenerationRequest(prompt="a yellow triangle on a black background", seed=5, request_id="r3"),
]
#: How far a batched output may be from the same request alone: CPU kernels for a larger batch
#: sum in another order, so a few pixels move by 1/255 (measured: max 1, PSNR > 80 dB).
MAX_PIXEL_DIFF = 2
MIN_PSNR_DB = 60.0


def test_a_batched_output_is_what_the_request_gives_alone(shapes):
    alone = [shapes.generate(r) for r in REQUESTS]
    batched = shapes.generate_batch(REQUESTS)
    assert [r.request_id for r in batched] == ["r1", "r2", "r3"]
    for solo, together in zip(alone, batched, strict=True):
        assert together.frames.shape == solo.frames.shape
        assert together.seed == solo.seed and together.batch_size == 4 and solo.batch_size == len(solo.frames)
        diff = np.abs(together.frames.astype(int) - solo.frames.astype(int)).max()
        assert diff <= MAX_PIXEL_DIFF, (solo.request_id, diff)
        assert _psnr(together.frames, solo.frames) >= MIN_PSNR_DB
    # Per-output seeds: the two outputs of r1 differ (seed 3 and 4), as they do alone.
    assert not np.array_equal(batched[0].frames[0], batched[0].frames[1])


def test_a_batch_of_one_is_the_call_the_request_makes_alone(shapes):
    assert np.array_equal(shapes.generate_batch(REQUESTS[1:2])[0].frames, shapes.generate(REQUESTS[1]).frames)


def test_requests_that_can_not_share_a_call_are_refused_together(shapes):
    other = REQUESTS[1].replace(num_inference_steps=3)
    with pytest.raises(ValueError, match="can not share"):
        shapes.generate_batch([REQUESTS[0], other])
    assert shapes.batch_key(shapes.resolve(REQUESTS[0])) == shapes.batch_key(shapes.resolve(REQUESTS[2]))
    assert shapes.batch_key(shapes.resolve(other)) != shapes.batch_key(shapes.resolve(REQUESTS[0]))


@pytest.mark.parametrize("model", ["demo:allegro-tiny", "demo:hunyuan-video15-tiny", "demo:wan-i2v-tiny"])
def test_a_pipeline_that_can_not_take_a_batch_of_prompts_runs_requests_alone(model):
    """diffusers 0.42's Allegro and HunyuanVideo 1.5 pipelines break on a list of prompts (a shape
    error in their first step), and an image-to-video model takes one input image per call: the
    probe finds it at start-up, so no request pays for a failed batch."""
    from ray_dit.engine import Engine, EngineOptions

    engine = Engine(EngineOptions(model=model, device="cpu"), cache_settings=CacheDitSettings())
    assert engine.batchable() is False
    assert engine.batch_key(engine.resolved_defaults()) is None


def test_cache_decisions_of_a_batch_are_the_calls_and_every_request_reports_them():
    from ray_dit.engine import Engine, EngineOptions

    caching = CacheDitSettings(enabled=True, primary=DBCacheKnobs(rdt=0.9, warmup=2))
    engine = Engine(EngineOptions(model="demo:shapes", device="cpu"), cache_settings=caching)
    assert engine.batchable()
    batched = engine.generate_batch(REQUESTS)
    stats = [r.cache for r in batched]
    assert stats[0].enabled and stats[0].cached_steps > 0, stats[0]
    assert all(s == stats[0] for s in stats) and stats[0] is not stats[1]  # equal, not shared


# -- the DiT replica: one request's fate inside a batch ----------------------------------------


def _replica(engine: StandInEngine, monkeypatch, max_batch_size: int = 8):
    return stand_in_replica(engine, monkeypatch, max_batch_size)


def _req(prompt: str, group: str = "A") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, negative_prompt=group, request_id=f"img_{prompt}")


async def _submit_behind_a_busy_replica(replica, requests: list[GenerationRequest]) -> list[asyncio.Task]:
    """The first request occupies the replica; the rest queue behind it and are batched."""
    first = asyncio.ensure_future(replica.generate(_req("first", "Z")))
    await asyncio.sleep(0.02)
    tasks = [asyncio.ensure_future(replica.generate(r)) for r in requests]
    await asyncio.sleep(0.02)
    return [first, *tasks]


def test_the_replica_groups_what_queued_while_it_was_busy(monkeypatch):
    engine = StandInEngine()
    replica, _ = _replica(engine, monkeypatch)

    async def scenario() -> list[GenerationResult]:
        tasks = await _submit_behind_a_busy_replica(
            replica, [_req("a1"), _req("b1", "B"), _req("a2"), _req("a3"), _req("b2", "B")]
        )
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert engine.calls == [["first"], ["a1", "a2", "a3"], ["b1", "b2"]]
    assert [r.batch_size for r in results] == [1, 3, 2, 3, 3, 2]


def test_a_disconnect_inside_a_batch_does_not_cancel_its_neighbours(monkeypatch):
    engine = StandInEngine(steps=10, step_s=0.03)
    replica, stored = _replica(engine, monkeypatch)

    async def scenario() -> tuple[object, object]:
        first, leaves, stays = await _submit_behind_a_busy_replica(replica, [_req("leaves"), _req("stays")])
        await first
        await asyncio.sleep(0.1)  # the batch is a few steps in
        leaves.cancel()
        outcome = await asyncio.gather(leaves, stays, return_exceptions=True)
        return outcome[0], outcome[1]

    left, stayed = asyncio.run(scenario())
    assert isinstance(left, asyncio.CancelledError)
    assert isinstance(stayed, GenerationResult) and stayed.steps == 10  # the batch ran to its end
    assert engine.calls[1] == ["leaves", "stays"]
    assert stored == []  # the one that left did so mid-denoise: its output is dropped, not stored


def test_a_bad_request_inside_a_batch_fails_alone(monkeypatch):
    engine = StandInEngine()
    replica, _ = _replica(engine, monkeypatch)

    async def scenario() -> list[object]:
        tasks = await _submit_behind_a_busy_replica(replica, [_req("good1"), _req(POISON), _req("good2")])
        return await asyncio.gather(*tasks, return_exceptions=True)

    _, good1, poison, good2 = asyncio.run(scenario())
    assert isinstance(good1, GenerationResult) and isinstance(good2, GenerationResult)
    assert isinstance(poison, ValueError)
    # The shared call failed, then each request ran alone: only the bad one failed.
    assert engine.calls[1:] == [["good1", "poison", "good2"], ["good1"], ["poison"], ["good2"]]
