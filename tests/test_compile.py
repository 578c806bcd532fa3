"""``compile: true`` (regional torch.compile, engine/compile.py) on the real demo:shapes pipeline.

Tolerance, measured on this CPU (torch 2.13, inductor): compiled and eager outputs were
bit-identical in 16 of 18 pairs (32x32 and 64x64, 8 and 28 steps, cache on and off); the other two
differed by one uint8 level in a single channel of one pixel (PSNR 83 and 89 dB). The bound
asserted is a max absolute difference of 2 levels and a PSNR of at least 45 dB (one level off in
every pixel would be 48 dB). Cache-dit's decisions (which steps are cached) are identical.

Cost on 2 cores: inductor compiles the two block classes of demo:shapes in about 15 s with an empty
inductor cache (its first start-up check about 10 s more), about 3 s with a warm one
(/tmp/torchinductor_$USER). The other tests use a counting backend: dynamo's tracing, no inductor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ray_dit.api import GenerationRequest, GenerationResult
from ray_dit.config import CacheDitSettings, ConfigError, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.cache import metered_blocks
from ray_dit.engine.compile import compile_failure, compile_transformer, repeated_blocks

pytestmark = pytest.mark.timeout(300)

PROMPT = "a red circle on a blue background"
# SGLang's threshold (0.24) with a 2-step warmup: caches steps 2, 4 and 6 of 8 on demo:shapes.
CACHE_ON = parse_overrides(True, {"max_warmup_steps": 2})
MAX_LEVELS = 2
MIN_PSNR_DB = 45.0


def request(size: int = 32, cache: bool = False, seed: int = 0) -> GenerationRequest:
    r = GenerationRequest(prompt=PROMPT, seed=seed, width=size, height=size, num_inference_steps=8)
    return r.replace(cache=CACHE_ON) if cache else r


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def shapes_engine(compile: bool = False) -> Engine:
    return Engine(EngineOptions(model="demo:shapes", device="cpu", compile=compile), CacheDitSettings())


@pytest.fixture(scope="module")
def eager() -> Engine:
    return shapes_engine()


@pytest.fixture(scope="module")
def compiled() -> Engine:
    return shapes_engine(compile=True)


def assert_same_output(compiled: GenerationResult, eager: GenerationResult) -> None:
    diff = np.abs(compiled.frames.astype(int) - eager.frames.astype(int))
    assert diff.max() <= MAX_LEVELS, f"max |diff| {diff.max()} levels"
    assert psnr(compiled.frames, eager.frames) >= MIN_PSNR_DB


def test_compiled_output_and_cache_decisions_match_eager(eager: Engine, compiled: Engine) -> None:
    # Cache off first: cache-dit is mounted after the blocks were compiled, as in a server.
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert_same_output(compiled.generate(request()), eager.generate(request()))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # inductor compiled

    a, b = compiled.generate(request(cache=True)), eager.generate(request(cache=True))
    assert b.cache.cached_steps > 0, "the threshold must cache for this test to mean anything"
    assert a.cache.cached_step_indices == b.cache.cached_step_indices
    assert a.cache.cfg_cached_step_indices == b.cache.cfg_cached_step_indices
    assert a.cache.skipped_block_fraction == b.cache.skipped_block_fraction
    assert a.cache.residual_diffs.keys() == b.cache.residual_diffs.keys()
    np.testing.assert_allclose(
        list(a.cache.residual_diffs.values()), list(b.cache.residual_diffs.values()), rtol=1e-4
    )
    assert_same_output(a, b)
    # The blocks cache-dit calls (counted by the engine's meter) are the compiled modules.
    blocks = metered_blocks(compiled.pipe, compiled.pipe.transformer)
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts compilations and calls."""

    def __init__(self) -> None:
        self.compiled = 0
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.compiled += 1

        def run(*args: Any) -> Any:
            self.calls += 1
            return graph.forward(*args)

        return run


def count_block_calls(blocks: list[torch.nn.Module]) -> list[int]:
    counts = [0]

    @torch.compiler.disable
    def count(*_: Any) -> None:
        counts[0] += 1

    for block in blocks:
        block.register_forward_pre_hook(count)
    return counts


def test_every_block_cache_dit_runs_is_a_compiled_graph_and_new_sizes_recompile_once() -> None:
    engine = shapes_engine()
    backend = CountingBackend()
    report = compile_transformer(engine.pipe, backend=backend, fullgraph=True, check=False)
    assert [(r.how, r.classes, r.count) for r in report] == [
        ("_repeated_blocks", ["FluxSingleTransformerBlock", "FluxTransformerBlock"], 6)
    ]
    blocks = repeated_blocks(engine.pipe, engine.pipe.transformer)[1]
    block_calls = count_block_calls(blocks)

    stats = engine.generate(request(cache=True)).cache
    assert stats.cached_steps > 0 and 0 < stats.skipped_block_fraction < 1
    # fullgraph: one graph per block call, through cache-dit's wrappers, cached steps included.
    assert backend.calls == block_calls[0] > 0
    engine.generate(request(48))  # a new size: each block graph is recompiled, dynamic in it
    after_new_size = backend.compiled
    engine.generate(request(64, cache=True))  # and another: no compilation at all
    engine.generate(request(32))
    assert backend.compiled == after_new_size
    assert backend.calls == block_calls[0]


def test_a_transformer_without_blocks_to_compile_is_refused_naming_compile() -> None:
    class NoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    class Pipe:
        transformer = NoBlocks()

    with pytest.raises(ConfigError) as raised:
        compile_transformer(Pipe())
    assert "compile=true" in str(raised.value) and "NoBlocks" in str(raised.value)
    assert raised.value.source == "builder args"


_NO_COMPILER = """
from ray_dit.config import CacheDitSettings, ConfigError
from ray_dit.engine import Engine, EngineOptions
try:
    Engine(EngineOptions(model="demo:shapes", device="cpu", compile=True), CacheDitSettings())
except ConfigError as exc:
    print("CONFIG-ERROR", exc)
"""


def test_no_cxx_compiler_is_a_config_error_at_start_up(tmp_path: Path) -> None:
    # The fault: inductor finds its C++ compiler through CXX; an empty inductor cache, so nothing
    # compiled earlier can stand in for it. A process of its own: inductor remembers its compiler.
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CONFIG-ERROR" in done.stdout, done.stdout[-2000:]
    assert "compile=true: torch.compile (inductor) cannot build kernels for cpu" in done.stdout
    assert "C++ compiler" in done.stdout and "set compile=false" in done.stdout


def test_compile_failures_become_config_errors_other_errors_do_not() -> None:
    def breaks(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: a graph break, an error with fullgraph
            return x + 1
        return x - 1

    with pytest.raises(Exception) as raised:
        torch.compile(breaks, backend="eager", fullgraph=True)(torch.ones(2))
    error = compile_failure(raised.value)
    assert isinstance(error, ConfigError) and "compile=true" in str(error)
    assert compile_failure(ValueError("not torch's")) is None
