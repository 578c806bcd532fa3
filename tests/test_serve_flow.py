"""Flow semantics without Ray: a cancelled caller stops the denoise but never a finished output."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ray_dit.api import GenerationRequest
from ray_dit.serve.flow import Flow


class FakeDiTResponse:
    def __init__(self, denoise_s: float) -> None:
        self.cancelled = False
        self.task = asyncio.ensure_future(asyncio.sleep(denoise_s, result="frames-ref"))

    async def _to_object_ref(self) -> str:
        return "assigned-ref"

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


class FakeSink:
    def __init__(self, store_s: float) -> None:
        self.store_s = store_s
        self.stored: list[str] = []

    async def _store(self, response: FakeDiTResponse, *args: object) -> str:
        frames = await response.task  # raises CancelledError if the denoise was cancelled
        await asyncio.sleep(self.store_s)
        self.stored.append(frames)
        return "stored"


def _flow(denoise_s: float, store_s: float) -> tuple[Flow, FakeSink, list[FakeDiTResponse]]:
    sink = FakeSink(store_s)
    made: list[FakeDiTResponse] = []

    def remote(*args: object) -> FakeDiTResponse:
        made.append(FakeDiTResponse(denoise_s))
        return made[-1]

    dit = SimpleNamespace(generate=SimpleNamespace(remote=remote))
    sink_handle = SimpleNamespace(store=SimpleNamespace(remote=lambda *a: sink._store(*a)))
    flow = Flow(dit, sink_handle, GenerationRequest(prompt="x"), output_format="png")
    return flow, sink, made


def _cancel_caller_after(flow: Flow, delay: float) -> None:
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
    assert sink.stored == ["frames-ref"]
    assert flow.task is not None and flow.task.result() == "stored"
