"""A DiT replica around a stand-in engine, for the tests of its request handling (cancellation,
batching, errors): the replica's own code runs, the engine only sleeps through its steps.

The stand-in is fault injection no real pipeline gives on demand: exact step timing, a prompt
that makes its whole call fail, and a record of which requests shared each call.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from ray_dit.api import GenerationRequest, GenerationResult

#: A call holding a request with this prompt fails, as a pipeline error caused by one request.
POISON = "poison"


class StandInEngine:
    """Steps that honour ``should_cancel``, then a 'decode' that does not (like a real pipeline).
    Requests share a call when their ``negative_prompt`` (the tests' group label) is equal."""

    def __init__(self, steps: int = 5, step_s: float = 0.03, decode_s: float = 0.0) -> None:
        self.steps, self.step_s, self.decode_s = steps, step_s, decode_s
        self.calls: list[list[str]] = []

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        return request.replace(num_inference_steps=self.steps)

    def batch_key(self, request: GenerationRequest) -> object:
        return request.negative_prompt

    def generate_batch(self, requests, on_step=None, should_cancel=None) -> list[GenerationResult]:
        from ray_dit.errors import RequestCancelled

        self.calls.append([r.prompt for r in requests])
        if any(r.prompt == POISON for r in requests):
            raise ValueError("the pipeline failed on one of the prompts")
        for step in range(self.steps):
            time.sleep(self.step_s)
            if on_step:
                on_step(step + 1, self.steps)
            if should_cancel and should_cancel():
                raise RequestCancelled(f"after step {step + 1}")
        time.sleep(self.decode_s)
        frames = np.zeros((1, 1, 8, 8, 3), np.uint8)
        outputs = sum(r.n for r in requests)
        return [
            GenerationResult(frames=frames, kind="image", seed=r.seed, steps=self.steps, batch_size=outputs)
            for r in requests
        ]


def stand_in_replica(engine: Any, monkeypatch: Any, max_batch_size: int = 1) -> tuple[Any, list[tuple]]:
    """A ``DiTDeployment`` holding ``engine``, with quiet metrics and a sink that records what it
    is asked to store (``(result, output_format)`` pairs)."""
    from ray_dit.serve import dit as dit_module
    from ray_dit.serve.batching import BatchQueue

    quiet = SimpleNamespace(inc=lambda *a, **k: None, observe=lambda *a, **k: None)
    for name in ("cancelled_requests", "denoise_seconds", "steps_cached_ratio", "batch_size"):
        monkeypatch.setattr(dit_module.metrics, name, lambda q=quiet: q)
    cls = dit_module.DiTDeployment.func_or_class
    replica = cls.__new__(cls)
    stored: list[tuple] = []

    async def store(result: object, fmt: object) -> str:
        stored.append((result, fmt))
        return "stored"

    replica._attach(
        engine, None, SimpleNamespace(store=SimpleNamespace(remote=store)), BatchQueue(max_batch_size)
    )
    return replica, stored
