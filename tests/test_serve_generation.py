"""Generation semantics without Ray: a cancelled caller stops the denoise but never a finished output."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from replica_helpers import StandInEngine, stand_in_replica

from ray_dit.api import GenerationRequest
from ray_dit.serve.generation import Generation


class FakeObjectRef:
    """What ``_to_object_ref`` gives once the DiT accepted: the frames, when they exist."""

    def __init__(self, task: asyncio.Future) -> None:
        self.task = task


class FakeDiTResponse:
    def __init__(self, denoise_s: float) -> None:
        self.cancelled = False
        self.task = asyncio.ensure_future(asyncio.sleep(denoise_s, result="frames"))

    async def _to_object_ref(self) -> FakeObjectRef:
        return FakeObjectRef(self.task)

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


class FakeSink:
    def __init__(self, store_s: float) -> None:
        self.store_s = store_s
        self.stored: list[str] = []

    async def _store(self, ref: FakeObjectRef, *args: object) -> str:
        frames = await ref.task  # like Ray resolving the argument: fails if the denoise was cancelled
        await asyncio.sleep(self.store_s)
        self.stored.append(frames)
        return "stored"


def _flow(denoise_s: float, store_s: float) -> tuple[Generation, FakeSink, list[FakeDiTResponse]]:
    sink = FakeSink(store_s)
    made: list[FakeDiTResponse] = []

    def remote(*args: object) -> FakeDiTResponse:
        made.append(FakeDiTResponse(denoise_s))
        return made[-1]

    dit = SimpleNamespace(generate=SimpleNamespace(remote=remote))
    sink_handle = SimpleNamespace(store=SimpleNamespace(remote=lambda *a: sink._store(*a)))
    flow = Generation(dit, sink_handle, GenerationRequest(prompt="x"), output_format="png")
    return flow, sink, made


def _cancel_caller_after(flow: Generation, delay: float) -> None:
    async def scenario() -> None:
        flow.start()
        caller = asyncio.ensure_future(flow.wait())
        await asyncio.sleep(delay)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await asyncio.gather(flow.task, return_exceptions=True)

    asyncio.run(scenario())


def test_caller_gone_during_denoise_cancels_the_denoise():
    flow, sink, made = _flow(denoise_s=5.0, store_s=0.0)
    _cancel_caller_after(flow, 0.05)
    assert made[0].cancelled
    assert sink.stored == []


def test_caller_gone_after_denoise_still_stores_the_output():
    flow, sink, made = _flow(denoise_s=0.01, store_s=0.2)
    _cancel_caller_after(flow, 0.1)  # the denoise finished; the sink is still storing
    assert made[0].cancelled  # asked, but too late to matter: the frames were ready
    assert sink.stored == ["frames"]
    assert flow.task is not None and flow.task.result() == "stored"


# -- the DiT replica's side ------------------------------------------------------------------


def _dit(engine: StandInEngine, monkeypatch):
    return stand_in_replica(engine, monkeypatch)


def _cancel_generate_after(replica, delay: float) -> None:
    async def scenario() -> None:
        request = GenerationRequest(prompt="x", output_format="png", request_id="img_0123456789abcdef")
        task = asyncio.ensure_future(replica.generate(request))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("a cancelled generate must report the cancellation")

    asyncio.run(scenario())


def test_dit_cancelled_mid_denoise_stores_nothing(monkeypatch):
    replica, stored = _dit(StandInEngine(steps=50, step_s=0.02, decode_s=0.0), monkeypatch)
    _cancel_generate_after(replica, 0.1)
    assert stored == []


def test_dit_cancelled_after_denoise_hands_frames_to_the_sink(monkeypatch):
    replica, stored = _dit(StandInEngine(steps=2, step_s=0.01, decode_s=0.4), monkeypatch)
    _cancel_generate_after(replica, 0.15)  # during the decode: every step is done
    assert len(stored) == 1 and stored[0][1] == "png"


def test_an_error_inside_the_pipeline_is_not_blamed_on_the_client(monkeypatch):
    """diffusers raising ValueError mid-denoise is a server fault (500 with a traceback), not a
    400: only the engine's own checks (``Engine.resolve``) say the request was wrong."""
    from ray_dit.serve.errors import to_api_error

    engine = StandInEngine(steps=1, step_s=0.0, decode_s=0.0)

    def broken(requests, on_step=None, should_cancel=None):
        raise ValueError("Expected all tensors to be on the same device")

    engine.generate_batch = broken
    replica, _ = _dit(engine, monkeypatch)
    request = GenerationRequest(prompt="x", request_id="img_0123456789abcdef")
    try:
        asyncio.run(replica.generate(request))
    except ValueError as exc:
        err = to_api_error(exc, request.request_id, lambda queued: 2.0)
    assert (err.status, err.code) == (500, "server_error")
